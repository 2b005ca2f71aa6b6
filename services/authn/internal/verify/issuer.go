package verify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
)

// asymmetricAlgs are the algorithms a token may be signed with. HS* and
// none are absent whatever discovery or configuration says: a
// shared-secret or unsigned token proves nothing about who issued it.
var asymmetricAlgs = map[string]bool{
	oidc.RS256: true, oidc.RS384: true, oidc.RS512: true,
	oidc.ES256: true, oidc.ES384: true, oidc.ES512: true,
	oidc.PS256: true, oidc.PS384: true, oidc.PS512: true,
	oidc.EdDSA: true,
}

// discovered is what discovery yields: the issuer's keys and the
// algorithms its tokens may use.
type discovered struct {
	keys *keySet
	algs []string
}

// issuer is one trusted issuer, discovered lazily: an IdP that is down at
// start-up costs only its own requests, and is retried on a later request
// at most once per retry interval.
type issuer struct {
	cfg    Issuer
	client *http.Client
	retry  time.Duration
	skew   time.Duration
	now    func() time.Time
	log    zerolog.Logger

	mu       sync.Mutex
	disc     *discovered
	triedAt  time.Time
	lastErr  error
	inflight chan struct{}
}

// errDiscovery wraps every discovery failure.
var errDiscovery = errors.New("oidc discovery failed")

// get returns the issuer's keys, discovering it first if needed. Callers
// arriving while discovery runs wait for it; within the retry interval after
// a failure they get that failure without a new attempt.
func (is *issuer) get(ctx context.Context) (*discovered, error) {
	is.mu.Lock()
	if d := is.disc; d != nil {
		is.mu.Unlock()
		return d, nil
	}
	if done := is.inflight; done != nil {
		is.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, fmt.Errorf("%w: waiting for discovery: %w", errDiscovery, ctx.Err())
		}
		is.mu.Lock()
		defer is.mu.Unlock()
		if is.disc != nil {
			return is.disc, nil
		}
		return nil, is.lastErr
	}
	if !is.triedAt.IsZero() && is.now().Sub(is.triedAt) < is.retry {
		err := is.lastErr
		is.mu.Unlock()
		return nil, err
	}
	done := make(chan struct{})
	is.inflight = done
	is.triedAt = is.now()
	is.mu.Unlock()

	d, err := is.discover(ctx)

	is.mu.Lock()
	defer is.mu.Unlock()
	is.disc, is.lastErr = d, err
	close(done)
	is.inflight = nil
	if err != nil {
		is.log.Warn().Err(err).Str("issuer", is.cfg.URL).Dur("retry_after", is.retry).Msg("oidc discovery failed")
		return nil, err
	}
	is.log.Info().Str("issuer", is.cfg.URL).Strs("algorithms", d.algs).Msg("oidc issuer discovered")
	return d, nil
}

// discovered returns the discovery result if there is one, without I/O.
func (is *issuer) discovered() *discovered {
	is.mu.Lock()
	defer is.mu.Unlock()
	return is.disc
}

