package servicekit_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/aigov/aigov/services/servicekit"
)

// Profiles are served only when asked for (AIGOV_PPROF): they show code
// paths and timings.
func TestProfilingOnlyWhenEnabled(t *testing.T) {
	t.Parallel()
	for _, enabled := range []bool{false, true} {
		srv, err := servicekit.NewServer("127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		if enabled {
			srv.EnableProfiling()
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- srv.Serve(ctx) }()
		var resp *http.Response
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if resp, err = http.Get("http://" + srv.Addr() + "/debug/pprof/"); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.StatusCode == http.StatusOK; got != enabled {
			t.Errorf("profiling enabled %v: /debug/pprof/ answered %s", enabled, resp.Status)
		}
		cancel()
		<-done
	}
}
