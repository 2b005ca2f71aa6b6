// Package sink is the audit writer: it consumes decision and session events
// from JetStream and writes them, batch by batch, into ClickHouse, acking a
// message only after the insert that holds it has committed.
package sink

import (
	"math"
	"time"

	"github.com/aigov/aigov/services/audit/internal/migrate"
	"github.com/aigov/aigov/services/audit/privacy"
	"github.com/aigov/aigov/services/servicekit"
)

// DefaultBatchSize is AIGOV_AUDIT_BATCH_SIZE when unset.
const DefaultBatchSize = 50000

// HandlerTimeout bounds one batch insert attempt. Together with the flush
// interval it must stay inside the consumers' AckWait, or JetStream would
// redeliver messages the writer still holds.
const HandlerTimeout = 30 * time.Second

// GCPercent is the audit writer's default AIGOV_GOGC (servicekit.Common's
// GCPercent, set when the service starts; GOGC still decides when set). The writer's heap is mostly
// batch buffers that live for one insert: at Go's default of 100 it
// collected about once a batch and faulted fresh pages in for the next;
// at 200 BenchmarkWriterPath spends about 2 µs less CPU per event. Peak
// heap grows to about three times the live batches (see README,
// Performance); GOMEMLIMIT caps it where memory is tight.
const GCPercent = 200

// Config is the audit service's whole configuration.
type Config struct {
	// Common is what every service reads (NATS, HTTP, logging).
	servicekit.Common
	// ClickHouse says where to write.
	ClickHouse ClickHouseConfig
	// BatchSize flushes a batch when it holds this many messages
	// (AIGOV_AUDIT_BATCH_SIZE). ClickHouse wants thousands per insert, and
	// on 18.16 each insert writes about a hundred files across the two hot
	// tables, so at 100k events/s batches of 50,000 cost ClickHouse half
	// the CPU per event that batches of 10,000 do. Below that rate batches
	// flush on FlushInterval and stay small.
	BatchSize int
	// FlushInterval flushes a non-empty batch this long after its first
	// message (AIGOV_AUDIT_FLUSH_INTERVAL), bounding how stale the audit
	// tables are at low traffic.
	FlushInterval time.Duration
	// SigningKey is the PEM Ed25519 private key file that signs the hash
	// chain's checkpoints (AIGOV_AUDIT_SIGNING_KEY, required). It shadows
	// Common.SigningKey (AIGOV_SIGNING_KEY), which the audit does not use.
	SigningKey string
	// CreateSigningKey generates SigningKey (and SigningKey.pub) when the
	// file does not exist (AIGOV_AUDIT_SIGNING_KEY_CREATE, default false:
	// for development only).
	CreateSigningKey bool
	// CheckpointInterval is the least time between two signed checkpoints
	// of a stream (AIGOV_AUDIT_CHECKPOINT_INTERVAL); one is also signed at
	// shutdown. Rows newer than the last checkpoint are covered by the
	// chain alone.
	CheckpointInterval time.Duration
	// MaskFields are the request context fields replaced before anything
	// is persisted (AIGOV_AUDIT_MASK_FIELDS, comma-separated, e.g.
	// prompt,dataset_path); MaskMode says how (AIGOV_AUDIT_MASK_MODE: hash
	// for "sha256:<hex>", redact for "***").
	MaskFields []string
	// PersonalContextFields are the context fields authn seals
	// (AIGOV_PERSONAL_CONTEXT_FIELDS, the same list): a dead letter copies a
	// request authn never sealed, so the audit redacts them there.
	PersonalContextFields []string
	MaskMode              string
	// PseudonymKey is the file holding the secret key of the keyed
	// pseudonyms (AIGOV_AUDIT_PSEUDONYM_KEY: 32 bytes in hex): the
	// subject_pseudonym columns and mask mode hash are HMAC-SHA256 under
	// it. Empty leaves subject_pseudonym empty and refuses mask mode hash
	// with fields to mask. CreatePseudonymKey generates the file when
	// missing (AIGOV_AUDIT_PSEUDONYM_KEY_CREATE, for development).
	PseudonymKey       string
	CreatePseudonymKey bool
	// Retention is the per-class retention the audit's retention job
	// enforces by dropping whole expired monthly partitions, on every
	// server version (AIGOV_AUDIT_RETENTION_DECISIONS_DAYS,
	// _SESSIONS_DAYS, _GOVERNANCE_DAYS; 0 keeps for ever), every
	// RetentionInterval (AIGOV_AUDIT_RETENTION_INTERVAL). Partitions in
	// the legal_holds table are kept. See docs/privacy.md.
	Retention         Retention
	RetentionInterval time.Duration
	// RetentionDays adds a TTL to the tables created on servers with TTL
	// (AIGOV_AUDIT_RETENTION_DAYS; 0, the default, keeps rows for ever).
	RetentionDays int
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
	// Secure speaks the native protocol over TLS (AIGOV_CLICKHOUSE_SECURE):
	// point Addrs at the server's tcp_port_secure (9440 by default).
	Secure bool
	// TLSCA is a PEM bundle the server's certificate must chain to
	// (AIGOV_CLICKHOUSE_TLS_CA); empty trusts the system roots. Only with
	// Secure.
	TLSCA string
	// RetentionDays is Config.RetentionDays, for the migrations.
	RetentionDays int
	// Compression is the native protocol's block compression
	// (AIGOV_CLICKHOUSE_COMPRESSION): none (the default, as in the
	// driver), lz4 or zstd. Compression costs CPU on both ends, about 4%
	// of the writer's throughput here with lz4, and saves network: at
	// 100k events/s the writer sends about 180 MB/s uncompressed, so use lz4
	// when the link to ClickHouse is slower than 10 Gbit/s.
	Compression string
	// Conns is the pool size: each lane inserts into two tables at once.
	Conns int
	// StartupTimeout is how long start-up waits for ClickHouse to accept
	// the migrations before the service gives up
	// (AIGOV_CLICKHOUSE_STARTUP_TIMEOUT).
	StartupTimeout time.Duration
}

