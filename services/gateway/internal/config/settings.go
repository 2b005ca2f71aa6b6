package config

import (
	"time"

	"github.com/aigov/aigov/services/servicekit"
)

// ServiceSettings are everything the gateway reads, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func ServiceSettings() servicekit.Settings {
	// Decisions are taken only when authn or policy signed them.
	common := servicekit.CommonSettings().Require("AIGOV_TRUST_FILE")
	return servicekit.Settings{Service: "gateway", Sections: []servicekit.Section{common, Settings()}}
}

// Settings are the settings the gateway reads besides the common ones: the
// source of its -h and of its table in docs/configuration.md.
func Settings() servicekit.Section {
	return servicekit.Section{Title: "gateway", Settings: []servicekit.Setting{
		{Names: []string{"AIGOV_GATEWAY_ADDR"}, Value: DefaultAddr, Doc: "the API (and MCP) listener; also serves `/healthz`, `/readyz`"},
		{Names: []string{"AIGOV_GATEWAY_DECISION_TIMEOUT"}, Value: DefaultDecisionTimeout, Doc: "wait for a decision before a 504"},
		{Names: []string{"AIGOV_GATEWAY_MAX_BODY_BYTES"}, Value: DefaultMaxBodyBytes, Min: 1024, Max: MaxBodyBytesLimit, Doc: "larger bodies get 413"},
		{Names: []string{"AIGOV_GATEWAY_MAX_IN_FLIGHT"}, Value: DefaultMaxInFlight, Min: 1, Doc: "more concurrent requests get 503"},
		{Names: []string{"AIGOV_GATEWAY_SOURCE"}, Value: "aigov-gateway", Doc: "CloudEvents source of its requests"},
		{Names: []string{"AIGOV_GATEWAY_REMEMBER"}, Value: 2 * time.Minute, Doc: "how long a decision is kept for a retry with the same request id"},
		{Names: []string{"AIGOV_GATEWAY_MAX_REMEMBERED"}, Value: 10000, Min: 1, Doc: "how many decisions are kept for retries"},
		{Names: []string{"AIGOV_GATEWAY_MCP_CONFIG"}, Default: "— (off)", Doc: "JSON file of the MCP gateway: trusted issuers, the resource path, upstream servers and argument masks ([docs/gateway.md](gateway.md#mcp-gateway)); set, the gateway also serves MCP on `AIGOV_GATEWAY_ADDR`"},
	}}
}
