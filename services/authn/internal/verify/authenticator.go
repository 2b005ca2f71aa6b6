package verify

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"
	"unsafe"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
)

// Identity is what a verified bearer token proves. Its slices and maps are
// shared with the verification cache: read them, never modify them.
type Identity struct {
	Principal  schemas.Principal
	SessionKey string
	// ReplayKey is set when the token's issuer has replay protection on:
	// the key under which its jti is recorded as used (hex SHA-256 of
	// issuer and jti).
	ReplayKey string
}

// Authenticator verifies bearer tokens against the trusted issuers. It holds
// no NATS state, so it can be measured and reused on its own; revocation
// and replay checks, which need the KV store, are the Verifier's.
type Authenticator struct {
	issuers  map[string]*issuer
	cache    *cache
	maxBytes int
	refresh  time.Duration
	log      zerolog.Logger
	now      func() time.Time
}

// NewAuthenticator builds an authenticator for cfg. No network is used: each
// issuer is discovered on the first token that names it, or by Run.
func NewAuthenticator(cfg Config, log zerolog.Logger) (*Authenticator, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("authn config: %w", err)
	}
	cfg = cfg.withDefaults()
	// One client for discovery and JWKS, never http.DefaultClient: every
	// call to an IdP must be bounded, and must not share state with the
	// rest of the process.
	transport := http.DefaultTransport.(*http.Transport).Clone()
	client := &http.Client{Timeout: cfg.HTTPTimeout, Transport: transport}
	a := &Authenticator{
		issuers:  make(map[string]*issuer, len(cfg.Issuers)),
		cache:    newCache(cfg.CacheSize),
		maxBytes: cfg.MaxTokenBytes,
		refresh:  cfg.KeysRefresh,
		log:      log,
		now:      time.Now,
	}
	for _, ic := range cfg.Issuers {
		ic.Claims = ic.Claims.withDefaults()
		tmpl, err := parseTemplate(ic.Claims.PrincipalID)
		if err != nil {
			return nil, fmt.Errorf("authn config: issuer %q: %w", ic.URL, err)
		}
		ic.tmpl = tmpl
		a.issuers[ic.URL] = &issuer{
			cfg:    ic,
			client: client,
			retry:  cfg.DiscoveryRetry,
			skew:   cfg.ClockSkew,
			now:    func() time.Time { return a.now() },
			log:    log,
		}
	}
	return a, nil
}

// Verify checks a raw bearer token. Every rejection is a *Denial; the
// token is never part of its reason. Verify does not consult revocations
// or replays: the caller does, on every request, cached or not.
func (a *Authenticator) Verify(ctx context.Context, raw string) (Identity, error) {
	if len(raw) > a.maxBytes {
		return Identity{}, deny(schemas.CodeTokenTooLarge, "token is %d bytes; at most %d are accepted", len(raw), a.maxBytes)
	}
	now := a.now()
	// Hash the string's bytes in place: sha256 only reads them, and a copy
	// of a 1-2 KB token is a measurable share of a cache hit.
	key := sha256.Sum256(unsafe.Slice(unsafe.StringData(raw), len(raw)))
	if e := a.cache.get(&key, now); e != nil {
		return e.id, nil
	}
	t, d := parseToken(raw)
	if d != nil {
		return Identity{}, d
	}
	is, ok := a.issuers[t.iss]
	if !ok {
		// Refused before any network: an attacker cannot make aigov fetch
		// from a URL of their choosing.
		return Identity{}, deny(schemas.CodeUntrustedIssuer, "issuer %s is not trusted", quoteTrunc(t.iss, maxReasonIssuer))
	}
	if d := is.precheck(t); d != nil {
		return Identity{}, d
	}
	disc, err := is.get(ctx)
	if err != nil {
		return Identity{}, deny(schemas.CodeIssuerUnavailable, "issuer %q could not be discovered; retried after %s", t.iss, is.retry)
	}
	kid, d := is.verifySignature(ctx, t, disc)
	if d != nil {
		return Identity{}, d
	}
	if d := is.checkClaims(t, now); d != nil {
		return Identity{}, d
	}
	p, err := principal(t, &is.cfg)
	if err != nil {
		return Identity{}, deny(schemas.CodeMalformedToken, "the token's claims are unusable: %v", err)
	}
	if d := is.checkPrincipal(&p); d != nil {
		return Identity{}, d
	}
	id := Identity{
		Principal:  p,
		SessionKey: schemas.SessionKey(p),
	}
	if is.cfg.ReplayProtection {
		sum := sha256.Sum256([]byte(p.Issuer + "\x00" + p.TokenID))
		id.ReplayKey = hex.EncodeToString(sum[:])
	}
	a.cache.put(&key, &cacheEntry{id: id, exp: p.ExpiresAt, issuer: is, keys: disc.keys, kid: kid}, now)
	return id, nil
}

// Run discovers every issuer and fetches its keys concurrently, then
// refetches every discovered issuer's keys each KeysRefresh, and retries
// discovery of the others, until ctx ends. A down IdP neither blocks
// start-up nor the other issuers.
func (a *Authenticator) Run(ctx context.Context) {
	a.Warm(ctx)
	t := time.NewTicker(a.refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		var wg sync.WaitGroup
		for _, is := range a.issuers {
			wg.Go(func() {
				if d := is.discovered(); d != nil {
					is.refreshKeys(ctx, d)
				} else {
					is.warm(ctx)
				}
			})
		}
		wg.Wait() // bounded by the HTTP timeout
	}
}

// Warm discovers every issuer concurrently and returns when all attempts
// have ended. Failures are logged by the issuer and retried on demand.
func (a *Authenticator) Warm(ctx context.Context) {
	var wg sync.WaitGroup
	for _, is := range a.issuers {
		wg.Go(func() { is.warm(ctx) })
	}
	wg.Wait()
}

// IsDenial reports whether err is a deny rather than a transient failure.
func IsDenial(err error) (*Denial, bool) {
	var d *Denial
	ok := errors.As(err, &d)
	return d, ok
}
