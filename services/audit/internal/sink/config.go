// Package sink is the audit writer: it consumes decision and session events
// from JetStream and writes them, batch by batch, into ClickHouse, acking a
// message only after the insert that holds it has committed.
package sink

import (
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/audit/internal/migrate"
	"github.com/aigov/aigov/services/runtime"
)

// HandlerTimeout bounds one batch insert attempt. Together with the flush
// interval it must stay inside the consumers' AckWait, or JetStream would
// redeliver messages the writer still holds.
const HandlerTimeout = 30 * time.Second

// Config is the audit service's whole configuration.
type Config struct {
	// Common is what every service reads (NATS, HTTP, logging).
	Common runtime.Common
	// ClickHouse says where to write.
	ClickHouse ClickHouseConfig
	// BatchSize flushes a batch when it holds this many messages
	// (AIGOV_AUDIT_BATCH_SIZE). ClickHouse wants thousands per insert.
	BatchSize int
	// FlushInterval flushes a non-empty batch this long after its first
	// message (AIGOV_AUDIT_FLUSH_INTERVAL), bounding how stale the audit
	// tables are at low traffic.
	FlushInterval time.Duration
}

// ClickHouseConfig is the connection to ClickHouse, over the native
// protocol (the driver's HTTP transport does not work with 18.16).
type ClickHouseConfig struct {
	// Addrs are host:port of the native protocol (AIGOV_CLICKHOUSE_ADDR,
	// comma-separated for several replicas).
	Addrs []string
	// Database holds the audit tables (AIGOV_CLICKHOUSE_DATABASE); created
	// at start if missing.
	Database string
	// User and Password authenticate (AIGOV_CLICKHOUSE_USER,
	// AIGOV_CLICKHOUSE_PASSWORD).
	User     string
	Password string
	// StartupTimeout is how long start-up waits for ClickHouse to accept
	// the migrations before the service gives up
	// (AIGOV_CLICKHOUSE_STARTUP_TIMEOUT).
	StartupTimeout time.Duration
}

// LoadConfig reads the configuration; violations are collected in env.
func LoadConfig(env *runtime.Env) Config {
	c := Config{
		Common: runtime.LoadCommon(env, "audit", "127.0.0.1:8083"),
		ClickHouse: ClickHouseConfig{
			Addrs:          env.List("AIGOV_CLICKHOUSE_ADDR", []string{"127.0.0.1:9000"}),
			Database:       env.String("AIGOV_CLICKHOUSE_DATABASE", "aigov"),
			User:           env.String("AIGOV_CLICKHOUSE_USER", "default"),
			Password:       env.String("AIGOV_CLICKHOUSE_PASSWORD", ""),
			StartupTimeout: env.Duration("AIGOV_CLICKHOUSE_STARTUP_TIMEOUT", time.Minute),
		},
		BatchSize:     env.Int("AIGOV_AUDIT_BATCH_SIZE", 5000, 1),
		FlushInterval: env.Duration("AIGOV_AUDIT_FLUSH_INTERVAL", 500*time.Millisecond),
	}
	c.validate(env)
	return c
}

func (c Config) validate(env *runtime.Env) {
	if len(c.ClickHouse.Addrs) == 0 {
		env.Fail("AIGOV_CLICKHOUSE_ADDR must name at least one host:port")
	}
	if err := migrate.ValidateDatabase(c.ClickHouse.Database); err != nil {
		env.Fail("AIGOV_CLICKHOUSE_DATABASE: %v", err)
	}
	if c.ClickHouse.StartupTimeout <= 0 {
		env.Fail("AIGOV_CLICKHOUSE_STARTUP_TIMEOUT must be positive")
	}
	ackWait, maxPending := time.Minute, 20000
	for _, name := range []string{schemas.ConsumerAuditDecisions, schemas.ConsumerAuditSessions} {
		if spec, err := c.Common.Topology().Consumer(name); err == nil {
			ackWait = min(ackWait, spec.Config.AckWait)
			maxPending = min(maxPending, spec.Config.MaxAckPending)
		}
	}
	// A message waits up to a flush interval in the batch and then up to a
	// handler timeout in the insert before it is acked or marked in
	// progress; half of what is left of AckWait keeps a wide margin.
	if limit := (ackWait - HandlerTimeout) / 2; c.FlushInterval <= 0 || c.FlushInterval > limit {
		env.Fail("AIGOV_AUDIT_FLUSH_INTERVAL=%s must be above 0 and at most %s (well below the audit consumers' AckWait of %s)",
			c.FlushInterval, limit, ackWait)
	}
	// The runner pulls two batches ahead; more than MaxAckPending in flight
	// would stall the consumer with a batch that can never fill.
	if limit := maxPending / 2; c.BatchSize > limit {
		env.Fail("AIGOV_AUDIT_BATCH_SIZE=%d must be at most %d (half the audit consumers' MaxAckPending)", c.BatchSize, limit)
	}
}
