package verify

import (
	"errors"
	"fmt"
	"net/url"
	"time"

	"github.com/aigov/aigov/services/runtime"
)

// Config is the authn service's configuration.
type Config struct {
	// Issuers are the trusted OIDC issuers. Today they come from
	// AIGOV_OIDC_ISSUERS with one shared audience; a config file can later
	// give each its own audience and claim names without touching the
	// verification code, which only ever reads this list.
	Issuers []Issuer
	// Workers is how many requests are verified at once (AIGOV_AUTHN_WORKERS).
	Workers int
	// HTTPTimeout bounds each discovery and JWKS request
	// (AIGOV_OIDC_HTTP_TIMEOUT).
	HTTPTimeout time.Duration
	// DiscoveryRetry is the least time between two discovery or JWKS
	// attempts for one issuer, so a down IdP is not hammered by every
	// request (and by every forged kid). Zero means DefaultDiscoveryRetry.
	DiscoveryRetry time.Duration
	// KeysMaxAge is how long fetched signing keys are trusted before they
	// are refetched, so a key the IdP withdrew stops verifying. Zero means
	// DefaultKeysMaxAge.
	KeysMaxAge time.Duration
}

// Issuer is one trusted OIDC issuer and how its tokens are read.
type Issuer struct {
	// URL is the issuer identifier, compared byte for byte with a token's
	// iss and with the discovery document's issuer (a trailing slash
	// differs).
	URL string
	// Audience must be among the token's aud.
	Audience string
	// Claims names the claims that carry identity attributes.
	Claims ClaimNames
}

// ClaimNames maps identity attributes to claim names, because IdPs
// disagree (Entra sends roles, Okta groups, Keycloak realm_access...).
// Empty fields take the DefaultClaimNames value.
type ClaimNames struct {
	// Groups is an array of strings (a single string is taken as one group).
	Groups string
	// Email and Name are strings.
	Email string
	Name  string
}

// Defaults for Config.
const (
	DefaultAudience       = "aigov"
	DefaultWorkers        = 32
	DefaultHTTPTimeout    = 5 * time.Second
	DefaultDiscoveryRetry = 5 * time.Second
	DefaultKeysMaxAge     = time.Hour
)

// DefaultClaimNames are the standard OIDC claim names plus "groups".
var DefaultClaimNames = ClaimNames{Groups: "groups", Email: "email", Name: "name"}

// withDefaults fills empty claim names.
func (c ClaimNames) withDefaults() ClaimNames {
	if c.Groups == "" {
		c.Groups = DefaultClaimNames.Groups
	}
	if c.Email == "" {
		c.Email = DefaultClaimNames.Email
	}
	if c.Name == "" {
		c.Name = DefaultClaimNames.Name
	}
	return c
}

// LoadConfig reads the authn variables; violations are recorded in e so
// that they are reported together with the common ones.
func LoadConfig(e *runtime.Env) Config {
	urls := e.List("AIGOV_OIDC_ISSUERS", nil)
	if len(urls) == 0 {
		e.Fail("AIGOV_OIDC_ISSUERS is required: a comma-separated list of trusted issuer URLs")
	}
	aud := e.String("AIGOV_OIDC_AUDIENCE", DefaultAudience)
	cfg := Config{
		Workers:     e.Int("AIGOV_AUTHN_WORKERS", DefaultWorkers, 1),
		HTTPTimeout: e.Duration("AIGOV_OIDC_HTTP_TIMEOUT", DefaultHTTPTimeout),
	}
	for _, u := range urls {
		cfg.Issuers = append(cfg.Issuers, Issuer{URL: u, Audience: aud})
	}
	if cfg.HTTPTimeout == 0 {
		e.Fail("AIGOV_OIDC_HTTP_TIMEOUT must be above zero")
	}
	// Issuer problems are reported here, with the variable's name, rather
	// than later by New.
	if len(urls) > 0 {
		if err := validateIssuers(cfg.Issuers); err != nil {
			e.Fail("AIGOV_OIDC_ISSUERS: %w", err)
		}
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
	if c.DiscoveryRetry < 0 || c.KeysMaxAge < 0 {
		errs = append(errs, errors.New("discovery retry and keys max age must not be negative"))
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
		if is.Audience == "" {
			errs = append(errs, fmt.Errorf("issuer %q has no audience", is.URL))
		}
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults() Config {
	if c.DiscoveryRetry == 0 {
		c.DiscoveryRetry = DefaultDiscoveryRetry
	}
	if c.KeysMaxAge == 0 {
		c.KeysMaxAge = DefaultKeysMaxAge
	}
	return c
}
