package reap

import (
	"time"

	"github.com/aigov/aigov/services/reaper/internal/leases"
	"github.com/aigov/aigov/services/reaper/internal/logout"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
	"github.com/aigov/aigov/services/servicekit"
)

// ServiceSettings are everything the reaper reads, declared: reading
// anything else fails the start, and docs/configuration.md is generated
// from them.
func ServiceSettings() servicekit.Settings {
	// The reaper signs every session event.
	common := servicekit.CommonSettings().Require("AIGOV_SIGNING_KEY")
	return servicekit.Settings{Service: "reaper", Sections: []servicekit.Section{common, servicekit.SessionLimitSettings(), Settings()}}
}

// Settings are the settings the reaper reads besides the common ones: the
// source of its -h and of its table in docs/configuration.md.
func Settings() servicekit.Section {
	return servicekit.Section{Title: "reaper", Settings: []servicekit.Setting{
		{Names: []string{"AIGOV_SESSION_IDLE_TIMEOUT"}, Value: sessions.DefaultIdleTimeout, Doc: "a session not seen for this long ends; must be shorter than the bucket's 7-day retention"},
		{Names: []string{"AIGOV_REAPER_INTERVAL"}, Value: sessions.DefaultInterval, Min: sessions.MinInterval, Doc: "how often sessions and leases are checked"},
		{Names: []string{"AIGOV_REAPER_MAX_SCAN"}, Value: sessions.DefaultMaxScan, Min: 1, Doc: "sessions (and leases) examined per check"},
		{Names: []string{"AIGOV_REAPER_WORKERS"}, Value: sessions.DefaultWorkers, Min: 1, Doc: "verified requests and decisions handled at once"},
		{Names: []string{"AIGOV_REAPER_TTL_GRACE"}, Value: time.Duration(sessions.DefaultTTLGrace), Doc: "added to a record's due time for its per-key KV TTL; `0` or at least `1s`. For sessions `0` means the bucket's retention (7 days); for leases the TTL is the maximum duration plus this grace, 24 h when `0`"},
		{Names: []string{"AIGOV_REAPER_TOUCH_GRANULARITY"}, Default: "`5s` (at most a tenth of the shortest idle timeout)", Doc: "a request of a known token does not rewrite its session record while `last_seen` is younger than this; `0` writes every request"},
		{Names: []string{"AIGOV_REAPER_SESSIONS_MAX"}, Value: sessions.DefaultSessionsMax, Min: 1, Doc: "live sessions held in memory (about 1 to 3 KB each); with more in `aigov_sessions` the view is dropped and every request reads its session from the bucket until a reload a minute later fits ([Sessions](sessions.md))"},
		{Names: []string{"AIGOV_REAPER_REVOCATIONS_MAX"}, Value: sessions.DefaultRevocationsMax, Min: 1, Doc: "keys of `aigov_revocations` held in memory by the reaper; above it requests read the bucket instead"},
		{Names: []string{"AIGOV_LEASE_HEARTBEAT_TTL"}, Value: leases.DefaultHeartbeatTTL, Min: leases.MinHeartbeatTTL, Doc: "how far a heartbeat moves a lease's deadline"},
		{Names: []string{"AIGOV_LEASE_MAX_DURATION"}, Value: leases.DefaultMaxDuration, Doc: "a lease's hard maximum from its start (at least the heartbeat TTL)"},
		{Names: []string{"AIGOV_LOGOUT_ADDR"}, Default: "— (off)", Doc: "address of the back-channel logout endpoint; trusts the issuers of `AIGOV_OIDC_ISSUERS` or of the same `AIGOV_OIDC_CONFIG` file authn reads (one of the two)"},
		{Names: []string{"AIGOV_LOGOUT_AUDIENCE"}, Default: "with `AIGOV_OIDC_CONFIG`: each issuer's first `audiences` entry; else `AIGOV_OIDC_AUDIENCE`, else `aigov`", Doc: "the `aud` logout tokens must carry"},
		{Names: []string{"AIGOV_LOGOUT_MAX_AGE"}, Value: logout.DefaultMaxAge, Doc: "how old a logout token's `iat` may be"},
		{Names: []string{"AIGOV_OIDC_ISSUERS", "AIGOV_OIDC_CONFIG"}, Doc: "as for authn: the issuers whose logout tokens back-channel logout accepts"},
		{Names: []string{"AIGOV_OIDC_AUDIENCE"}, Value: "aigov", Doc: "as for authn; the default logout audience of `AIGOV_OIDC_ISSUERS`"},
		{Names: []string{"AIGOV_OIDC_HTTP_TIMEOUT"}, Value: logout.DefaultHTTPTimeout, Doc: "discovery and JWKS fetches of the logout verification"},
	}}
}
