// Package natsdev runs an embedded nats-server with JetStream for tests and
// the dev stack, with one NATS user per aigov role holding exactly the
// permissions the topology grants it. The server requires TLS, with a
// certificate from a dev CA made in its store directory; with
// Options.ClientCerts it also requires each client's certificate and takes
// the user from it (mutual TLS as the service identity).
package natsdev

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devcerts"
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
	// of a single component that are not about permissions. TLS stays on.
	Open bool
	// ClientCerts requires every client to present a certificate signed by
	// the dev CA and maps it to its user (nats-server's verify_and_map):
	// each role gets a client certificate instead of a password, so a
	// stolen password is worth nothing. Ignored when Open.
	ClientCerts bool
	// NoProvision leaves the bus empty. By default Start provisions the
	// topology (streams, buckets, durable consumers) as the provisioner,
	// as aigov bus provision does before any service starts.
	NoProvision bool
}

// Server is a running embedded nats-server.
type Server struct {
	srv       *server.Server
	topo      schemas.Topology
	certs     *devcerts.Bundle
	passwords map[string]string
	// clientCerts holds each role's certificate and key files when the
	// server maps users from client certificates.
	clientCerts map[string][2]string
}

// TLSDir is where, inside Options.Dir, the dev CA and the certificates
// live.
const TLSDir = "tls"

// tlsTimeout is generous: a handshake on a loaded two-core CI machine can
// take longer than the server's 2 s default.
const tlsTimeout = 10.0

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
		MaxPayload: int32(schemas.MaxPayloadBytes),
	}
	s := &Server{passwords: map[string]string{}, clientCerts: map[string][2]string{}}
	var err error
	if s.certs, err = devcerts.Ensure(filepath.Join(opts.Dir, TLSDir)); err != nil {
		return nil, fmt.Errorf("natsdev: %w", err)
	}
	if sopts.TLSConfig, err = s.certs.ServerTLS(); err != nil {
		return nil, fmt.Errorf("natsdev: %w", err)
	}
	sopts.TLS, sopts.TLSTimeout = true, tlsTimeout
	mapCerts := opts.ClientCerts && !opts.Open
	if mapCerts {
		sopts.TLSConfig.ClientAuth = tls.RequireAndVerifyClientCert
		sopts.TLSConfig.ClientCAs = s.certs.Pool()
		sopts.TLSVerify, sopts.TLSMap = true, true
	}
	if !opts.Open {
		for _, role := range append(schemas.Roles(), AdminUser) {
			u := &server.User{Username: role}
			if mapCerts {
				cert, key, err := s.certs.ClientCert(role)
				if err != nil {
					return nil, fmt.Errorf("natsdev: %w", err)
				}
				s.clientCerts[role] = [2]string{cert, key}
			} else {
				s.passwords[role] = randomPassword()
				u.Password = s.passwords[role]
			}
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
	s.topo = topo
	if !opts.NoProvision {
		if err := s.Provision(); err != nil {
			srv.Shutdown()
			return nil, err
		}
	}
	return s, nil
}

// Provision ensures the topology as the provisioner role (admin on an
// open server), the way aigov bus provision does.
func (s *Server) Provision() error {
	role := schemas.RoleProvisioner
	if len(s.passwords) == 0 && len(s.clientCerts) == 0 {
		role = AdminUser
	}
	nc, err := s.Connect(role)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("natsdev: jetstream: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.topo.Provision(ctx, js); err != nil {
		return fmt.Errorf("natsdev: provision: %w", err)
	}
	return nil
}

func randomPassword() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// URL is the client URL. Its tls:// scheme tells every client, nats.go and
// the nats CLI alike, that the server speaks only TLS.
func (s *Server) URL() string {
	u := s.srv.ClientURL()
	if rest, ok := strings.CutPrefix(u, "nats://"); ok {
		u = "tls://" + rest
	}
	return u
}

// CAFile is the PEM file of the dev CA that signed the server's
// certificate: what AIGOV_NATS_TLS_CA and the nats CLI's --tlsca name.
func (s *Server) CAFile() string { return s.certs.CA }

// TLSCertsDir is the directory of the dev CA and every certificate.
func (s *Server) TLSCertsDir() string { return s.certs.Dir }

// Password returns the password of a role's user ("" on an open server or
// one that maps users from client certificates).
func (s *Server) Password(role string) string { return s.passwords[role] }

// ClientCert returns the certificate and key files of role's client
// certificate when the server maps users from certificates (Options.ClientCerts),
// otherwise empty strings.
func (s *Server) ClientCert(role string) (certFile, keyFile string) {
	c := s.clientCerts[role]
	return c[0], c[1]
}

// TLSOptions are the client options to reach this server as role: trust
// the dev CA and, when the server maps users from certificates, present
// the role's client certificate. Tests that dial with nats.Connect
// themselves add them.
func (s *Server) TLSOptions(role string) []nats.Option {
	opts := []nats.Option{nats.RootCAs(s.certs.CA)}
	if c, ok := s.clientCerts[role]; ok {
		opts = append(opts, nats.ClientCert(c[0], c[1]))
	}
	return opts
}

// Connect opens a connection as role (AdminUser for setup), with the role's
// own inbox prefix as the permissions require.
func (s *Server) Connect(role string, extra ...nats.Option) (*nats.Conn, error) {
	opts := append([]nats.Option{nats.Name("natsdev-" + role), nats.CustomInboxPrefix(schemas.InboxPrefix(role))}, s.TLSOptions(role)...)
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
