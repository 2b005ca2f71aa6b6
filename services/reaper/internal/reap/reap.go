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

// Config is the whole reaper's configuration.
type Config struct {
	Sessions sessions.Config
	Leases   leases.Config
	// LogoutAddr serves back-channel logout; empty turns it off.
	LogoutAddr string
	Logout     logout.Config
}

// LoadConfig reads every part's settings; env collects the violations.
func LoadConfig(env *servicekit.Env) Config {
	// The reaper signs every session event (servicekit.Common loads it).
	env.Required("AIGOV_SIGNING_KEY")
	cfg := Config{Sessions: sessions.LoadConfig(env)}
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

// Workers builds the reaper's parts on a started service.
func Workers(ctx context.Context, svc *servicekit.Service, cfg Config) ([]servicekit.Worker, error) {
	cons, err := svc.Topology.Bind(ctx, svc.JS, schemas.ConsumerReaper)
	if err != nil {
		return nil, err
	}
	leaseCons, err := svc.Topology.Bind(ctx, svc.JS, schemas.ConsumerReaperLeases)
	if err != nil {
		return nil, err
	}
	reaper, err := sessions.New(ctx, cfg.Sessions, sessions.Deps{
		JS: svc.JS, Topology: svc.Topology, Log: svc.Log, Registry: svc.HTTP.Registry, Now: time.Now, Signer: svc.Signer,
	})
	if err != nil {
		return nil, err
	}
	sw, err := killswitch.New(ctx, svc.JS, svc.Topology, svc.Signer, time.Now)
	if err != nil {
		return nil, err
	}
	ls, err := leases.New(ctx, cfg.Leases, leases.Deps{JS: svc.JS, Topology: svc.Topology, Switch: sw, Log: svc.Log, Now: time.Now})
	if err != nil {
		return nil, err
	}
	runner := servicekit.NewRunner(schemas.ConsumerReaper, svc.Log, svc.HTTP.Registry, cfg.Sessions.Workers)
	leaseRunner := servicekit.NewRunner(schemas.ConsumerReaperLeases, svc.Log, svc.HTTP.Registry, cfg.Sessions.Workers)
	workers := []servicekit.Worker{
		func(ctx context.Context) error { return runner.Run(ctx, cons, reaper.Track) },
		reaper.RunViews,
		reaper.RunExpiry,
		func(ctx context.Context) error { return leaseRunner.Run(ctx, leaseCons, ls.Handle) },
		ls.Run,
	}
	if cfg.LogoutAddr != "" {
		h, err := logout.New(ctx, cfg.Logout, logout.Deps{JS: svc.JS, Topology: svc.Topology, Switch: sw, Log: svc.Log, Now: time.Now})
		if err != nil {
			return nil, err
		}
		workers = append(workers, func(ctx context.Context) error {
			return logout.Serve(ctx, cfg.LogoutAddr, h, cfg.Sessions.ShutdownTimeout)
		})
	}
	return workers, nil
}
