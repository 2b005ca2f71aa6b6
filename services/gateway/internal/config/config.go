// Package config reads the gateway's configuration from the environment.
package config

import (
	"time"

	"github.com/aigov/aigov/services/servicekit"
)

// Config is the gateway's configuration.
type Config struct {
	// Common holds the settings every service shares (NATS, health port,
	// logging, trust file).
	servicekit.Common
	// Addr serves the authorize API and the MCP gateway
	// (AIGOV_GATEWAY_ADDR). /healthz and /readyz are served here too;
	// /metrics only on the health port (AIGOV_HTTP_ADDR).
	Addr string
	// DecisionTimeout is how long a caller waits for a decision before a
	// 504 (AIGOV_GATEWAY_DECISION_TIMEOUT); the request may still be
	// decided and audited later.
	DecisionTimeout time.Duration
	// MaxBodyBytes bounds a request body (AIGOV_GATEWAY_MAX_BODY_BYTES).
	MaxBodyBytes int
	// MaxInFlight bounds the requests served at once
	// (AIGOV_GATEWAY_MAX_IN_FLIGHT); more get 503.
	MaxInFlight int
	// Source is the CloudEvents source of the requests it publishes
	// (AIGOV_GATEWAY_SOURCE).
	Source string
	// Remember is how long a decision is kept for a retry with the same
	// request id (AIGOV_GATEWAY_REMEMBER), and MaxRemembered how many
	// (AIGOV_GATEWAY_MAX_REMEMBERED).
	Remember      time.Duration
	MaxRemembered int
	// MCPConfig is the MCP gateway's file of upstream servers
	// (AIGOV_GATEWAY_MCP_CONFIG); empty serves no MCP endpoint.
	MCPConfig string
}

// Defaults.
const (
	DefaultAddr            = "127.0.0.1:8090"
	DefaultHTTPAddr        = "127.0.0.1:8085"
	DefaultDecisionTimeout = 5 * time.Second
	DefaultMaxBodyBytes    = 64 << 10
	DefaultMaxInFlight     = 256
	// MaxBodyBytesLimit bounds AIGOV_GATEWAY_MAX_BODY_BYTES: a request's
	// context is at most 16 KiB, so 1 MiB is far more than any needs.
	MaxBodyBytesLimit = 1 << 20
)

// LoadConfig reads the gateway's variables; violations are recorded in e.
func LoadConfig(e *servicekit.Env) Config {
	e.Declare(ServiceSettings()) // the defaults and bounds (again for Serve: no-op)
	c := Config{
		Common:          servicekit.LoadCommon(e, "gateway", DefaultHTTPAddr),
		Addr:            e.String("AIGOV_GATEWAY_ADDR"),
		DecisionTimeout: e.Duration("AIGOV_GATEWAY_DECISION_TIMEOUT"),
		MaxBodyBytes:    e.Int("AIGOV_GATEWAY_MAX_BODY_BYTES"),
		MaxInFlight:     e.Int("AIGOV_GATEWAY_MAX_IN_FLIGHT"),
		Source:          e.String("AIGOV_GATEWAY_SOURCE"),
		Remember:        e.Duration("AIGOV_GATEWAY_REMEMBER"),
		MaxRemembered:   e.Int("AIGOV_GATEWAY_MAX_REMEMBERED"),
		MCPConfig:       e.String("AIGOV_GATEWAY_MCP_CONFIG"),
	}
	if c.DecisionTimeout <= 0 {
		e.Fail("AIGOV_GATEWAY_DECISION_TIMEOUT must be above zero")
	}
	return c
}
