package verify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
)

// clockSkew is how far in the future a token's iat may be; go-oidc allows
// the same for nbf but does not check iat at all.
const clockSkew = 5 * time.Minute

// Identity is what a verified bearer token proves.
type Identity struct {
	Principal  schemas.Principal
	SessionKey string
}

// Authenticator verifies bearer tokens against the trusted issuers. It holds
// no NATS state, so it can be measured and reused on its own.
type Authenticator struct {
	issuers map[string]*issuer
	now     func() time.Time
}

// NewAuthenticator builds an authenticator for cfg. No network is used: each
// issuer is discovered on the first token that names it.
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
	a := &Authenticator{issuers: make(map[string]*issuer, len(cfg.Issuers)), now: time.Now}
	for _, ic := range cfg.Issuers {
		ic.Claims = ic.Claims.withDefaults()
		a.issuers[ic.URL] = &issuer{
			cfg:        ic,
			client:     client,
			retry:      cfg.DiscoveryRetry,
			keysMaxAge: cfg.KeysMaxAge,
			now:        func() time.Time { return a.now() },
			log:        log,
		}
	}
	return a, nil
}

// Verify checks a raw bearer token. Every rejection is a *Denial; the
// token is never part of its reason. Verify does not consult revocations.
func (a *Authenticator) Verify(ctx context.Context, token string) (Identity, error) {
	iss, d := peekIssuer(token)
	if d != nil {
		return Identity{}, d
	}
	is, ok := a.issuers[iss]
	if !ok {
		// Refused before any network: an attacker cannot make aigov fetch
		// from a URL of their choosing.
		return Identity{}, deny(schemas.CodeUntrustedIssuer, "issuer %s is not trusted", quoteTrunc(iss, maxReasonIssuer))
	}
	v, err := is.get(ctx)
	if err != nil {
		return Identity{}, deny(schemas.CodeIssuerUnavailable, "issuer %q could not be discovered; retried after %s", iss, is.retry)
	}
	res := &sigResult{}
	tok, err := v.Verify(context.WithValue(ctx, sigResultKey{}, res), token)
	if d := classify(err, res.err, is.cfg.Audience); d != nil {
		return Identity{}, d
	}
	if tok.IssuedAt.After(a.now().Add(clockSkew)) {
		return Identity{}, deny(schemas.CodeTokenNotYetValid, "the token's iat is more than %s in the future", clockSkew)
	}
	p, err := principal(tok, is.cfg.Claims)
	if err != nil {
		return Identity{}, deny(schemas.CodeMalformedToken, "the token's claims are unusable: %v", err)
	}
	return Identity{
		Principal:  p,
		SessionKey: schemas.SessionKey(p.Issuer, p.SessionID, p.Subject, p.AuthTime),
	}, nil
}

// Warm discovers every issuer concurrently and returns when all attempts
// have ended. Failures are logged by the issuer and retried on demand, so a
// down IdP neither blocks start-up nor the other issuers.
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
