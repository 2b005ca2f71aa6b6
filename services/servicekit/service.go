package servicekit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/debug"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Deps are what Start builds for a service to run on, the same for every
// service: each one's New(cfg, deps) takes them beside its Config, which
// holds every setting (Deps hold none).
type Deps struct {
	Log      zerolog.Logger
	NC       *nats.Conn
	JS       jetstream.JetStream
	Topology topology.Topology
	// HTTP is the health and metrics server: a service registers its
	// readiness checks (AddCheck) and its metrics (Registry) on it.
	HTTP *Server
	// Signer signs the service's events (nil without AIGOV_SIGNING_KEY);
	// Trust verifies others' (nil without AIGOV_TRUST_FILE).
	Signer *signing.Signer
	Trust  *signing.Trust
	// Clock is what the service decides by: Common.Clock (time.Now,
	// shifted by AIGOV_DEV_CLOCK_OFFSET); nil means time.Now.
	Clock func() time.Time
}

// Service is a started service: its configuration and what it runs on.
type Service struct {
	Config Common
	Deps
}

// SigningSecondsMetric is the time a service spent signing and verifying
// events (nearly all of it CPU), by op: what the benchmark compares with
// the pipeline's CPU.
const SigningSecondsMetric = "aigov_signing_seconds_total"

// Ed25519OpsMetric counts the Ed25519 signatures made and verified (one
// per batch of events signed, one per batch root verified), by op.
const Ed25519OpsMetric = "aigov_signing_ed25519_total"

func registerSigningMetrics(reg prometheus.Registerer, signer *signing.Signer, trust *signing.Trust) error {
	ops := map[string]func() signing.Stats{}
	if signer != nil {
		ops["sign"] = signer.Stats
	}
	if trust != nil {
		ops["verify"] = trust.Stats
	}
	for op, stats := range ops {
		labels := prometheus.Labels{"op": op}
		for _, c := range []prometheus.Collector{
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: SigningSecondsMetric, ConstLabels: labels,
				Help: "CPU time spent signing and verifying events (hashing and Ed25519), by op."},
				func() float64 { return stats().Busy.Seconds() }),
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: Ed25519OpsMetric, ConstLabels: labels,
				Help: "Ed25519 signatures made or verified, by op (one per batch of events)."},
				func() float64 { return float64(stats().Ed25519) }),
		} {
			if err := reg.Register(c); err != nil {
				return fmt.Errorf("register signing metrics: %w", err)
			}
		}
	}
	return nil
}

// loadKeys reads the signing key and the trust file named by c.
func loadKeys(c Common) (*signing.Signer, *signing.Trust, error) {
	var (
		signer *signing.Signer
		trust  *signing.Trust
	)
	if c.SigningKey != "" {
		key, err := signing.LoadOrCreateKey(c.SigningKey, false)
		if err != nil {
			return nil, nil, fmt.Errorf("AIGOV_SIGNING_KEY: %w", err)
		}
		if signer, err = signing.NewSigner(key); err != nil {
			return nil, nil, fmt.Errorf("AIGOV_SIGNING_KEY: %w", err)
		}
	}
	if c.TrustFile != "" {
		var err error
		if trust, err = signing.LoadTrust(c.TrustFile); err != nil {
			return nil, nil, fmt.Errorf("AIGOV_TRUST_FILE: %w", err)
		}
	}
	return signer, trust, nil
}

// Start builds the logger, binds the health server and connects to NATS.
func Start(ctx context.Context, c Common) (*Service, error) {
	log, err := NewLogger(c)
	if err != nil {
		return nil, err
	}
	debug.SetGCPercent(c.GCPercent)
	signer, trust, err := loadKeys(c)
	if err != nil {
		return nil, err
	}
	srv, err := NewServer(c.HTTPAddr)
	if err != nil {
		return nil, err
	}
	if c.Pprof {
		srv.EnableProfiling()
	}
	nc, js, err := Connect(ctx, c, log)
	if err != nil {
		srv.close()
		return nil, err
	}
	// The bus was provisioned beforehand (aigov bus provision): a
	// service's credentials cannot create streams, buckets or consumers.
	topo := c.Topology()
	srv.AddCheck("nats", NATSCheck(nc))
	if err := registerSigningMetrics(srv.Registry, signer, trust); err != nil {
		nc.Close()
		srv.close()
		return nil, err
	}
	ev := log.Info().Str("http_addr", srv.Addr()).Int("gogc", c.GCPercent).Str("nats_url", nc.ConnectedUrlRedacted())
	if signer != nil {
		ev = ev.Str("signing_key_id", signer.KeyID())
	}
	ev.Msg("service started")
	return &Service{Config: c, Deps: Deps{Log: log, NC: nc, JS: js, Topology: topo, HTTP: srv, Signer: signer, Trust: trust, Clock: c.Clock()}}, nil
}

