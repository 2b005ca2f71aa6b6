package verify

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/oidcfile"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
)

// Config is the authn service's configuration.
type Config struct {
	// Common is what every service reads (NATS, HTTP, logging, keys).
	servicekit.Common
	// Encrypt seals every verified subject's email, name and
	// PersonalContextFields under their own key (the subject keys bucket)
	// before any event leaves authn (AIGOV_PERSONAL_ENCRYPTION, default
	// true; docs/privacy.md).
	Encrypt bool
	// PersonalContextFields are the request context fields (top-level,
	// matched ignoring case) that are personal data, sealed like the email
	// (AIGOV_PERSONAL_CONTEXT_FIELDS).
	PersonalContextFields []string
	// SubjectKeyCacheSize bounds the subject keys held in memory
	// (AIGOV_SUBJECT_KEY_CACHE_SIZE).
	SubjectKeyCacheSize int
	// Issuers are the trusted OIDC issuers, from AIGOV_OIDC_CONFIG (a file)
	// or, in the simple form, AIGOV_OIDC_ISSUERS with AIGOV_OIDC_AUDIENCE.
	Issuers []Issuer
	// Workers is how many requests are verified at once (AIGOV_AUTHN_WORKERS).
	Workers int
	// HTTPTimeout bounds each discovery and JWKS request
	// (AIGOV_OIDC_HTTP_TIMEOUT).
	HTTPTimeout time.Duration
	// DiscoveryRetry is the least time between two discovery attempts, and
	// between two JWKS refreshes forced by unknown kids, for one issuer,
	// so a down IdP or a flood of forged kids is not a flood of fetches.
	// Zero means DefaultDiscoveryRetry.
	DiscoveryRetry time.Duration
	// KeysRefresh is how often every issuer's JWKS is refetched, so a key
	// the IdP removed stops being trusted within this time, cached tokens
	// included (AIGOV_OIDC_KEYS_REFRESH). Zero means DefaultKeysRefresh.
	KeysRefresh time.Duration
	// ClockSkew is how far nbf and iat may be ahead of this clock
	// (AIGOV_OIDC_CLOCK_SKEW). exp gets no leeway. Zero means
	// DefaultClockSkew.
	ClockSkew time.Duration
	// CacheSize bounds the verified-token cache in entries
	// (AIGOV_AUTHN_CACHE_SIZE); 0 means DefaultCacheSize, negative turns
	// the cache off.
	CacheSize int
	// MaxTokenBytes bounds a bearer token (AIGOV_OIDC_MAX_TOKEN_BYTES).
	// Zero means DefaultMaxTokenBytes.
	MaxTokenBytes int
	// RevocationsMax bounds the in-memory revocation set in keys (session
	// revocations plus lease tombstones, each a few hundred bytes at most)
	// (AIGOV_AUTHN_REVOCATIONS_MAX). Zero means DefaultRevocationsMax.
	// When the bucket holds more, the set is dropped and every request
	// reads the bucket instead (slower, never less strict).
	RevocationsMax int
	// SessionLimits bound a session's age from its token's start
	// (AIGOV_SESSION_MAX_AGE and the rules of AIGOV_REAPER_CONFIG, the
	// reaper's settings): a request of a session past its max age is denied
	// session_expired even when no reaper has ended the session yet. Zero
	// MaxAge checks nothing.
	SessionLimits sessionlimits.Limits
}

// Issuer is one trusted OIDC issuer and how its tokens are read.
type Issuer struct {
	// URL is the issuer identifier, compared byte for byte with a token's
	// iss and with the discovery document's issuer (a trailing slash
	// differs).
	URL string
	// Audiences are the accepted aud values: a token must name one.
	Audiences []string
	// AuthorizedParties, when set, are the only azp values accepted. With
	// none set, azp is checked only on a token with several audiences,
	// which must then carry an azp among Audiences (OIDC Core 3.1.3.7).
	AuthorizedParties []string
	// Algorithms are the allowed signing algorithms; empty means the
	// asymmetric ones the discovery document advertises (RS256 if none).
	// Symmetric algorithms and none are never allowed.
	Algorithms []string
	// PrincipalType is schemas.PrincipalUser or schemas.PrincipalWorkload.
	PrincipalType string
	// Claims maps claims to the principal's fields.
	Claims ClaimMapping
	// Tenant, when set, must equal the token's tid claim (multi-tenant
	// issuers such as Entra ID).
	Tenant string
	// TokenTypes are the accepted JOSE typ values, compared without case
	// and without an application/ prefix. A token without typ is always
	// accepted; empty means just "JWT". logout+jwt is never accepted.
	TokenTypes []string
	// Require pins attributes: each listed attribute must be present and
	// equal one of its values, e.g. repository_owner_id: ["123456"].
	Require map[string][]string
	// MFAACRValues are acr values that prove a second factor.
	MFAACRValues []string
	// ReplayProtection makes every jti single-use until the token's exp:
	// a second request with the same token is token_replayed. Tokens
	// without jti are then refused.
	ReplayProtection bool
	// Preset is the workload preset the mapping came from ("" if none),
	// for logs and for the preset's own checks.
	Preset string

	tmpl template // Claims.PrincipalID parsed, set by NewAuthenticator
}

