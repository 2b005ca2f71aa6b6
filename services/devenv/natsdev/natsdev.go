// Package natsdev runs an embedded nats-server with JetStream for tests and
// the dev stack, with one NATS user per aigov role holding exactly the
// permissions the topology grants it. The server requires TLS, with a
// certificate from a dev CA made in its store directory; with
// Options.ClientCerts it also requires each client's certificate and takes
// the user from it (mutual TLS as the service identity). With
// Options.Tenants it runs the topology's NATS accounts: the roles in the
// aigov account, each tenant (an ML platform) in one of its own.
package natsdev

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devcerts"
	"github.com/aigov/aigov/services/servicekit/topology"
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
	Topology *topology.Topology
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
	// Tenants run the server with accounts (topology.Topology.Accounts):
	// every role in the aigov account, each tenant in an account of its
	// own with one user of its name (Connect(tenant)). It overrides the
	// topology's Tenants. Ignored when Open.
	Tenants []string
	// UnrestrictedTenants gives the tenants' users no permissions at all
	// within their accounts, for tests that show the account boundary
	// holds by itself.
	UnrestrictedTenants bool
	// SyncAlways fsyncs every JetStream write (sync_interval: always)
	// instead of every two minutes, for durability figures.
	SyncAlways bool
}

// Server is a running embedded nats-server.
type Server struct {
	srv       *server.Server
	sopts     *server.Options
	jsAccount bool
	topo      topology.Topology
	certs     *devcerts.Bundle
	passwords map[string]string
	// inboxes is the inbox prefix each user's connection must use.
	inboxes map[string]string
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

// readyTimeout bounds the wait for a started server to accept clients:
// generous, since recovering a JetStream store on a loaded two-core machine
// takes seconds.
const readyTimeout = 30 * time.Second

// AdminUser may do anything; tests and the dev stack use it for setup and
// inspection, never services.
const AdminUser = "admin"

// Start runs the server and waits until it accepts clients.
func Start(opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("natsdev: Options.Dir is required for the JetStream store")
	}
	topo := topology.New("")
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
		SyncAlways: opts.SyncAlways,
	}
	s := &Server{passwords: map[string]string{}, inboxes: map[string]string{}, clientCerts: map[string][2]string{}}
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
	if opts.Tenants != nil {
		topo.Tenants = opts.Tenants
	}
	if !opts.Open {
		if err := s.addUsers(sopts, topo, mapCerts, opts.UnrestrictedTenants); err != nil {
			return nil, err
		}
	}
	srv, err := server.NewServer(sopts)
	if err != nil {
		return nil, fmt.Errorf("natsdev: new server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		return nil, fmt.Errorf("natsdev: server not ready within %s", readyTimeout)
	}
	s.srv = srv
	s.topo = topo
	// A restart listens on the same port.
	sopts.Port = srv.Addr().(*net.TCPAddr).Port
	s.sopts = sopts
	s.jsAccount = len(sopts.Accounts) > 0
	if len(sopts.Accounts) > 0 {
		// Only the aigov account has JetStream: a tenant's $JS.API stays
		// in its own account and finds nothing to answer it.
		if err := enableJetStream(srv, schemas.AccountAigov); err != nil {
			srv.Shutdown()
			return nil, err
		}
	}
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

// addUsers adds a user per role and the admin and, with tenants, the
// accounts of the topology: the roles and the admin in the aigov account,
// each tenant's user in its own. Without tenants every user is in the
// global account, as in a server without accounts.
func (s *Server) addUsers(sopts *server.Options, topo topology.Topology, mapCerts, unrestrictedTenants bool) error {
	accs, err := topo.Accounts()
	if err != nil {
		return fmt.Errorf("natsdev: %w", err)
	}
	// The admin may do anything in the aigov account.
	accs[0].Users = append(accs[0].Users, topology.NATSUser{Name: AdminUser, Inbox: schemas.InboxPrefix(AdminUser)})
	byName := map[string]*server.Account{}
	if len(topo.Tenants) > 0 {
		for _, a := range accs {
			byName[a.Name] = server.NewAccount(a.Name)
			sopts.Accounts = append(sopts.Accounts, byName[a.Name])
		}
		if err := link(accs, byName); err != nil {
			return err
		}
	}
	for _, a := range accs {
		for _, nu := range a.Users {
			u := &server.User{Username: nu.Name, Account: byName[a.Name]}
			if mapCerts {
				cert, key, err := s.certs.ClientCert(nu.Name)
				if err != nil {
					return fmt.Errorf("natsdev: %w", err)
				}
				s.clientCerts[nu.Name] = [2]string{cert, key}
			} else {
				s.passwords[nu.Name] = randomPassword()
				u.Password = s.passwords[nu.Name]
			}
			if nu.Name != AdminUser && (a.Name == schemas.AccountAigov || !unrestrictedTenants) {
				u.Permissions = &server.Permissions{
					Publish:   &server.SubjectPermission{Allow: nu.Permissions.Publish},
					Subscribe: &server.SubjectPermission{Allow: nu.Permissions.Subscribe},
				}
			}
			s.inboxes[nu.Name] = nu.Inbox
			sopts.Users = append(sopts.Users, u)
		}
	}
	return nil
}

// link adds the accounts' exports and imports, as nats-server does for the
// accounts of a config file.
func link(accs []topology.NATSAccount, byName map[string]*server.Account) error {
	for _, a := range accs {
		acc := byName[a.Name]
		for _, e := range a.Exports {
			var to []*server.Account
			for _, n := range e.Accounts {
				to = append(to, byName[n])
			}
			var err error
			if e.Service {
				err = acc.AddServiceExport(e.Subject, to)
			} else {
				err = acc.AddStreamExport(e.Subject, to)
			}
			if err != nil {
				return fmt.Errorf("natsdev: account %s exports %s: %w", a.Name, e.Subject, err)
			}
		}
	}
	for _, a := range accs {
		acc := byName[a.Name]
		for _, im := range a.Imports {
			from, ok := byName[im.Account]
			if !ok {
				return fmt.Errorf("natsdev: account %s imports from unknown account %s", a.Name, im.Account)
			}
			local := im.To
			if local == "" {
				local = im.Subject
			}
			var err error
			if im.Service {
				err = acc.AddServiceImport(from, local, im.Subject)
			} else {
				err = acc.AddStreamImport(from, im.Subject, "")
			}
			if err != nil {
				return fmt.Errorf("natsdev: account %s imports %s from %s: %w", a.Name, im.Subject, im.Account, err)
			}
		}
	}
	return nil
}

// enableJetStream turns JetStream on for one account of a server with
// accounts, without limits (a config file's "jetstream: enabled").
func enableJetStream(srv *server.Server, name string) error {
	acc, err := srv.LookupAccount(name)
	if err != nil {
		return fmt.Errorf("natsdev: account %s: %w", name, err)
	}
	unlimited := server.JetStreamAccountLimits{MaxMemory: -1, MaxStore: -1, MaxStreams: -1, MaxConsumers: -1, MaxAckPending: -1, MemoryMaxStreamBytes: -1, StoreMaxStreamBytes: -1}
	if err := acc.EnableJetStream(map[string]server.JetStreamAccountLimits{"": unlimited}, nil); err != nil {
		return fmt.Errorf("natsdev: jetstream for account %s: %w", name, err)
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

// Connect opens a connection as role (AdminUser for setup) or as a
// tenant's user, with the user's own inbox prefix as the permissions
// require.
func (s *Server) Connect(role string, extra ...nats.Option) (*nats.Conn, error) {
	return connectAs(s.URL(), role, s.InboxPrefix(role), s.passwords, append(s.TLSOptions(role), extra...))
}

// connectAs connects to url as role, with its inbox prefix and, when the
// server gave it one, its password; a server and a cluster connect alike.
func connectAs(url, role, inbox string, passwords map[string]string, extra []nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("natsdev-" + role), nats.CustomInboxPrefix(inbox)}
	if pw, ok := passwords[role]; ok {
		opts = append(opts, nats.UserInfo(role, pw))
	}
	nc, err := nats.Connect(url, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("natsdev: connect as %s: %w", role, err)
	}
	return nc, nil
}

// InboxPrefix is the inbox prefix of a user's connection: a role's own
// (schemas.InboxPrefix) or a tenant's (schemas.TenantInboxPrefix).
func (s *Server) InboxPrefix(user string) string {
	if p, ok := s.inboxes[user]; ok {
		return p
	}
	return schemas.InboxPrefix(user)
}

// Restart shuts the server down and starts it again on the same store,
// port and users (a broker restart, as clients see it).
func (s *Server) Restart() error {
	s.Shutdown()
	srv, err := server.NewServer(s.sopts.Clone())
	if err != nil {
		return fmt.Errorf("natsdev: restart: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(readyTimeout) {
		srv.Shutdown()
		return fmt.Errorf("natsdev: restarted server not ready within %s", readyTimeout)
	}
	s.srv = srv
	if s.jsAccount {
		if err := enableJetStream(srv, schemas.AccountAigov); err != nil {
			return err
		}
	}
	return nil
}

// Shutdown stops the server and waits for it.
func (s *Server) Shutdown() {
	s.srv.Shutdown()
	s.srv.WaitForShutdown()
}
