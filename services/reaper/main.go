// Command reaper bounds session lifetimes: it tracks every session seen on
// the verified stream and ends those past their maximum age or idle
// timeout, revoking them so that authn denies their later requests.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
	"github.com/aigov/aigov/services/runtime"
)

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
	if err := env.Err(); err != nil {
		return err
	}
	svc, err := runtime.Start(ctx, cfg.Common)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	cons, err := svc.Topology.EnsureConsumer(ctx, svc.JS, schemas.ConsumerReaper)
	if err != nil {
		svc.NC.Close()
		return err
	}
	reaper, err := sessions.New(ctx, cfg, sessions.Deps{
		JS: svc.JS, Topology: svc.Topology, Log: svc.Log, Registry: svc.HTTP.Registry, Now: time.Now,
	})
	if err != nil {
		svc.NC.Close()
		return err
	}
	runner := runtime.NewRunner(schemas.ConsumerReaper, svc.Log, svc.HTTP.Registry, cfg.Workers)
	return svc.Run(ctx,
		func(ctx context.Context) error { return runner.Run(ctx, cons, reaper.Track) },
		reaper.RunExpiry,
	)
}