// ClaimMapping says where the principal's fields come from. A path is a
// claim name, or names joined by dots to reach into objects
// (realm_access.roles); a name that itself holds dots or colons
// (kubernetes.io, cognito:groups) is matched whole first. Empty fields
// take DefaultClaims' values.
type ClaimMapping struct {
	// Groups is the path of the groups: an array of strings, or one string.
	Groups string
	// Scopes are paths of scopes; each may be a space-separated string
	// (scope) or an array (scp). Default: scope and scp.
	Scopes []string
	// Email and Name are paths of strings.
	Email string
	Name  string
	// PrincipalID forms the principal's id within its issuer: a template
	// of {path} placeholders, default "{sub}". The id is always scoped by
	// the issuer (schemas.PrincipalID), never a bare claim.
	PrincipalID string
	// Attributes maps attribute names to claim paths; values must be
	// strings, numbers or booleans and become strings.
	Attributes map[string]string
}

// Defaults for Config.
const (
	DefaultHTTPAddr       = "127.0.0.1:8081"
	DefaultAudience       = "aigov"
	DefaultWorkers        = 32
	DefaultHTTPTimeout    = 5 * time.Second
	DefaultDiscoveryRetry = 5 * time.Second
	DefaultKeysRefresh    = 10 * time.Minute
	DefaultClockSkew      = 30 * time.Second
	DefaultCacheSize      = 10000
	DefaultMaxTokenBytes  = 16 << 10
	DefaultRevocationsMax = 500000
	// MaxClockSkew bounds AIGOV_OIDC_CLOCK_SKEW: more would accept tokens
	// from far in the future.
	MaxClockSkew = 5 * time.Minute
	// MinMaxTokenBytes is the least AIGOV_OIDC_MAX_TOKEN_BYTES: a smaller
	// bound would refuse ordinary tokens.
	MinMaxTokenBytes = 1024
)

// DefaultClaims are the standard OIDC claim names plus groups.
var DefaultClaims = ClaimMapping{Groups: "groups", Scopes: []string{"scope", "scp"}, Email: "email", Name: "name", PrincipalID: "{sub}"}

// withDefaults fills empty mapping fields.
func (c ClaimMapping) withDefaults() ClaimMapping {
	if c.Groups == "" {
		c.Groups = DefaultClaims.Groups
	}
	if len(c.Scopes) == 0 {
		c.Scopes = DefaultClaims.Scopes
	}
	if c.Email == "" {
		c.Email = DefaultClaims.Email
	}
	if c.Name == "" {
		c.Name = DefaultClaims.Name
	}
	if c.PrincipalID == "" {
		c.PrincipalID = DefaultClaims.PrincipalID
	}
	return c
}

// LoadConfig reads the authn variables; violations are recorded in e so
// that they are reported together with the common ones.
func LoadConfig(e *servicekit.Env) Config {
	e.Declare(ServiceSettings()) // the defaults and bounds (again for Serve: no-op)
	cfg := Config{
		Common:         servicekit.LoadCommon(e, "authn", DefaultHTTPAddr),
		Workers:        e.Int("AIGOV_AUTHN_WORKERS"),
		HTTPTimeout:    e.Duration("AIGOV_OIDC_HTTP_TIMEOUT"),
		KeysRefresh:    e.Duration("AIGOV_OIDC_KEYS_REFRESH"),
		ClockSkew:      e.Duration("AIGOV_OIDC_CLOCK_SKEW"),
		CacheSize:      e.Int("AIGOV_AUTHN_CACHE_SIZE"),
		MaxTokenBytes:  e.Int("AIGOV_OIDC_MAX_TOKEN_BYTES"),
		RevocationsMax: e.Int("AIGOV_AUTHN_REVOCATIONS_MAX"),
		SessionLimits:  servicekit.LoadSessionLimits(e),

		Encrypt:               e.Bool("AIGOV_PERSONAL_ENCRYPTION"),
		PersonalContextFields: e.List("AIGOV_PERSONAL_CONTEXT_FIELDS"),
		SubjectKeyCacheSize:   e.Int("AIGOV_SUBJECT_KEY_CACHE_SIZE"),
	}
	d, urls, fromFile := oidcfile.Load(e, "AIGOV_OIDC_ISSUERS is required (a comma-separated list of trusted issuer URLs), or AIGOV_OIDC_CONFIG (a file)")
	switch {
	case fromFile:
		issuers, err := issuersOf(d)
		if err != nil {
			e.Fail("AIGOV_OIDC_CONFIG: %w", err)
		}
		cfg.Issuers = issuers
	case len(urls) > 0:
		aud := e.String("AIGOV_OIDC_AUDIENCE")
		for _, u := range urls {
			cfg.Issuers = append(cfg.Issuers, Issuer{URL: u, Audiences: []string{aud}})
		}
		// Issuer problems are reported here, with the variable's name,
		// rather than later by New.
		if err := validateIssuers(cfg.Issuers); err != nil {
			e.Fail("AIGOV_OIDC_ISSUERS: %w", err)
		}
	}
	if cfg.HTTPTimeout <= 0 {
		e.Fail("AIGOV_OIDC_HTTP_TIMEOUT must be above zero")
	}
	if cfg.KeysRefresh <= 0 {
		e.Fail("AIGOV_OIDC_KEYS_REFRESH must be above zero")
	}
	return cfg
}

