package clickhouse_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"os"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/aigov/aigov/services/devenv/clickhouse"
	"github.com/aigov/aigov/services/devenv/devcerts"
)

// With TLS the server answers on its secure native port to a client that
// trusts the dev CA, and a client that trusts another CA gets no session.
func TestSecureNativePort(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	s := startServer(t, clickhouse.Options{TLS: true})
	if s.SecureAddr() == "" || s.CAFile() == "" {
		t.Fatal("no secure address or CA with TLS on")
	}
	pem, err := os.ReadFile(s.CAFile())
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	query := func(cfg *tls.Config) error {
		conn, err := ch.Open(&ch.Options{Addr: []string{s.SecureAddr()}, TLS: cfg, DialTimeout: 5 * time.Second})
		if err != nil {
			return err
		}
		defer conn.Close()
		var one uint8
		return conn.QueryRow(ctx, "SELECT 1").Scan(&one)
	}
	if err := query(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}); err != nil {
		t.Fatalf("query over TLS trusting the dev CA: %v", err)
	}
	other, err := devcerts.Ensure(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := query(&tls.Config{RootCAs: other.Pool(), MinVersion: tls.VersionTLS12}); err == nil {
		t.Fatal("a client trusting another CA got an answer")
	}
}
