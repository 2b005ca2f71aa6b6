package cli_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/aigov/internal/cli"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// `aigov <cmd> -h` with passwords in the environment (and one in the URL)
// prints none of them, and every command that dials NATS offers the same
// connection flags.
func TestHelpNeverShowsPassword(t *testing.T) {
	t.Parallel()
	lookup := mapLookup(map[string]string{
		"AIGOV_NATS_PASSWORD":       "s3cret-nats",
		"AIGOV_NATS_URL":            "nats://platform:s3cret-url@127.0.0.1:4222",
		"AIGOV_CLICKHOUSE_PASSWORD": "s3cret-ch",
	})
	for _, cmd := range [][]string{
		{"authorize"}, {"sessions", "list"}, {"sessions", "revoke"}, {"leases", "list"}, {"audit", "verify"},
		{"policy", "push"}, {"entities", "list"}, {"entities", "put"}, {"approve"},
	} {
		t.Run(strings.Join(cmd, " "), func(t *testing.T) {
			t.Parallel()
			var out, errOut bytes.Buffer
			code := cli.Run(context.Background(), append(cmd, "-h"), &out, &errOut, lookup)
			help := out.String() + errOut.String()
			if code != cli.ExitUsage {
				t.Fatalf("exit %d: %s", code, help)
			}
			if strings.Contains(help, "s3cret") {
				t.Fatalf("help shows a password:\n%s", help)
			}
			for _, flag := range []string{"-nats-url", "-user", "-password", "-creds", "-nkey", "-tls-ca", "-tls-cert", "-tls-key", "-prefix"} {
				if !strings.Contains(help, flag+" ") && !strings.Contains(help, flag+"\n") {
					t.Errorf("help lacks %s:\n%s", flag, help)
				}
			}
		})
	}
}

// A connect error names the server without the password, whether it came
// in the URL, a flag or the environment.
func TestConnectErrorHidesPassword(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
	}{
		{"url", []string{"--nats-url", "nats://platform:secret@127.0.0.1:1"}, nil},
		{"env url", nil, map[string]string{"AIGOV_NATS_URL": "nats://platform:secret@127.0.0.1:1"}},
		{"flag", []string{"--nats-url", "nats://127.0.0.1:1", "--password", "secret"}, nil},
	} {
		trust := devkeys.New(t).TrustFile
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out, errOut bytes.Buffer
			args := append([]string{"authorize", "--timeout", "500ms", "--action", "model.retrain", "--resource", "Model:m", "--trust-file", trust}, tc.args...)
			code := cli.Run(context.Background(), args, &out, &errOut, mapLookup(tc.env))
			if code != cli.ExitError || !strings.Contains(errOut.String(), "connect to nats://") {
				t.Fatalf("exit %d stderr %q", code, errOut.String())
			}
			if strings.Contains(errOut.String(), "secret") {
				t.Fatalf("stderr shows the password: %q", errOut.String())
			}
		})
	}
}

// The commands take the whole connection from the environment, as a
// sourced .run/env/<role>.env gives it: URL, user, password read at run
// time, and the TLS CA.
func TestConnectionFromEnvironment(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	env := map[string]string{
		"AIGOV_NATS_URL":      srv.URL(),
		"AIGOV_NATS_USER":     schemas.RoleReaper,
		"AIGOV_NATS_PASSWORD": srv.Password(schemas.RoleReaper),
		"AIGOV_NATS_TLS_CA":   srv.CAFile(),
	}
	admin, _ := srv.ConnectT(t, natsdev.AdminUser)
	if err := ensureTopology(admin); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := cli.Run(context.Background(), []string{"sessions", "list", "--timeout", "10s"}, &out, &errOut, mapLookup(env)); code != cli.ExitAllow {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	// Without the CA the client does not trust the server.
	delete(env, "AIGOV_NATS_TLS_CA")
	errOut.Reset()
	if code := cli.Run(context.Background(), []string{"sessions", "list", "--timeout", "5s"}, &out, &errOut, mapLookup(env)); code != cli.ExitError ||
		!strings.Contains(errOut.String(), "certificate") {
		t.Fatalf("without the CA: exit %d: %s", code, errOut.String())
	}
}

// Mutual TLS from the command line: the role's certificate is its identity.
func TestClientCertificateFlags(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{ClientCerts: true})
	admin, _ := srv.ConnectT(t, natsdev.AdminUser)
	if err := ensureTopology(admin); err != nil {
		t.Fatal(err)
	}
	cert, key := srv.ClientCert(schemas.RoleReaper)
	var out, errOut bytes.Buffer
	args := []string{"leases", "list", "--nats-url", srv.URL(), "--tls-ca", srv.CAFile(), "--tls-cert", cert, "--tls-key", key, "--timeout", "10s"}
	if code := cli.Run(context.Background(), args, &out, &errOut, mapLookup(nil)); code != cli.ExitAllow {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	errOut.Reset()
	if code := cli.Run(context.Background(), args[:6], &out, &errOut, mapLookup(nil)); code != cli.ExitError {
		t.Fatalf("without the client certificate: exit %d: %s", code, errOut.String())
	}
}

// ensureTopology creates the streams and buckets as the admin user.
func ensureTopology(admin *nats.Conn) error {
	js, err := jetstream.New(admin)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	return topology.New("").Ensure(ctx, js)
}

// `aigov dev-certs` makes a CA and a server certificate valid for the
// compose service name, and a rerun keeps the CA.
func TestDevCerts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	run := func() {
		var out, errOut bytes.Buffer
		if code := cli.Run(context.Background(), []string{"dev-certs", "--dir", dir, "--hosts", "nats,localhost,127.0.0.1", "--share"},
			&out, &errOut, mapLookup(nil)); code != cli.ExitAllow {
			t.Fatalf("exit %d: %s", code, errOut.String())
		}
	}
	run()
	ca1, err := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if err != nil {
		t.Fatal(err)
	}
	run()
	ca2, _ := os.ReadFile(filepath.Join(dir, "ca.pem"))
	if !bytes.Equal(ca1, ca2) {
		t.Fatal("a rerun replaced the CA")
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca2)
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, "server.pem"), filepath.Join(dir, "server-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(pair.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"nats", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: host}); err != nil {
			t.Errorf("server certificate for %s: %v", host, err)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, DNSName: "clickhouse"}); err == nil {
		t.Error("server certificate valid for a host it was not made for")
	}
}

// mapLookup serves variables from m, as os.LookupEnv would.
func mapLookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}
