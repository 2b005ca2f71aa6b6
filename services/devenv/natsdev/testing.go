package natsdev

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// StartT starts a server for a test: its store in a temporary directory of
// tb when opts.Dir is empty, shut down when the test and its subtests end.
// The topology is provisioned (unless opts.Open), so a test goes straight
// to ConnectT for the roles it plays. A server that cannot start fails the
// test.
func StartT(tb testing.TB, opts Options) *Server {
	tb.Helper()
	if opts.Dir == "" {
		opts.Dir = tb.TempDir()
	}
	s, err := Start(opts)
	if err != nil {
		tb.Fatalf("natsdev: %v", err)
	}
	tb.Cleanup(s.Shutdown)
	return s
}

// ConnectT connects as role for a test and returns the connection with its
// JetStream context, both closed when the test ends (before the server
// shuts down: cleanups run last-registered first). A failed connect fails
// the test.
func (s *Server) ConnectT(tb testing.TB, role string, extra ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	return connectT(tb, role, func() (*nats.Conn, error) { return s.Connect(role, extra...) })
}

// ConnectT is Server.ConnectT on the cluster.
func (c *Cluster) ConnectT(tb testing.TB, role string, extra ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	return connectT(tb, role, func() (*nats.Conn, error) { return c.Connect(role, extra...) })
}

func connectT(tb testing.TB, role string, connect func() (*nats.Conn, error)) (*nats.Conn, jetstream.JetStream) {
	tb.Helper()
	nc, err := connect()
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("natsdev: jetstream as %s: %v", role, err)
	}
	return nc, js
}

// WaitFor polls cond until it holds, failing tb with what once timeout
// has passed. It is the one polling helper of the tests: a condition
// that needs a context builds its own from the test's.
func WaitFor(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("%s: not within %s", what, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
