package servicekit

import (
	"time"

	"github.com/aigov/aigov/services/servicekit/sessionlimits"
)

// CommonSettings are the settings every service reads (LoadCommon).
func CommonSettings() Section {
	return Section{Title: "Every service", Settings: []Setting{
		{Names: []string{"AIGOV_NATS_URL"}, Value: "nats://127.0.0.1:4222", Doc: "NATS servers, comma-separated"},
		{Names: []string{"AIGOV_NATS_USER"}, Default: "the service's name", Doc: "NATS user"},
		{Names: []string{"AIGOV_NATS_PASSWORD"}, Doc: "NATS password"},
		{Names: []string{"AIGOV_NATS_CREDS"}, Doc: "a `.creds` file, used instead of user and password"},
		{Names: []string{"AIGOV_NATS_NKEY"}, Doc: "a file holding the user's nkey seed, used instead of the password"},
		{Names: []string{"AIGOV_NATS_TLS_CA"}, Default: "— (system roots)", Doc: "PEM CA bundle the server's certificate must chain to; set, the connection is TLS or nothing"},
		{Names: []string{"AIGOV_NATS_TLS_CERT", "AIGOV_NATS_TLS_KEY"}, Doc: "client certificate and key for mutual TLS (both or neither)"},
		{Names: []string{"AIGOV_SUBJECT_PREFIX"}, Value: "aigov", Doc: "first token of every subject; streams become `<PREFIX>_REQUESTS`…, buckets `<prefix>_sessions`…"},
		{Names: []string{"AIGOV_REPLICAS"}, Value: 1, Min: 1, Doc: "replicas of every stream and bucket the service ensures; 3 on a cluster"},
		{Names: []string{"AIGOV_HTTP_ADDR"}, Default: "`127.0.0.1:8081` authn, `:8082` policy, `:8083` audit, `:8084` reaper, `:8085` gateway", Doc: "`/healthz`, `/readyz`, `/metrics`"},
		{Names: []string{"AIGOV_LOG_LEVEL"}, Value: "info", Doc: "zerolog level"},
		{Names: []string{"AIGOV_LOG_FORMAT"}, Value: "json", Doc: "`json` or `console`"},
		{Names: []string{"AIGOV_SHUTDOWN_TIMEOUT"}, Value: 20 * time.Second, Doc: "bound on draining and flushing at SIGTERM"},
		{Names: []string{"AIGOV_SIGNING_KEY"}, Doc: "PEM Ed25519 private key file the service signs its events with (`aigov keys gen`)"},
		{Names: []string{"AIGOV_TRUST_FILE"}, Doc: "the trust file: every signing role's public keys ([docs/security.md](security.md#signed-events))"},
		{Names: []string{"AIGOV_SIGNING_LINGER"}, Value: DefaultSigningLinger, Doc: "how long authn and policy gather events to sign under one signature and publish together, at most; they wait only while their workers are handling more messages, so a lone event is published at once ([performance](performance.md))"},
		{Names: []string{"AIGOV_GOGC"}, Min: -1, Default: "`GOGC` if set, else `400` (audit: `200`)", Doc: "the Go garbage collector's target, as `GOGC` (`-1`: off); the small heaps of authn, policy and the reaper collect far too often at Go's 100 ([performance](performance.md#garbage-collection)); set `GOMEMLIMIT` too where memory is tight"},
		{Names: []string{"GOGC"}, Doc: "Go's own variable, read when `AIGOV_GOGC` is unset"},
		{Names: []string{"AIGOV_PPROF"}, Value: false, Doc: "serve Go's profiles under `/debug/pprof/` on the health port (`devstack bench -profile DIR` uses it); keep that port internal"},
		{Names: []string{"AIGOV_DEV_CLOCK_OFFSET"}, Value: time.Duration(0), Min: -10 * time.Minute, Max: 10 * time.Minute, Doc: "dev and chaos tests only: shift the clock authn and policy check token lifetimes and decide by (e.g. `-2m`), to model a host whose clock is off; bounded, so a stray value cannot accept tokens expired for days ([docs/reliability.md](reliability.md))"},
	}}
}

// SessionLimitSettings are read by authn, policy and the reaper alike
// (LoadSessionLimits): give all three the same values.
func SessionLimitSettings() Section {
	return Section{Title: "authn, policy and the reaper", Settings: []Setting{
		{Names: []string{"AIGOV_SESSION_MAX_AGE"}, Value: sessionlimits.DefaultMaxAge, Doc: "read by authn, policy and the reaper; give all three the same value. Session lifetime from its start: `auth_time`, else the `iat` of a token without `sid` (its own session), else the first request the reaper saw. authn and policy deny `session_expired` from the token alone, so it holds while the reaper is down ([Sessions](sessions.md))"},
		{Names: []string{"AIGOV_REAPER_CONFIG"}, Doc: "read by authn, policy and the reaper (the same file for all three): JSON limits per issuer, principal type and group (see [Sessions](sessions.md)); authn and policy apply only its `max_age`"},
	}}
}
