package sink

import (
	"time"

	"github.com/aigov/aigov/services/servicekit"
)

// ServiceSettings are everything the audit reads, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func ServiceSettings() servicekit.Settings {
	// Every decision's and session event's signature is checked.
	common := servicekit.CommonSettings().Require("AIGOV_TRUST_FILE")
	return servicekit.Settings{Service: "audit", Sections: []servicekit.Section{common, Settings()}}
}

// Settings are the settings the audit writer reads besides the common ones: the
// source of its -h and of its table in docs/configuration.md.
func Settings() servicekit.Section {
	return servicekit.Section{Title: "audit", Settings: []servicekit.Setting{
		{Names: []string{"AIGOV_CLICKHOUSE_ADDR"}, Value: []string{"127.0.0.1:9000"}, Doc: "native-protocol `host:port`, comma-separated for several"},
		{Names: []string{"AIGOV_CLICKHOUSE_DATABASE"}, Value: "aigov", Doc: "created if missing; a plain identifier"},
		{Names: []string{"AIGOV_CLICKHOUSE_USER"}, Value: "default", Doc: "the ClickHouse user the audit writes as"},
		{Names: []string{"AIGOV_CLICKHOUSE_PASSWORD"}, Doc: "that user's password"},
		{Names: []string{"AIGOV_CLICKHOUSE_SECURE"}, Value: false, Doc: "the native protocol over TLS; point `AIGOV_CLICKHOUSE_ADDR` at the server's `tcp_port_secure` (9440 by default)"},
		{Names: []string{"AIGOV_CLICKHOUSE_TLS_CA"}, Default: "— (system roots)", Doc: "PEM CA the server's certificate must chain to; only with `AIGOV_CLICKHOUSE_SECURE=true`"},
		{Names: []string{"AIGOV_CLICKHOUSE_STARTUP_TIMEOUT"}, Value: time.Minute, Doc: "how long start-up waits for ClickHouse to accept the migrations"},
		{Names: []string{"AIGOV_CLICKHOUSE_COMPRESSION"}, Value: CompressionNone, Doc: "native-protocol block compression: `none`, `lz4` or `zstd`. At 100k events/s the writer sends about 180 MB/s uncompressed; use `lz4` on links slower than 10 Gbit/s (it costs ~4% of the writer's throughput)"},
		{Names: []string{"AIGOV_AUDIT_BATCH_SIZE"}, Value: DefaultBatchSize, Min: 1, Doc: "messages per insert batch; at most 50000 (half the audit consumers' `MaxAckPending`). Below ~100k events/s batches flush on the interval and stay smaller"},
		{Names: []string{"AIGOV_AUDIT_FLUSH_INTERVAL"}, Value: 500 * time.Millisecond, Doc: "longest wait before a partial batch is written; at most `15s`"},
		{Names: []string{"AIGOV_AUDIT_SIGNING_KEY"}, Required: true, Doc: "PEM Ed25519 private key file that signs the checkpoints"},
		{Names: []string{"AIGOV_AUDIT_SIGNING_KEY_CREATE"}, Value: false, Doc: "generate the key (and `<key>.pub`) if the file is missing; for development"},
		{Names: []string{"AIGOV_AUDIT_CHECKPOINT_INTERVAL"}, Value: time.Second, Doc: "least time between two checkpoints of a stream"},
		{Names: []string{"AIGOV_AUDIT_MASK_FIELDS"}, Doc: "request context fields to mask, comma-separated"},
		{Names: []string{"AIGOV_AUDIT_MASK_MODE"}, Value: MaskHash, Doc: "`hash` (`hmac-sha256:<hex>`, keyed with `AIGOV_AUDIT_PSEUDONYM_KEY`, which it requires) or `redact` (`***`)"},
		{Names: []string{"AIGOV_AUDIT_PSEUDONYM_KEY"}, Doc: "file with the 32-byte pseudonym key in hex: `subject_pseudonym` columns and mask mode `hash` are HMAC-SHA256 under it (docs/privacy.md); unset leaves `subject_pseudonym` empty"},
		{Names: []string{"AIGOV_AUDIT_PSEUDONYM_KEY_CREATE"}, Value: false, Doc: "generate the pseudonym key file if missing (mode 0600); for development"},
		{Names: []string{"AIGOV_AUDIT_RETENTION_DAYS"}, Value: 0, Min: 0, Default: "`0` (forever)", Doc: "TTL on tables created on ClickHouse 20.3 or later (verify reports rows a TTL removed as missing; prefer the per-class settings below)"},
		{Names: []string{"AIGOV_AUDIT_RETENTION_DECISIONS_DAYS", "AIGOV_AUDIT_RETENTION_SESSIONS_DAYS", "AIGOV_AUDIT_RETENTION_GOVERNANCE_DAYS"}, Value: 0, Min: 0, Default: "`0` (forever)", Doc: "per-class retention: the audit drops expired monthly partitions on every server version, records signed retirements for verify, and keeps partitions listed in `legal_holds` (docs/privacy.md)"},
		{Names: []string{"AIGOV_AUDIT_RETENTION_INTERVAL"}, Value: time.Hour, Doc: "how often the retention job runs"},
		{Names: []string{"AIGOV_PERSONAL_CONTEXT_FIELDS"}, Doc: "the same list as authn's: a dead letter copies a request authn never sealed, so the audit replaces these context fields with `***` in it ([privacy.md](privacy.md))"},
	}}
}
