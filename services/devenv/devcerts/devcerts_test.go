package devcerts_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"github.com/aigov/aigov/services/devenv/devcerts"
)

func leaf(t *testing.T, cert, key string) *x509.Certificate {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// The server certificate chains to the CA for exactly the hosts asked,
// for server use only; a client certificate carries its role as the DNS
// SAN nats-server maps to a user, for client use only; keys are private
// to the owner; a second Ensure keeps the CA.
func TestEnsure(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b, err := devcerts.Ensure(dir, "nats", "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	srv := leaf(t, b.ServerCert, b.ServerKey)
	server := x509.VerifyOptions{Roots: b.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	for _, h := range []string{"nats", "127.0.0.1"} {
		server.DNSName = h
		if _, err := srv.Verify(server); err != nil {
			t.Errorf("server certificate for %s: %v", h, err)
		}
	}
	server.DNSName = "localhost"
	if _, err := srv.Verify(server); err == nil {
		t.Error("server certificate valid for a host not asked for")
	}

	cert, key, err := b.ClientCert("audit")
	if err != nil {
		t.Fatal(err)
	}
	cl := leaf(t, cert, key)
	if len(cl.DNSNames) != 1 || cl.DNSNames[0] != "audit" {
		t.Errorf("client certificate SANs %q, want [audit]", cl.DNSNames)
	}
	if _, err := cl.Verify(x509.VerifyOptions{Roots: b.Pool(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate: %v", err)
	}
	if _, err := cl.Verify(x509.VerifyOptions{Roots: b.Pool(), DNSName: "audit"}); err == nil {
		t.Error("a client certificate also serves as a server certificate")
	}

	for _, f := range []string{b.ServerKey, key, filepath.Join(dir, devcerts.CAKeyFile)} {
		if fi, err := os.Stat(f); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v (%v), want 0600", f, fi.Mode().Perm(), err)
		}
	}
	ca, _ := os.ReadFile(b.CA)
	if _, err := devcerts.Ensure(dir, "nats"); err != nil {
		t.Fatal(err)
	}
	again, _ := os.ReadFile(b.CA)
	if !bytes.Equal(ca, again) {
		t.Error("a second Ensure replaced the CA")
	}
	if err := b.ShareKeys(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(b.ServerKey); fi.Mode().Perm() != 0o644 {
		t.Errorf("after ShareKeys the server key is %v", fi.Mode().Perm())
	}
}
