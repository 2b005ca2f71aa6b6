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

func main() { servicekit.Main(settings(), run) }

// settings are what policy reads from the environment, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func settings() servicekit.Settings {
	// Policy signs its decisions and checks authn's signature on every
	// verified event.
	common := servicekit.CommonSettings().Require("AIGOV_SIGNING_KEY", "AIGOV_TRUST_FILE")
	return servicekit.Settings{Service: "policy", Sections: []servicekit.Section{common, servicekit.SessionLimitSettings(), decide.Settings()}}
}

// run is main without the process: tests call it with a map of variables.
func run(ctx context.Context, lookup servicekit.Lookup) error {
	return servicekit.Serve(ctx, lookup, settings(), decide.LoadConfig, decide.New)
}
