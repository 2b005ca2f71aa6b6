package natsconn_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/natsconn"
)

func TestRedactURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"nats://u:secret@h:4222", "nats://u:xxxxx@h:4222"},
		{"tls://a:4222, nats://u:secret@b:4222", "tls://a:4222,nats://u:xxxxx@b:4222"},
		{"nats://tokenonly-secret@h:4222", "nats://tokenonly-secret@h:4222"},
	} {
		if got := natsconn.RedactURL(tc.in); got != tc.want {
			t.Errorf("RedactURL(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

// A failed connect names the server but never the password, whether the
// password came in the URL or as its own setting.
func TestDialErrorHoldsNoPassword(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	for _, tc := range []struct {
		name string
		cfg  natsconn.Config
	}{
		{"url with password, no server", natsconn.Config{URL: "nats://u:secret@127.0.0.1:1", User: "u"}},
		{"wrong password in url", natsconn.Config{URL: strings.Replace(srv.URL(), "tls://", "tls://audit:secret@", 1), User: "audit", TLSCA: srv.CAFile()}},
		{"wrong password setting", natsconn.Config{URL: srv.URL(), User: "audit", Password: "secret", TLSCA: srv.CAFile()}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := natsconn.Dial(tc.cfg, nats.Timeout(5*time.Second), nats.NoReconnect())
			if err == nil {
				t.Fatal("connect succeeded")
			}
			if strings.Contains(err.Error(), "secret") {
				t.Fatalf("error shows the password: %v", err)
			}
			if !strings.Contains(err.Error(), "connect to ") {
				t.Fatalf("error does not say what failed: %v", err)
			}
		})
	}
}

// With the CA a service verifies the server and connects as its role; the
// inbox prefix is the role's own, so request/reply works under the bus
// permissions. Without the CA the same settings are refused.
func TestDialVerifiesServer(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	role := schemas.RolePlatform
	cfg := natsconn.Config{URL: srv.URL(), User: role, Password: srv.Password(role), TLSCA: srv.CAFile()}
	nc, err := natsconn.Dial(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if st, err := nc.TLSConnectionState(); err != nil || !st.HandshakeComplete {
		t.Fatalf("not TLS: %v", err)
	}
	if !strings.HasPrefix(nc.NewRespInbox(), schemas.InboxPrefix(role)+".") {
		t.Fatalf("inbox %s is not the role's own", nc.NewRespInbox())
	}
	cfg.TLSCA = ""
	if _, err := natsconn.Dial(cfg, nats.Timeout(5*time.Second)); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA: want a certificate error, got %v", err)
	}
}

// Mutual TLS: the client certificate and key settings are the identity.
func TestDialClientCertificate(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{ClientCerts: true})
	cert, key := srv.ClientCert(schemas.RoleAudit)
	nc, err := natsconn.Dial(natsconn.Config{URL: srv.URL(), User: schemas.RoleAudit, TLSCA: srv.CAFile(), TLSCert: cert, TLSKey: key})
	if err != nil {
		t.Fatal(err)
	}
	nc.Close()
	_, err = natsconn.Dial(natsconn.Config{URL: srv.URL(), User: schemas.RoleAudit, TLSCA: srv.CAFile()}, nats.Timeout(5*time.Second))
	if err == nil {
		t.Fatal("connect without the client certificate succeeded")
	}
}

func TestValidate(t *testing.T) {
	t.Parallel()
	err := natsconn.Config{TLSCert: "c.pem", Creds: "a.creds", NKeySeed: "s.nk"}.Validate()
	for _, want := range []string{"URL", "certificate and its key", "not both"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("want an error saying %q, got %v", want, err)
		}
	}
	if err := (natsconn.Config{URL: "tls://h:4222"}).Validate(); err != nil {
		t.Fatal(err)
	}
}

// An nkey seed file is the identity: the server (an nkey user, signed
// nonce) lets in the holder of the seed and nobody with another one.
func TestDialNKeySeed(t *testing.T) {
	t.Parallel()
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := user.PublicKey()
	seed, _ := user.Seed()
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoLog: true, NoSigs: true,
		Nkeys: []*server.NkeyUser{{Nkey: pub}}})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	dir := t.TempDir()
	file := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(file, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	nc, err := natsconn.Dial(natsconn.Config{URL: srv.ClientURL(), User: "platform", NKeySeed: file})
	if err != nil {
		t.Fatalf("connect with the seed: %v", err)
	}
	nc.Close()

	other, _ := nkeys.CreateUser()
	otherSeed, _ := other.Seed()
	if err := os.WriteFile(file, otherSeed, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = natsconn.Dial(natsconn.Config{URL: srv.ClientURL(), User: "platform", NKeySeed: file}, nats.Timeout(5*time.Second))
	if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("connect with another seed: want an authorization error, got %v", err)
	}
	if strings.Contains(err.Error(), string(otherSeed)) {
		t.Fatal("the error shows the seed")
	}
}

// A tenant's user connects in its own account with the tenant's inbox
// prefix: its JetStream publish of a request is acknowledged through the
// service import, which needs the ack to reach that inbox.
func TestDialAsTenant(t *testing.T) {
	t.Parallel()
	const tenant = "platform-a"
	srv := natsdev.StartT(t, natsdev.Options{Tenants: []string{tenant}})
	nc, err := natsconn.Dial(natsconn.Config{URL: srv.URL(), User: tenant, Tenant: tenant, Password: srv.Password(tenant), TLSCA: srv.CAFile()})
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if !strings.HasPrefix(nc.NewRespInbox(), schemas.TenantInboxPrefix(tenant)+".") {
		t.Fatalf("inbox %s is not the tenant's", nc.NewRespInbox())
	}
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := js.Publish(ctx, schemas.NewSubjects("").Request("model.deploy"), []byte(`{}`)); err != nil {
		t.Fatalf("tenant request: %v", err)
	}
	if err := (natsconn.Config{URL: srv.URL(), Tenant: "Not A Tenant"}).Validate(); err == nil {
		t.Fatal("an invalid tenant name validated")
	}
}

// A refused login names the user and what it authenticated with, never
// the secret, and keeps errors.Is working.
func TestAuthorizationErrorNamesUserAndSource(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	for _, tc := range []struct {
		password, want string
	}{
		{"wrong-secret-pw", "a password that the server refused"},
		{"", "no password"},
	} {
		_, err := natsconn.Dial(natsconn.Config{URL: srv.URL(), User: schemas.RolePlatform, Password: tc.password, TLSCA: srv.CAFile()}, nats.Timeout(5*time.Second))
		if !errors.Is(err, nats.ErrAuthorization) {
			t.Fatalf("password %q: want an authorization error, got %v", tc.password, err)
		}
		msg := err.Error()
		if !strings.Contains(msg, `as user "platform"`) || !strings.Contains(msg, tc.want) || !strings.Contains(msg, ".run/env/platform.env") {
			t.Errorf("error %q does not name the user, %q and the env file", msg, tc.want)
		}
		if tc.password != "" && strings.Contains(msg, tc.password) {
			t.Errorf("error shows the password: %q", msg)
		}
	}
}
