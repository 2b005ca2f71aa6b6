// Command reaper bounds session and job lifetimes: it tracks every session
// seen on the verified stream and ends those past their maximum age or idle
// timeout, keeps the job leases that allowed job.start decisions grant and
// ends them when heartbeats stop, and serves OIDC back-channel logout. Every
// end is a tombstone authn checks on each request, and an audited event.
package main

import (
	"context"

	"github.com/aigov/aigov/services/reaper/internal/reap"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(reap.ServiceSettings(), run) }

// run is main without the process: tests call it with a map of variables.
func run(ctx context.Context, lookup servicekit.Lookup) error {
	return servicekit.Serve(ctx, lookup, reap.ServiceSettings(), reap.LoadConfig, reap.New)
}
