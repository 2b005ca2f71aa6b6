package natsdev

import "testing"

// StartT starts a server for a test: its store in a temporary directory of
// tb when opts.Dir is empty, shut down when the test and its subtests end.
// A server that cannot start fails the test.
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
