package sink

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devcerts"
	"github.com/aigov/aigov/services/servicekit"
)

// The audit writes every event over ClickHouse's secure native port when
// configured so, verifying the server against the given CA.
func TestWritesOverTLS(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{batchSize: 16, secureCH: true})
	for i := range 20 {
		d := decisionN(i)
		id := schemas.DerivedID(d.RequestID, "decision")
		h.publish(h.subjects.Decision(d.Action), encode(t, id, schemas.TypeDecision, d.Timings.DecidedAt, d), id)
	}
	h.waitCount(20, 20*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	h.waitAcked(schemas.ConsumerAuditDecisions, 10*time.Second)
}

// A server whose certificate does not chain to the configured CA gets
// nothing: Open fails rather than writing to an impostor, and a plain
// client cannot talk to the secure port either.
func TestRefusesUntrustedClickHouse(t *testing.T) {
	t.Parallel()
	other, err := devcerts.Ensure(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		cfg  ClickHouseConfig
		want string
	}{
		{"another CA", ClickHouseConfig{Addrs: []string{server.SecureAddr()}, Secure: true, TLSCA: other.CA}, "certificate"},
		{"system roots", ClickHouseConfig{Addrs: []string{server.SecureAddr()}, Secure: true}, "certificate"},
		{"plain to the secure port", ClickHouseConfig{Addrs: []string{server.SecureAddr()}}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := tc.cfg
			c.Database, c.User, c.Compression, c.StartupTimeout = "aigov_never_created", "default", CompressionNone, 2*time.Second
			conn, err := Open(context.Background(), c, zerolog.Nop())
			if err == nil {
				_ = conn.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want an error about %q, got %v", tc.want, err)
			}
		})
	}
}

// A CA without TLS would look secure and send everything in clear: it is
// a configuration error.
func TestTLSCAWithoutSecureIsRefused(t *testing.T) {
	t.Parallel()
	env := servicekit.NewEnv(servicekit.MapLookup(map[string]string{
		"AIGOV_AUDIT_SIGNING_KEY": "k", "AIGOV_CLICKHOUSE_TLS_CA": "/ca.pem",
	}))
	LoadConfig(env)
	if err := env.Err(); err == nil || !strings.Contains(err.Error(), "AIGOV_CLICKHOUSE_SECURE") {
		t.Fatalf("want an error naming AIGOV_CLICKHOUSE_SECURE, got %v", err)
	}
}