// Validate checks a Config, reporting every violation.
func (c Config) Validate() error {
	var errs []error
	if len(c.Issuers) == 0 {
		errs = append(errs, errors.New("no trusted issuers"))
	}
	if err := validateIssuers(c.Issuers); err != nil {
		errs = append(errs, err)
	}
	if c.Workers < 1 {
		errs = append(errs, fmt.Errorf("workers %d must be at least 1", c.Workers))
	}
	if c.HTTPTimeout <= 0 {
		errs = append(errs, fmt.Errorf("http timeout %s must be above zero", c.HTTPTimeout))
	}
	if c.DiscoveryRetry < 0 || c.KeysRefresh < 0 || c.ClockSkew < 0 || c.MaxTokenBytes < 0 || c.RevocationsMax < 0 {
		errs = append(errs, errors.New("discovery retry, keys refresh, clock skew, max token bytes and revocations max must not be negative"))
	}
	// The bounds the declarations give the environment hold for a Config
	// built in code too (zero still means the default).
	if c.ClockSkew > MaxClockSkew {
		errs = append(errs, fmt.Errorf("clock skew %s is above %s", c.ClockSkew, MaxClockSkew))
	}
	if c.MaxTokenBytes != 0 && c.MaxTokenBytes < MinMaxTokenBytes {
		errs = append(errs, fmt.Errorf("max token bytes %d is below %d", c.MaxTokenBytes, MinMaxTokenBytes))
	}
	return errors.Join(errs...)
}

func validateIssuers(issuers []Issuer) error {
	var errs []error
	seen := make(map[string]bool, len(issuers))
	for _, is := range issuers {
		u, err := url.Parse(is.URL)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("issuer %q: %w", is.URL, err))
		case (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "":
			errs = append(errs, fmt.Errorf("issuer %q must be an absolute http(s) URL without query or fragment", is.URL))
		}
		if seen[is.URL] {
			errs = append(errs, fmt.Errorf("issuer %q is listed twice", is.URL))
		}
		seen[is.URL] = true
		if len(is.Audiences) == 0 || slices.Contains(is.Audiences, "") {
			errs = append(errs, fmt.Errorf("issuer %q needs at least one audience, none empty", is.URL))
		}
		if is.PrincipalType != "" && is.PrincipalType != schemas.PrincipalUser && is.PrincipalType != schemas.PrincipalWorkload {
			errs = append(errs, fmt.Errorf("issuer %q: principal type %q is neither %s nor %s", is.URL, is.PrincipalType, schemas.PrincipalUser, schemas.PrincipalWorkload))
		}
		for _, a := range is.Algorithms {
			if !asymmetricAlgs[a] {
				errs = append(errs, fmt.Errorf("issuer %q: algorithm %q is not an allowed asymmetric JWS algorithm", is.URL, a))
			}
		}
		for _, t := range is.TokenTypes {
			if normalizeTyp(t) == "logout+jwt" {
				errs = append(errs, fmt.Errorf("issuer %q: token type logout+jwt can never be a credential", is.URL))
			}
		}
		if _, err := parseTemplate(is.Claims.withDefaults().PrincipalID); err != nil {
			errs = append(errs, fmt.Errorf("issuer %q: principal id: %w", is.URL, err))
		}
		for k, vals := range is.Require {
			if len(vals) == 0 {
				errs = append(errs, fmt.Errorf("issuer %q: require %q lists no values", is.URL, k))
			}
			if _, ok := is.Claims.Attributes[k]; !ok {
				errs = append(errs, fmt.Errorf("issuer %q: require names %q, which is not a mapped attribute", is.URL, k))
			}
		}
	}
	return errors.Join(errs...)
}

// normalizeTyp compares typ values as RFC 7515 4.1.9 asks: without case,
// and with application/ implied.
func normalizeTyp(t string) string {
	t = strings.ToLower(t)
	return strings.TrimPrefix(t, "application/")
}

func (c Config) withDefaults() Config {
	if c.DiscoveryRetry == 0 {
		c.DiscoveryRetry = DefaultDiscoveryRetry
	}
	if c.KeysRefresh == 0 {
		c.KeysRefresh = DefaultKeysRefresh
	}
	if c.ClockSkew == 0 {
		c.ClockSkew = DefaultClockSkew
	}
	if c.CacheSize == 0 {
		c.CacheSize = DefaultCacheSize
	}
	if c.MaxTokenBytes == 0 {
		c.MaxTokenBytes = DefaultMaxTokenBytes
	}
	return c
}
