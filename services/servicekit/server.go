package servicekit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Check reports whether one dependency is usable.
type Check func(ctx context.Context) error

// NATSCheck is ready while the connection is up.
func NATSCheck(nc *nats.Conn) Check {
	return func(context.Context) error {
		if s := nc.Status(); s != nats.CONNECTED {
			return fmt.Errorf("nats is %s", s)
		}
		return nil
	}
}

// Server serves /healthz (the process lives), /readyz (every check passes
// and the service has not begun shutting down) and /metrics.
type Server struct {
	mux      *http.ServeMux
	Registry *prometheus.Registry

	ln     net.Listener
	http   *http.Server
	mu     sync.Mutex
	checks map[string]Check
	ready  bool
	cached error
	at     time.Time
}

// NewServer binds addr at once, so a port clash fails start-up rather than
// surfacing later.
func NewServer(addr string) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for health and metrics on %s: %w", addr, err)
	}
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	s := &Server{Registry: reg, ln: ln, checks: map[string]Check{}}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", s.serveReady)
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	s.mux = mux
	s.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	return s, nil
}

// NewUnboundServer is a Server that listens nowhere: its registry and
// readiness checks, for tests that build a service's parts without its
// health port. Serve fails on it.
func NewUnboundServer() *Server {
	reg := prometheus.NewRegistry()
	s := &Server{Registry: reg, checks: map[string]Check{}, mux: http.NewServeMux()}
	s.http = &http.Server{Handler: s.mux, ReadHeaderTimeout: 5 * time.Second}
	return s
}

// close releases the bound port of a server that will not Serve.
func (s *Server) close() {
	if s.ln != nil {
		_ = s.ln.Close()
	}
}

// EnableProfiling serves Go's profiles under /debug/pprof/ (for
// benchmarks; off unless AIGOV_PPROF is set: a profile shows code paths
// and timing, so the port must stay internal).
func (s *Server) EnableProfiling() {
	s.mux.HandleFunc("/debug/pprof/", pprof.Index)
	s.mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	s.mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
}

// Addr is the bound address.
func (s *Server) Addr() string {
	if s.ln == nil {
		return ""
	}
	return s.ln.Addr().String()
}

// AddCheck registers a readiness check.
func (s *Server) AddCheck(name string, c Check) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.checks[name] = c
}

// SetReady flips readiness; false first thing on shutdown so load balancers
// and orchestrators stop sending work before the consumers drain.
func (s *Server) SetReady(ready bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ready, s.at = ready, time.Time{}
}

// Ready runs the checks, caching the verdict for a second so probes cannot
// hammer the dependencies.
func (s *Server) Ready(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ready {
		return errors.New("not started or shutting down")
	}
	if time.Since(s.at) < time.Second {
		return s.cached
	}
	var errs []error
	for name, c := range s.checks {
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := c(cctx); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
		cancel()
	}
	s.cached, s.at = errors.Join(errs...), time.Now()
	return s.cached
}

func (s *Server) serveReady(w http.ResponseWriter, r *http.Request) {
	if err := s.Ready(r.Context()); err != nil {
		http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

// Serve blocks until ctx ends, then shuts the server down.
func (s *Server) Serve(ctx context.Context) error {
	if s.ln == nil {
		return errors.New("health server: not bound (NewUnboundServer)")
	}
	errc := make(chan error, 1)
	go func() { errc <- s.http.Serve(s.ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("health server: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.http.Shutdown(sctx); err != nil {
		return fmt.Errorf("health server shutdown: %w", err)
	}
	return nil
}