// DefaultHTTPAddr is the audit's AIGOV_HTTP_ADDR default.
const DefaultHTTPAddr = "127.0.0.1:8083"

func auditCommon(env *servicekit.Env) servicekit.Common {
	c := servicekit.LoadCommon(env, "audit", DefaultHTTPAddr)
	c.GCPercent = env.GCPercent(GCPercent)
	return c
}

// LoadConfig reads the configuration; violations are collected in env.
func LoadConfig(env *servicekit.Env) Config {
	env.Declare(ServiceSettings()) // the defaults and bounds (again for Serve: no-op)
	c := Config{
		Common: auditCommon(env),
		ClickHouse: ClickHouseConfig{
			Addrs:          env.List("AIGOV_CLICKHOUSE_ADDR"),
			Database:       env.String("AIGOV_CLICKHOUSE_DATABASE"),
			User:           env.String("AIGOV_CLICKHOUSE_USER"),
			Password:       env.String("AIGOV_CLICKHOUSE_PASSWORD"),
			Secure:         env.Bool("AIGOV_CLICKHOUSE_SECURE"),
			TLSCA:          env.String("AIGOV_CLICKHOUSE_TLS_CA"),
			Compression:    env.String("AIGOV_CLICKHOUSE_COMPRESSION"),
			StartupTimeout: env.Duration("AIGOV_CLICKHOUSE_STARTUP_TIMEOUT"),
		},
		BatchSize:             env.Int("AIGOV_AUDIT_BATCH_SIZE"),
		FlushInterval:         env.Duration("AIGOV_AUDIT_FLUSH_INTERVAL"),
		SigningKey:            env.String("AIGOV_AUDIT_SIGNING_KEY"),
		CreateSigningKey:      env.Bool("AIGOV_AUDIT_SIGNING_KEY_CREATE"),
		CheckpointInterval:    env.Duration("AIGOV_AUDIT_CHECKPOINT_INTERVAL"),
		MaskFields:            env.List("AIGOV_AUDIT_MASK_FIELDS"),
		PersonalContextFields: env.List("AIGOV_PERSONAL_CONTEXT_FIELDS"),
		MaskMode:              env.String("AIGOV_AUDIT_MASK_MODE"),
		PseudonymKey:          env.String("AIGOV_AUDIT_PSEUDONYM_KEY"),
		CreatePseudonymKey:    env.Bool("AIGOV_AUDIT_PSEUDONYM_KEY_CREATE"),
		RetentionDays:         env.Int("AIGOV_AUDIT_RETENTION_DAYS"),
		Retention: Retention{
			Decisions:  env.Int("AIGOV_AUDIT_RETENTION_DECISIONS_DAYS"),
			Sessions:   env.Int("AIGOV_AUDIT_RETENTION_SESSIONS_DAYS"),
			Governance: env.Int("AIGOV_AUDIT_RETENTION_GOVERNANCE_DAYS"),
		},
		RetentionInterval: env.Duration("AIGOV_AUDIT_RETENTION_INTERVAL"),
	}
	c.ClickHouse.RetentionDays = c.RetentionDays
	// Two inserts at a time per lane, plus the readiness ping and the
	// chain-head reads.
	c.ClickHouse.Conns = 2*len(c.Common.Topology().AuditedStreams()) + 2
	c.validate(env)
	return c
}

