// Command audit is aigov's audit writer: it consumes every decision and
// session event from JetStream and writes them, in batches, to ClickHouse,
// where auditors query them with SQL. It applies the schema migrations at
// start.
package main

import (
	"context"
	"errors"

	"github.com/aigov/aigov/services/audit/internal/sink"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(settings(), run) }

// settings are what audit reads from the environment, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func settings() servicekit.Settings {
	return servicekit.Settings{Service: "audit", Sections: []servicekit.Section{servicekit.CommonSettings(), sink.Settings()}}
}

// run is main without the process: tests call it with a map of variables.
func run(ctx context.Context, lookup servicekit.Lookup) error {
	env := servicekit.NewEnv(lookup)
	env.Declare(settings())
	cfg := sink.LoadConfig(env)
	if err := env.Err(); err != nil {
		return err
	}
	svc, err := servicekit.Start(ctx, cfg.Common)
	if err != nil {
		return err
	}
	a, err := sink.Start(ctx, cfg, svc)
	if err != nil {
		svc.NC.Close()
		return err
	}
	// Run returns after the workers flushed their last batches; only then
	// may the ClickHouse pool go.
	runErr := svc.Run(ctx, a.Workers()...)
	return errors.Join(runErr, a.Close())
}
