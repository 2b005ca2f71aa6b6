package verify

import (
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/personal"
)

// ServiceSettings are everything authn reads, declared: reading anything
// else fails the start, and docs/configuration.md is generated from them.
func ServiceSettings() servicekit.Settings {
	// authn signs every verified event and deny.
	common := servicekit.CommonSettings().Require("AIGOV_SIGNING_KEY")
	return servicekit.Settings{Service: "authn", Sections: []servicekit.Section{common, servicekit.SessionLimitSettings(), Settings()}}
}

// Settings are the settings authn reads besides the common ones: the
// source of its -h and of its table in docs/configuration.md.
func Settings() servicekit.Section {
	return servicekit.Section{Title: "authn", Settings: []servicekit.Setting{
		{Names: []string{"AIGOV_OIDC_ISSUERS"}, Default: "required unless `AIGOV_OIDC_CONFIG`", Doc: "comma-separated exact issuer URLs (the simple form; not together with `AIGOV_OIDC_CONFIG`). The reaper reads it too, for back-channel logout"},
		{Names: []string{"AIGOV_OIDC_AUDIENCE"}, Value: DefaultAudience, Doc: "the audience of every issuer of `AIGOV_OIDC_ISSUERS`; also the reaper's default logout audience"},
		{Names: []string{"AIGOV_OIDC_CONFIG"}, Doc: "YAML or JSON file of issuers (see [Configuring issuers](issuers.md)); replaces the two above"},
		{Names: []string{"AIGOV_OIDC_HTTP_TIMEOUT"}, Value: DefaultHTTPTimeout, Doc: "discovery and JWKS fetches (the reaper's logout verification too)"},
		{Names: []string{"AIGOV_OIDC_KEYS_REFRESH"}, Value: DefaultKeysRefresh, Doc: "every issuer's JWKS is refetched this often; a removed key stops verifying, cached tokens included"},
		{Names: []string{"AIGOV_OIDC_CLOCK_SKEW"}, Value: DefaultClockSkew, Max: MaxClockSkew, Doc: "how far `nbf` and `iat` may be ahead; `exp` gets none"},
		{Names: []string{"AIGOV_OIDC_MAX_TOKEN_BYTES"}, Value: DefaultMaxTokenBytes, Min: MinMaxTokenBytes, Doc: "larger bearer tokens are `token_too_large`, unparsed"},
		{Names: []string{"AIGOV_AUTHN_CACHE_SIZE"}, Value: DefaultCacheSize, Min: -1, Doc: "verified tokens cached by SHA-256 (`-1` turns it off); gauge `aigov_authn_cache_entries`"},
		{Names: []string{"AIGOV_AUTHN_REVOCATIONS_MAX"}, Value: DefaultRevocationsMax, Min: 1, Doc: "keys of `aigov_revocations` held in memory (a few hundred bytes each); above it every request reads the bucket instead"},
		{Names: []string{"AIGOV_AUTHN_WORKERS"}, Value: DefaultWorkers, Min: 1, Doc: "requests verified at once"},
		{Names: []string{"AIGOV_PERSONAL_ENCRYPTION"}, Value: true, Doc: "seal each verified subject's email, name and `AIGOV_PERSONAL_CONTEXT_FIELDS` under their own key (bucket `aigov_subject_keys`) before any event leaves authn ([privacy.md](privacy.md))"},
		{Names: []string{"AIGOV_PERSONAL_CONTEXT_FIELDS"}, Doc: "comma-separated top-level request context fields that are personal data (matched ignoring case), sealed like the email; a request sending a value that starts with `enc:v1:` is `malformed_request`"},
		{Names: []string{"AIGOV_SUBJECT_KEY_CACHE_SIZE"}, Value: personal.DefaultCacheSize, Min: 1, Doc: "subject keys held in memory by authn and policy (dropped at once when erased); a miss is one KV read"},
	}}
}