// discover fetches the discovery document (go-oidc checks that it names
// this exact issuer). It runs detached from the caller's context, bounded
// by the HTTP client's timeout, because other callers wait on its result.
func (is *issuer) discover(ctx context.Context) (*discovered, error) {
	dctx := oidc.ClientContext(context.WithoutCancel(ctx), is.client)
	p, err := oidc.NewProvider(dctx, is.cfg.URL)
	if err != nil {
		var mismatch *oidc.IssuerMismatchError
		if errors.As(err, &mismatch) {
			return nil, fmt.Errorf("%w: discovery document names issuer %q, configured %q", errDiscovery, mismatch.Discovered, mismatch.Provided)
		}
		return nil, fmt.Errorf("%w: %w", errDiscovery, err)
	}
	var meta struct {
		JWKSURL string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := p.Claims(&meta); err != nil {
		return nil, fmt.Errorf("%w: read discovery document: %w", errDiscovery, err)
	}
	if meta.JWKSURL == "" {
		return nil, fmt.Errorf("%w: discovery document has no jwks_uri", errDiscovery)
	}
	algs := is.cfg.Algorithms
	if len(algs) == 0 {
		algs = allowedAlgs(meta.Algs)
	}
	return &discovered{
		keys: &keySet{url: meta.JWKSURL, client: is.client, minRefresh: is.retry, now: is.now},
		algs: algs,
	}, nil
}

// warm discovers the issuer and fetches its keys, so that the first
// request pays for neither.
func (is *issuer) warm(ctx context.Context) {
	d, err := is.get(ctx)
	if err != nil {
		return
	}
	is.refreshKeys(ctx, d)
}

// refreshKeys refetches the JWKS; a failure keeps the known keys.
func (is *issuer) refreshKeys(ctx context.Context, d *discovered) {
	if err := d.keys.refresh(ctx); err != nil {
		is.log.Warn().Err(err).Str("issuer", is.cfg.URL).Msg("oidc signing keys could not be refreshed; known keys stay trusted")
	}
}

// allowedAlgs keeps the advertised algorithms aigov accepts; an issuer that
// advertises none gets RS256, the one OIDC makes mandatory.
func allowedAlgs(advertised []string) []string {
	var out []string
	for _, a := range advertised {
		if asymmetricAlgs[a] {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		out = []string{oidc.RS256}
	}
	return out
}

// precheck refuses, before any network, what no key could make
// acceptable: refused headers, disallowed algorithms, token types that
// are not access credentials.
func (is *issuer) precheck(t *token) *Denial {
	h := &t.header
	switch {
	case h.Crit != nil:
		return deny(schemas.CodeUnsupportedHeader, "the token's header has crit; no critical extension is supported")
	case h.JKU != nil || h.X5U != nil || h.JWK != nil || h.X5C != nil:
		return deny(schemas.CodeUnsupportedHeader, "the token's header names its own key (jku, x5u, jwk or x5c); keys come only from the issuer's JWKS")
	case !asymmetricAlgs[h.Alg]:
		return deny(schemas.CodeDisallowedAlgorithm, "alg %s is not allowed", quoteTrunc(h.Alg, 20))
	}
	if _, ok := t.claims["events"]; ok {
		return deny(schemas.CodeWrongTokenType, "the token has an events claim (a logout or security event token), not an access credential")
	}
	if h.Typ != "" {
		typ := normalizeTyp(h.Typ)
		ok := typ == "jwt" && len(is.cfg.TokenTypes) == 0
		for _, want := range is.cfg.TokenTypes {
			ok = ok || normalizeTyp(want) == typ
		}
		if !ok || typ == "logout+jwt" {
			return deny(schemas.CodeWrongTokenType, "token type %s is not accepted from this issuer", quoteTrunc(h.Typ, 40))
		}
	}
	return nil
}

// verifySignature checks the signature with the issuer's keys and returns
// the kid of the key that verified it.
func (is *issuer) verifySignature(ctx context.Context, t *token, d *discovered) (string, *Denial) {
	alg := t.header.Alg
	if !slices.Contains(d.algs, alg) {
		return "", deny(schemas.CodeDisallowedAlgorithm, "alg %s is not allowed for this issuer (allowed: %s)", quoteTrunc(alg, 20), strings.Join(d.algs, ", "))
	}
	kid := t.header.Kid
	keys, fetchErr := d.keys.candidates(ctx, kid)
	if len(keys) == 0 {
		if fetchErr != nil {
			return "", deny(schemas.CodeJWKSUnavailable, "the issuer's signing keys could not be fetched and none known matches kid %s", quoteTrunc(kid, 80))
		}
		return "", deny(schemas.CodeUnknownKey, "kid %s is not among the issuer's published keys", quoteTrunc(kid, 80))
	}
	for i := range keys {
		k := &keys[i]
		if k.Algorithm != "" && k.Algorithm != alg {
			continue
		}
		if verifyJWS(alg, k.Key, t.signingInput, t.sig) {
			return k.KeyID, nil
		}
	}
	return "", deny(schemas.CodeBadSignature, "the signature does not verify with the issuer's published key(s)")
}

// checkClaims applies the checks on a token whose signature verified.
func (is *issuer) checkClaims(t *token, now time.Time) *Denial {
	c := claimReader{raw: t.claims}
	exp, nbf, iat := c.time("exp"), c.time("nbf"), c.time("iat")
	aud := c.list("aud")
	azp, tid := c.str("azp"), c.str("tid")
	if c.err != nil {
		return deny(schemas.CodeMalformedToken, "the token's claims are unusable: %v", c.err)
	}
	switch {
	case exp == nil:
		return deny(schemas.CodeTokenExpired, "the token has no exp")
	case !now.Before(*exp):
		return deny(schemas.CodeTokenExpired, "the token expired at %s", exp.Format(time.RFC3339))
	case nbf != nil && nbf.After(now.Add(is.skew)):
		return deny(schemas.CodeTokenNotYetValid, "the token's nbf %s is more than %s ahead", nbf.Format(time.RFC3339), is.skew)
	case iat != nil && iat.After(now.Add(is.skew)):
		return deny(schemas.CodeIATInFuture, "the token's iat %s is more than %s ahead", iat.Format(time.RFC3339), is.skew)
	case !slices.ContainsFunc(aud, func(a string) bool { return slices.Contains(is.cfg.Audiences, a) }):
		return deny(schemas.CodeWrongAudience, "the token's audience does not include %s", strings.Join(is.cfg.Audiences, " or "))
	}
	if len(is.cfg.AuthorizedParties) > 0 {
		if !slices.Contains(is.cfg.AuthorizedParties, azp) {
			return deny(schemas.CodeWrongAZP, "the token's azp %s is not an authorized party", quoteTrunc(azp, 80))
		}
	} else if len(aud) > 1 && !slices.Contains(is.cfg.Audiences, azp) {
		return deny(schemas.CodeWrongAZP, "the token has %d audiences and its azp %s is not an accepted client", len(aud), quoteTrunc(azp, 80))
	}
	if is.cfg.Tenant != "" && tid != is.cfg.Tenant {
		return deny(schemas.CodeWrongTenant, "the token's tid %s is not the pinned tenant", quoteTrunc(tid, 80))
	}
	return nil
}

// checkPrincipal applies the configuration's checks on the mapped
// principal: preset consistency, attribute pins, replay's need of a jti.
func (is *issuer) checkPrincipal(p *schemas.Principal) *Denial {
	if is.cfg.Preset == PresetKubernetes {
		ns, sa := p.Attributes["namespace"], p.Attributes["serviceaccount"]
		if want := "system:serviceaccount:" + ns + ":" + sa; ns == "" || sa == "" || p.Subject != want {
			return deny(schemas.CodeMalformedToken, "a Kubernetes service account token's sub must be system:serviceaccount:<namespace>:<name> matching its kubernetes.io claim")
		}
	}
	for _, name := range sortedKeys(is.cfg.Require) {
		v, ok := p.Attributes[name]
		if !ok || !slices.Contains(is.cfg.Require[name], v) {
			return deny(schemas.CodeWorkloadNotAllowed, "attribute %s %s is not among the values this issuer is pinned to", name, quoteTrunc(v, 80))
		}
	}
	if is.cfg.ReplayProtection && p.TokenID == "" {
		return deny(schemas.CodeMalformedToken, "the issuer has replay protection on and the token has no jti")
	}
	return nil
}
