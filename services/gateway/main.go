// Command gateway is aigov's way in for callers that cannot speak NATS: an
// HTTP authorize API (POST /v1/authorize) that publishes each request as an
// aigov request event with the caller's own bearer token and answers with
// the decision, and an MCP gateway (/mcp) that makes every agent tool call
// such a request. It decides nothing itself. Configuration is read from the
// environment (AIGOV_*); see internal/config.LoadConfig.
package main

import (
	"context"

	"github.com/aigov/aigov/services/gateway/internal/config"
	"github.com/aigov/aigov/services/gateway/internal/server"
	"github.com/aigov/aigov/services/servicekit"
)

func main() { servicekit.Main(config.ServiceSettings(), run) }

// run is main without the process: tests call it with a map of variables.
func run(ctx context.Context, lookup servicekit.Lookup) error {
	return servicekit.Serve(ctx, lookup, config.ServiceSettings(), config.LoadConfig, server.New)
}
