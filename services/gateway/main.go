// Command gateway is aigov's way in for callers that cannot speak NATS: an
// HTTP authorize API (POST /v1/authorize) that publishes each request as an
// aigov request event with the caller's own bearer token and answers with
// the decision, and an MCP gateway (/mcp) that makes every agent tool call
// such a request. It decides nothing itself. Configuration is read from the
// environment (AIGOV_*); see internal/config.Load and servicekit.LoadCommon.
package main

import (
	"context"

	"github.com/aigov/aigov/services/gateway/internal/config"
	"github.com/aigov/aigov/services/gateway/internal/server"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(settings(), run) }

// settings are what gateway reads from the environment, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func settings() servicekit.Settings {
	return servicekit.Settings{Service: "gateway", Sections: []servicekit.Section{servicekit.CommonSettings(), config.Settings()}}
}

func run(ctx context.Context, lookup servicekit.Lookup) error {
	env := servicekit.NewEnv(lookup)
	env.Declare(settings())
	common := servicekit.LoadCommon(env, "gateway", config.DefaultHTTPAddr)
	// Decisions are taken only when authn or policy signed them.
	env.Required("AIGOV_TRUST_FILE")
	cfg := config.Load(env)
	if err := env.Err(); err != nil {
		return err
	}
	svc, err := servicekit.Start(ctx, common)
	if err != nil {
		return err
	}
	gw, err := server.New(ctx, cfg, server.Deps{Log: svc.Log, NC: svc.NC, Trust: svc.Trust, Prefix: common.Prefix,
		Registry: svc.HTTP.Registry, Ready: svc.HTTP.Ready})
	if err != nil {
		svc.NC.Close()
		return err
	}
	return svc.Run(ctx, gw.Run)
}
