// Command authn is aigov's authentication service: it verifies the OIDC
// bearer token of every request event and publishes a verified event or an
// authn deny. Configuration is read from the environment (AIGOV_*); see
// internal/verify.LoadConfig.
package main

import (
	"context"

	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(verify.ServiceSettings(), run) }

// run is main without the process: tests call it with a map of variables.
func run(ctx context.Context, lookup servicekit.Lookup) error {
	return servicekit.Serve(ctx, lookup, verify.ServiceSettings(), verify.LoadConfig, verify.New)
}
