// Command reaper bounds session and job lifetimes: it tracks every session
// seen on the verified stream and ends those past their maximum age or idle
// timeout, keeps the job leases that allowed job.start decisions grant and
// ends them when heartbeats stop, and serves OIDC back-channel logout. Every
// end is a tombstone authn checks on each request, and an audited event.
package main

import (
	"context"
	"fmt"

	"github.com/aigov/aigov/services/reaper/internal/reap"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(settings(), run) }

// settings are what reaper reads from the environment, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func settings() servicekit.Settings {
	return servicekit.Settings{Service: "reaper", Sections: []servicekit.Section{servicekit.CommonSettings(), servicekit.SessionLimitSettings(), reap.Settings()}}
}

// run is main without the process: tests call it with a map of variables.
func run(ctx context.Context, lookup servicekit.Lookup) error {
	env := servicekit.NewEnv(lookup)
	env.Declare(settings())
	cfg := reap.LoadConfig(env)
	if err := env.Err(); err != nil {
		return err
	}
	svc, err := servicekit.Start(ctx, cfg.Sessions.Common)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	workers, err := reap.Workers(ctx, svc, cfg)
	if err != nil {
		svc.NC.Close()
		return err
	}
	return svc.Run(ctx, workers...)
}
