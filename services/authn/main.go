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

func main() { servicekit.Main(settings(), run) }

// settings are what authn reads from the environment, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func settings() servicekit.Settings {
	// authn signs every verified event and deny.
	common := servicekit.CommonSettings().Require("AIGOV_SIGNING_KEY")
	return servicekit.Settings{Service: "authn", Sections: []servicekit.Section{common, servicekit.SessionLimitSettings(), verify.Settings()}}
}

// run is main without the process: tests call it with a map of variables.
func run(ctx context.Context, lookup servicekit.Lookup) error {
	return servicekit.Serve(ctx, lookup, settings(), verify.LoadConfig, verify.New)
}
