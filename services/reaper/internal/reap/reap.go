// Package reap assembles the reaper's parts (session tracking and expiry,
// job leases, back-channel logout) into the workers the runtime runs.
package reap

import (
	"context"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/reaper/internal/leases"
	"github.com/aigov/aigov/services/reaper/internal/logout"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/killswitch"
)

// defaultLeaseGrace is added to a lease's maximum for its record's TTL
// when AIGOV_REAPER_TTL_GRACE is unset.
const defaultLeaseGrace = 24 * time.Hour

// DefaultHTTPAddr is the reaper's AIGOV_HTTP_ADDR default.
const DefaultHTTPAddr = "127.0.0.1:8084"

// Config is the whole reaper's configuration.
type Config struct {
	// Common is what every service reads (NATS, HTTP, logging, keys).
	servicekit.Common
	Sessions sessions.Config
	Leases   leases.Config
	// LogoutAddr serves back-channel logout; empty turns it off.
	LogoutAddr string
	Logout     logout.Config
}

// LoadConfig reads every part's settings; env collects the violations.
func LoadConfig(env *servicekit.Env) Config {
	env.Declare(ServiceSettings()) // the defaults and bounds (again for Serve: no-op)
	cfg := Config{Common: servicekit.LoadCommon(env, "reaper", DefaultHTTPAddr), Sessions: sessions.LoadConfig(env)}
	// A lease record's TTL is its maximum plus a grace; sessions' default
	// grace of 0 (the bucket's retention) has no meaning for it.
	leaseGrace := cfg.Sessions.TTLGrace
	if leaseGrace == 0 {
		leaseGrace = defaultLeaseGrace
	}
	cfg.Leases = leases.LoadConfig(env, cfg.Sessions.Interval, leaseGrace, cfg.Sessions.MaxScan)
	cfg.LogoutAddr, cfg.Logout = logout.LoadConfig(env)
	return cfg
}

// New builds the reaper's parts on what servicekit.Start built. Binding
// the consumers and opening the buckets is bounded by
// servicekit.SetupTimeout. The reaper keeps time by the host's clock
// (time.Now), as before: AIGOV_DEV_CLOCK_OFFSET shifts authn and policy.
func New(cfg Config, deps servicekit.Deps) ([]servicekit.Worker, error) {
	ctx, cancel := context.WithTimeout(context.Background(), servicekit.SetupTimeout)
	defer cancel()
	reg := deps.HTTP.Registry
	cons, err := deps.Topology.Bind(ctx, deps.JS, schemas.ConsumerReaper)
	if err != nil {
		return nil, err
	}
	leaseCons, err := deps.Topology.Bind(ctx, deps.JS, schemas.ConsumerReaperLeases)
	if err != nil {
		return nil, err
	}
	reaper, err := sessions.New(ctx, cfg.Sessions, sessions.Deps{
		JS: deps.JS, Topology: deps.Topology, Log: deps.Log, Registry: reg, Now: time.Now, Signer: deps.Signer,
	})
	if err != nil {
		return nil, err
	}
	sw, err := killswitch.New(ctx, deps.JS, deps.Topology, deps.Signer, time.Now)
	if err != nil {
		return nil, err
	}
	ls, err := leases.New(ctx, cfg.Leases, leases.Deps{JS: deps.JS, Topology: deps.Topology, Switch: sw, Log: deps.Log, Now: time.Now})
	if err != nil {
		return nil, err
	}
	runner := servicekit.NewRunner(schemas.ConsumerReaper, deps.Log, reg, cfg.Sessions.Workers)
	leaseRunner := servicekit.NewRunner(schemas.ConsumerReaperLeases, deps.Log, reg, cfg.Sessions.Workers)
	workers := []servicekit.Worker{
		func(ctx context.Context) error { return runner.Run(ctx, cons, reaper.Track) },
		reaper.RunViews,
		reaper.RunExpiry,
		func(ctx context.Context) error { return leaseRunner.Run(ctx, leaseCons, ls.Handle) },
		ls.Run,
	}
	if cfg.LogoutAddr != "" {
		h, err := logout.New(ctx, cfg.Logout, logout.Deps{JS: deps.JS, Topology: deps.Topology, Switch: sw, Log: deps.Log, Now: time.Now})
		if err != nil {
			return nil, err
		}
		workers = append(workers, func(ctx context.Context) error {
			return logout.Serve(ctx, cfg.LogoutAddr, h, cfg.ShutdownTimeout)
		})
	}
	return workers, nil
}