// Close releases what Start took, for a service that will not Run: the
// NATS connection and the health port.
func (s *Service) Close() {
	s.NC.Close()
	s.HTTP.close()
}

// Configured is a service's Config: a struct embedding Common, whose
// CommonConfig it promotes.
type Configured interface{ CommonConfig() Common }

// CommonConfig is c itself, promoted to every Config that embeds Common.
func (c Common) CommonConfig() Common { return c }

// Serve is a whole service's life, the same for every service: it reads
// the declared settings through lookup with load (which validates them
// and collects every violation), reports them all, starts (logger, health
// server, NATS), builds the service's workers with build and runs them
// until ctx ends. A service's run function is one call to it.
func Serve[C Configured](ctx context.Context, lookup Lookup, settings Settings, load func(*Env) C, build func(C, Deps) ([]Worker, error)) error {
	env := NewEnv(lookup)
	env.Declare(settings)
	cfg := load(env)
	if err := env.Err(); err != nil {
		return err
	}
	svc, err := Start(ctx, cfg.CommonConfig())
	if err != nil {
		return err
	}
	workers, err := build(cfg, svc.Deps)
	if err != nil {
		svc.Close()
		return err
	}
	return svc.Run(ctx, workers...)
}

// Group runs workers as one: until ctx ends or one of them fails, which
// stops the others, and returns once every one has returned, with their
// errors. A service that owns a resource its workers share closes it after
// the group returns.
func Group(workers ...Worker) Worker {
	return func(ctx context.Context) error {
		gctx, stop := context.WithCancel(ctx)
		defer stop()
		return runAll(gctx, stop, workers)
	}
}

// runAll runs workers on ctx, calls stop when one fails (ctx is stop's),
// and returns once every one has returned.
func runAll(ctx context.Context, stop context.CancelFunc, workers []Worker) error {
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, w := range workers {
		wg.Go(func() {
			if err := w(ctx); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
				stop() // one failed part takes the others down
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// SetupTimeout bounds the set-up a service's New does on the bus (binding
// its consumers, opening its buckets): each step is a request the server
// answers at once, so this is far more than a healthy bus needs.
const SetupTimeout = 30 * time.Second

// Worker is one long-running part of a service, such as a consumer loop.
// It returns when ctx ends, after finishing the work it had taken.
type Worker func(ctx context.Context) error

// Run runs the workers and the health server until ctx ends or a worker
// fails, then shuts down in order: not ready first, workers drained, then
// the NATS connection drained (flushing pending publishes and acks), and the
// health server last so probes see the whole shutdown.
func (s *Service) Run(ctx context.Context, workers ...Worker) error {
	httpCtx, stopHTTP := context.WithCancel(context.WithoutCancel(ctx))
	httpDone := make(chan error, 1)
	go func() { httpDone <- s.HTTP.Serve(httpCtx) }()

	wctx, stopWorkers := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- runAll(wctx, stopWorkers, workers) }()
	s.HTTP.SetReady(true)
	<-wctx.Done()
	s.HTTP.SetReady(false)
	s.Log.Info().Msg("shutting down")
	var errs []error
	if err := <-done; err != nil {
		errs = append(errs, err)
	}
	stopWorkers()

	if err := s.NC.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		errs = append(errs, fmt.Errorf("drain nats: %w", err))
	}
	// Drain is asynchronous; wait for it, bounded by the shutdown timeout.
	deadline := time.Now().Add(s.Config.ShutdownTimeout)
	for !s.NC.IsClosed() && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	stopHTTP()
	if err := <-httpDone; err != nil {
		errs = append(errs, err)
	}
	s.Log.Info().Msg("stopped")
	return errors.Join(errs...)
}

// Main runs a service's run function with a context that ends on SIGINT or
// SIGTERM, and exits non-zero with the error if it fails. It is all a
// service's main function needs to do.
func Main(settings Settings, run func(ctx context.Context, lookup Lookup) error) {
	name := settings.Service
	// -h lists the settings (names and defaults, never values); the
	// reference's generator reads -settings-json. Nothing else is a flag.
	switch args := os.Args[1:]; {
	case len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help"):
		settings.WriteHelp(os.Stdout)
		return
	case len(args) == 1 && args[0] == "-settings-json":
		if err := settings.WriteJSON(os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
			os.Exit(1)
		}
		return
	case len(args) > 0:
		fmt.Fprintf(os.Stderr, "%s: unexpected arguments %q: configuration is read from the environment (%s -h lists it)\n", name, args, name)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.LookupEnv)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		os.Exit(1)
	}
}
