// Command policy decides every verified request with Cedar: it consumes
// aigov.verified.>, evaluates the request against the policy set and the
// trusted entity store, publishes the decision on aigov.decision.<action>
// and sends it to the requester's inbox.
package main

import (
	"context"

	"github.com/aigov/aigov/services/policy/internal/decide"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(decide.ServiceSettings(), run) }

// run is main without the process: tests call it with a map of variables.
func run(ctx context.Context, lookup servicekit.Lookup) error {
	return servicekit.Serve(ctx, lookup, decide.ServiceSettings(), decide.LoadConfig, decide.New)
}
