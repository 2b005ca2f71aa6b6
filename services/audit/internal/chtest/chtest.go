// Package chtest gives the audit service's tests one real ClickHouse server
// per test package and a fresh database per test.
package chtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/aigov/aigov/services/devenv/clickhouse"
)

// Main starts one ClickHouse server, runs the package's tests with it in
// *srv, and stops it. A server that cannot start fails the package: a
// skipped integration test is a silent hole in CI.
func Main(m *testing.M, srv **clickhouse.Server) int {
	dir, err := os.MkdirTemp("", "aigov-audit-clickhouse-")
	if err != nil {
		fmt.Fprintf(os.Stderr, "chtest: temp dir: %v\n", err)
		return 1
	}
	defer os.RemoveAll(dir)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	// TLS adds the secure native port, for the tests of the audit over TLS.
	s, err := clickhouse.Start(ctx, clickhouse.Options{Dir: dir, TLS: true})
	cancel()
	if err != nil {
		fmt.Fprintf(os.Stderr, "chtest: ClickHouse is required for these tests and did not start: %v\n", err)
		return 1
	}
	*srv = s
	code := m.Run()
	if err := s.Stop(); err != nil {
		fmt.Fprintf(os.Stderr, "chtest: stop ClickHouse: %v\n", err)
	}
	return code
}

// Open connects to database db of srv over the native protocol and closes
// the connection at cleanup.
func Open(t testing.TB, srv *clickhouse.Server, db string) driver.Conn {
	t.Helper()
	conn, err := ch.Open(&ch.Options{
		Addr:         []string{srv.Addr()},
		Auth:         ch.Auth{Database: db, Username: "default"},
		DialTimeout:  5 * time.Second,
		MaxOpenConns: 4,
	})
	if err != nil {
		t.Fatalf("open clickhouse %s/%s: %v", srv.Addr(), db, err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

// DatabaseName returns a database name unique to this test: its own
// name, sanitised, and a random suffix, so parallel tests never share
// tables. The database itself is not created.
func DatabaseName(t testing.TB) string {
	var b strings.Builder
	b.WriteString("t_")
	for _, r := range strings.ToLower(t.Name()) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
		if b.Len() >= 40 {
			break
		}
	}
	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	return b.String() + "_" + hex.EncodeToString(suffix[:])
}

// DropAtCleanup drops database db when the test ends, so a long test run
// does not fill the server.
func DropAtCleanup(t testing.TB, srv *clickhouse.Server, db string) {
	t.Helper()
	t.Cleanup(func() {
		conn, err := ch.Open(&ch.Options{Addr: []string{srv.Addr()}, Auth: ch.Auth{Database: "default", Username: "default"}})
		if err != nil {
			return
		}
		defer conn.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db)
	})
}

// Count runs a SELECT count() query and returns its result.
func Count(t testing.TB, conn driver.Conn, query string, args ...any) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var n uint64
	if err := conn.QueryRow(ctx, query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}