// consumerLimits are the least AckWait and MaxAckPending of the audit
// consumers.
func (c Config) consumerLimits() (ackWait time.Duration, maxPending int) {
	ackWait, maxPending = time.Minute, math.MaxInt
	topo := c.Common.Topology()
	for _, stream := range topo.AuditedStreams() {
		if spec, err := topo.Consumer(topo.AuditConsumer(stream)); err == nil {
			ackWait = min(ackWait, spec.Config.AckWait)
			maxPending = min(maxPending, spec.Config.MaxAckPending)
		}
	}
	return ackWait, maxPending
}

// batchWaitLimit is the longest a message may wait in a batch before its
// insert starts: half of what AckWait leaves after a handler timeout.
func batchWaitLimit(ackWait time.Duration) time.Duration { return (ackWait - HandlerTimeout) / 2 }

// BacklogWait is how long a batch may wait to fill while a backlog is
// pending (servicekit.BatchOptions.BacklogWait): four flush intervals, within
// the same limit as the flush interval. Draining a backlog, batches cut at
// the flush interval held half the messages they could, and ClickHouse
// spent about 70% more CPU per event on them.
func (c Config) BacklogWait() time.Duration {
	ackWait, _ := c.consumerLimits()
	return min(4*c.FlushInterval, batchWaitLimit(ackWait))
}

func (c Config) validate(env *servicekit.Env) {
	if len(c.ClickHouse.Addrs) == 0 {
		env.Fail("AIGOV_CLICKHOUSE_ADDR must name at least one host:port")
	}
	if err := migrate.ValidateDatabase(c.ClickHouse.Database); err != nil {
		env.Fail("AIGOV_CLICKHOUSE_DATABASE: %v", err)
	}
	// The key is read at start; here only whether there is one counts.
	var pseud privacy.Pseudonymizer
	if c.PseudonymKey != "" {
		pseud, _ = privacy.NewPseudonymizer(make([]byte, privacy.KeySize))
	}
	if _, err := newMasker(c.MaskFields, c.MaskMode, pseud); err != nil {
		env.Fail("AIGOV_AUDIT_MASK_MODE: %v", err)
	}
	if c.RetentionInterval <= 0 {
		env.Fail("AIGOV_AUDIT_RETENTION_INTERVAL must be positive")
	}
	if c.CheckpointInterval < 0 {
		env.Fail("AIGOV_AUDIT_CHECKPOINT_INTERVAL must not be negative")
	}
	if c.ClickHouse.TLSCA != "" && !c.ClickHouse.Secure {
		// A CA without TLS would look secure and send everything in clear.
		env.Fail("AIGOV_CLICKHOUSE_TLS_CA is set but AIGOV_CLICKHOUSE_SECURE is not true")
	}
	if _, err := compressionOf(c.ClickHouse.Compression); err != nil {
		env.Fail("AIGOV_CLICKHOUSE_COMPRESSION: %v", err)
	}
	if c.ClickHouse.StartupTimeout <= 0 {
		env.Fail("AIGOV_CLICKHOUSE_STARTUP_TIMEOUT must be positive")
	}
	ackWait, maxPending := c.consumerLimits()
	// A message waits up to a flush interval (BacklogWait on a backlog,
	// within the same limit) in the batch and then up to a handler timeout
	// in the insert before it is acked or marked in progress.
	if limit := batchWaitLimit(ackWait); c.FlushInterval <= 0 || c.FlushInterval > limit {
		env.Fail("AIGOV_AUDIT_FLUSH_INTERVAL=%s must be above 0 and at most %s (well below the audit consumers' AckWait of %s)",
			c.FlushInterval, limit, ackWait)
	}
	// The runner pulls two batches ahead; more than MaxAckPending in flight
	// would stall the consumer with a batch that can never fill.
	if limit := maxPending / 2; c.BatchSize > limit {
		env.Fail("AIGOV_AUDIT_BATCH_SIZE=%d must be at most %d (half the audit consumers' MaxAckPending)", c.BatchSize, limit)
	}
}
