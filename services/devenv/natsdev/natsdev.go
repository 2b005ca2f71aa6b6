// Package natsdev runs an embedded nats-server with JetStream for tests and
// the dev stack, with one NATS user per aigov role holding exactly the
// permissions the topology grants it.
package natsdev

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
)

// Options configure the embedded server.
type Options struct {
	// Dir is the JetStream store; required.
	Dir string
	// Host and Port to listen on; Port 0 picks a free port.
	Host string
	Port int
	// Topology supplies the per-role permissions; zero value means the
	// default topology.
	Topology *schemas.Topology
	// Open disables authentication: anyone may do anything. Only for tests
	// of a single component that are not about permissions.
	Open bool
}

// Server is a running embedded nats-server.
type Server struct {
	srv       *server.Server
	passwords map[string]string
}

// AdminUser may do anything; tests and the dev stack use it for setup and
// inspection, never services.
const AdminUser = "admin"

// Start runs the server and waits until it accepts clients.
func Start(opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("natsdev: Options.Dir is required for the JetStream store")
	}
	topo := schemas.NewTopology("")
	if opts.Topology != nil {
		topo = *opts.Topology
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = server.RANDOM_PORT
	}
	sopts := &server.Options{
		ServerName: "aigov-dev",
		Host:       opts.Host,
		Port:       opts.Port,
		JetStream:  true,
		StoreDir:   opts.Dir,
		NoLog:      true,
		NoSigs:     true,
		MaxPayload: int32(2 * schemas.MaxMessageBytes),
	}
	s := &Server{passwords: map[string]string{}}
	if !opts.Open {
		for _, role := range append(schemas.Roles(), AdminUser) {
			s.passwords[role] = randomPassword()
			u := &server.User{Username: role, Password: s.passwords[role]}
			if role != AdminUser {
				p, err := topo.Permissions(role)
				if err != nil {
					return nil, fmt.Errorf("natsdev: %w", err)
				}
				u.Permissions = &server.Permissions{
					Publish:   &server.SubjectPermission{Allow: p.Publish},
					Subscribe: &server.SubjectPermission{Allow: p.Subscribe},
				}
			}
			sopts.Users = append(sopts.Users, u)
		}
	}
	srv, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("natsdev: new server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("natsdev: server not ready within 10s")
	}
	s.srv = srv
	return s, nil
}

func randomPassword() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// URL is the client URL.
func (s *Server) URL() string { return s.srv.ClientURL() }

// Password returns the password of a role's user ("" on an open server).
func (s *Server) Password(role string) string { return s.passwords[role] }

// Connect opens a connection as role (AdminUser for setup), with the role's
// own inbox prefix as the permissions require.
func (s *Server) Connect(role string, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("natsdev-" + role), nats.CustomInboxPrefix(schemas.InboxPrefix(role))}
	if pw, ok := s.passwords[role]; ok {
		opts = append(opts, nats.UserInfo(role, pw))
	}
	nc, err := nats.Connect(s.URL(), append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("natsdev: connect as %s: %w", role, err)
	}
	return nc, nil
}

// Shutdown stops the server and waits for it.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}
