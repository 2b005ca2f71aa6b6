// Command reaper bounds session and job lifetimes: it tracks every session
// seen on the verified stream and ends those past their maximum age or idle
// timeout, keeps the job leases that allowed job.start decisions grant and
// ends them when heartbeats stop, and serves OIDC back-channel logout. Every
// end is a tombstone authn checks on each request, and an audited event.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/killswitch"
	"github.com/aigov/aigov/services/reaper/internal/leases"
	"github.com/aigov/aigov/services/reaper/internal/logout"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
	"github.com/aigov/aigov/services/runtime"
)

// defaultLeaseGrace is added to a lease's maximum for its record's TTL
// when AIGOV_REAPER_TTL_GRACE is unset.
const defaultLeaseGrace = 24 * time.Hour

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.LookupEnv)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "reaper: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, lookup runtime.Lookup) error {
	env := runtime.NewEnv(lookup)
	cfg := sessions.LoadConfig(env)
	// A lease record's TTL is its maximum plus a grace; sessions' default
	// grace of 0 (the bucket's retention) has no meaning for it.
	leaseGrace := cfg.TTLGrace
	if leaseGrace == 0 {
		leaseGrace = defaultLeaseGrace
	}
	leaseCfg := leases.LoadConfig(env, cfg.Interval, leaseGrace, cfg.MaxScan)
	logoutAddr, logoutCfg := logout.LoadConfig(env)
	if err := env.Err(); err != nil {
		return err
	}
	svc, err := runtime.Start(ctx, cfg.Common)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	workers, err := wire(ctx, svc, cfg, leaseCfg, logoutAddr, logoutCfg)
	if err != nil {
		svc.NC.Close()
		return err
	}
	return svc.Run(ctx, workers...)
}

// wire builds the reaper's parts: session tracking and expiry, job leases
// from decisions, and the back-channel logout endpoint when it has an
// address.
func wire(ctx context.Context, svc *runtime.Service, cfg sessions.Config, leaseCfg leases.Config, logoutAddr string, logoutCfg logout.Config) ([]runtime.Worker, error) {
	cons, err := svc.Topology.EnsureConsumer(ctx, svc.JS, schemas.ConsumerReaper)
	if err != nil {
		return nil, err
	}
	leaseCons, err := svc.Topology.EnsureConsumer(ctx, svc.JS, schemas.ConsumerReaperLeases)
	if err != nil {
		return nil, err
	}
	reaper, err := sessions.New(ctx, cfg, sessions.Deps{
		JS: svc.JS, Topology: svc.Topology, Log: svc.Log, Registry: svc.HTTP.Registry, Now: time.Now,
	})
	if err != nil {
		return nil, err
	}
	sw, err := killswitch.New(ctx, svc.JS, svc.Topology, time.Now)
	if err != nil {
		return nil, err
	}
	ls, err := leases.New(ctx, leaseCfg, leases.Deps{JS: svc.JS, Topology: svc.Topology, Switch: sw, Log: svc.Log, Now: time.Now})
	if err != nil {
		return nil, err
	}
	runner := runtime.NewRunner(schemas.ConsumerReaper, svc.Log, svc.HTTP.Registry, cfg.Workers)
	leaseRunner := runtime.NewRunner(schemas.ConsumerReaperLeases, svc.Log, svc.HTTP.Registry, cfg.Workers)
	workers := []runtime.Worker{
		func(ctx context.Context) error { return runner.Run(ctx, cons, reaper.Track) },
		reaper.RunExpiry,
		func(ctx context.Context) error { return leaseRunner.Run(ctx, leaseCons, ls.Handle) },
		ls.Run,
	}
	if logoutAddr != "" {
		h, err := logout.New(ctx, logoutCfg, logout.Deps{JS: svc.JS, Topology: svc.Topology, Switch: sw, Log: svc.Log, Now: time.Now})
		if err != nil {
			return nil, err
		}
		workers = append(workers, func(ctx context.Context) error {
			return logout.Serve(ctx, logoutAddr, h, cfg.ShutdownTimeout)
		})
	}
	return workers, nil
}
