package natsdev_test

import (
	"bufio"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devcerts"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// The server speaks only TLS: a client with the right password but no TLS,
// or one that does not trust the dev CA, never gets a connection; one that
// trusts the CA does, and its connection is encrypted.
func TestServerRequiresTLS(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	role := schemas.RoleAudit
	creds := nats.UserInfo(role, srv.Password(role))
	plain := strings.Replace(srv.URL(), "tls://", "nats://", 1)

	// A client that speaks plain text anyway (nats.go would upgrade by
	// itself, so this one is written by hand) gets no session.
	conn, err := net.DialTimeout("tcp", strings.TrimPrefix(plain, "nats://"), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(15 * time.Second))
	r := bufio.NewReader(conn)
	info, err := r.ReadString('\n')
	if err != nil || !strings.Contains(info, `"tls_required":true`) {
		t.Fatalf("server INFO %q (%v) does not require TLS", info, err)
	}
	fmt.Fprintf(conn, "CONNECT {\"user\":%q,\"pass\":%q,\"verbose\":false}\r\nPING\r\n", role, srv.Password(role))
	for {
		line, err := r.ReadString('\n')
		if strings.HasPrefix(line, "PONG") {
			t.Fatal("a plain-text client got a session")
		}
		if err != nil {
			break // the server hung up: refused
		}
	}
	// An attacker's own CA (or the system roots) does not vouch for the
	// server; the client refuses before sending the password.
	other, err := devcerts.Ensure(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	_, err = nats.Connect(srv.URL(), creds, nats.RootCAs(other.CA), nats.Timeout(5*time.Second))
	var unknown x509.UnknownAuthorityError
	if !errors.As(err, &unknown) {
		t.Fatalf("connect trusting another CA: want an unknown-authority error, got %v", err)
	}

	nc, _ := srv.ConnectT(t, role)
	st, err := nc.TLSConnectionState()
	if err != nil || !st.HandshakeComplete {
		t.Fatalf("connection is not TLS: %v", err)
	}
	if _, err := devcerts.Ensure(srv.TLSCertsDir()); err != nil {
		t.Fatalf("the CA files must be reusable: %v", err)
	}
}

// With ClientCerts the certificate is the identity: no certificate, a
// certificate from another CA, or a role's correct password alone are all
// refused; a role's certificate connects as that role with exactly its
// permissions.
func TestClientCertIdentity(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{ClientCerts: true})
	role := schemas.RolePlatform
	if srv.Password(role) != "" {
		t.Fatal("a server mapping users from certificates must not hand out passwords")
	}
	ca := nats.RootCAs(srv.CAFile())
	fast := nats.Timeout(5 * time.Second)

	if _, err := nats.Connect(srv.URL(), ca, fast, nats.UserInfo(role, "anything")); err == nil {
		t.Fatal("connect with no client certificate succeeded")
	}
	other, err := devcerts.Ensure(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	forgedCert, forgedKey, err := other.ClientCert(natsdev.AdminUser)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := nats.Connect(srv.URL(), ca, fast, nats.ClientCert(forgedCert, forgedKey)); err == nil {
		t.Fatal("connect with an admin certificate from another CA succeeded")
	}

	violations := make(chan error, 4)
	nc, err := srv.Connect(role, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violations <- err }))
	if err != nil {
		t.Fatalf("connect with the role's certificate: %v", err)
	}
	defer nc.Close()
	topo := topology.New("")
	if err := nc.Publish(topo.Subjects.Decision("model.deploy"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	_ = nc.Flush()
	select {
	case v := <-violations:
		if !strings.Contains(strings.ToLower(v.Error()), "permissions violation") {
			t.Fatalf("want a permissions violation for the platform's certificate, got %v", v)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the platform's certificate was allowed to publish a decision: it did not map to the platform user")
	}
}
