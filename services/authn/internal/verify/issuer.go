package verify

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	"github.com/rs/zerolog"
)

// asymmetricAlgs are the algorithms a token may be signed with. HS* and
// none are absent whatever discovery advertises: a shared-secret or
// unsigned token proves nothing about who issued it.
var asymmetricAlgs = map[string]bool{
	oidc.RS256: true, oidc.RS384: true, oidc.RS512: true,
	oidc.ES256: true, oidc.ES384: true, oidc.ES512: true,
	oidc.PS256: true, oidc.PS384: true, oidc.PS512: true,
	oidc.EdDSA: true,
}

// issuer is one trusted issuer's verifier, discovered lazily: an IdP that is
// down at start-up costs only its own requests, and is retried on a later
// request at most once per retry interval.
type issuer struct {
	cfg        Issuer
	client     *http.Client
	retry      time.Duration
	keysMaxAge time.Duration
	now        func() time.Time
	log        zerolog.Logger

	mu       sync.Mutex
	verifier *oidc.IDTokenVerifier
	keys     *keySet // the verifier's, kept for warming
	triedAt  time.Time
	lastErr  error
	inflight chan struct{}
}

// errDiscovery wraps every discovery failure.
var errDiscovery = errors.New("oidc discovery failed")

// get returns the issuer's verifier, discovering it first if needed. Callers
// arriving while discovery runs wait for it; within the retry interval after
// a failure they get that failure without a new attempt.
func (is *issuer) get(ctx context.Context) (*oidc.IDTokenVerifier, error) {
	is.mu.Lock()
	if v := is.verifier; v != nil {
		is.mu.Unlock()
		return v, nil
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
		if is.verifier != nil {
			return is.verifier, nil
		}
		return nil, is.lastErr
	}
	if !is.triedAt.IsZero() && is.now().Sub(is.triedAt) < is.retry {
		err := is.lastErr
		is.mu.Unlock()
		return nil, err
	}
	is.inflight = make(chan struct{})
	is.triedAt = is.now()
	is.mu.Unlock()

	v, keys, err := is.discover(ctx)

	is.mu.Lock()
	defer is.mu.Unlock()
	is.verifier, is.keys, is.lastErr = v, keys, err
	close(is.inflight)
	is.inflight = nil
	if err != nil {
		is.log.Warn().Err(err).Str("issuer", is.cfg.URL).Dur("retry_after", is.retry).Msg("oidc discovery failed")
		return nil, err
	}
	is.log.Info().Str("issuer", is.cfg.URL).Msg("oidc issuer discovered")
	return v, nil
}

// discover fetches the discovery document and builds the verifier. It runs
// detached from the caller's context, bounded by the HTTP client's timeout,
// because other callers wait on its result.
func (is *issuer) discover(ctx context.Context) (*oidc.IDTokenVerifier, *keySet, error) {
	dctx := oidc.ClientContext(context.WithoutCancel(ctx), is.client)
	p, err := oidc.NewProvider(dctx, is.cfg.URL)
	if err != nil {
		var mismatch *oidc.IssuerMismatchError
		if errors.As(err, &mismatch) {
			return nil, nil, fmt.Errorf("%w: discovery document names issuer %q, configured %q", errDiscovery, mismatch.Discovered, mismatch.Provided)
		}
		return nil, nil, fmt.Errorf("%w: %w", errDiscovery, err)
	}
	var meta struct {
		JWKSURL string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	if err := p.Claims(&meta); err != nil {
		return nil, nil, fmt.Errorf("%w: read discovery document: %w", errDiscovery, err)
	}
	if meta.JWKSURL == "" {
		return nil, nil, fmt.Errorf("%w: discovery document has no jwks_uri", errDiscovery)
	}
	algs := allowedAlgs(meta.Algs)
	joseAlgs := make([]jose.SignatureAlgorithm, len(algs))
	for i, a := range algs {
		joseAlgs[i] = jose.SignatureAlgorithm(a)
	}
	keys := &keySet{
		url:        meta.JWKSURL,
		client:     is.client,
		algs:       joseAlgs,
		minRefresh: is.retry,
		maxAge:     is.keysMaxAge,
		now:        is.now,
	}
	v := oidc.NewVerifier(is.cfg.URL, keys, &oidc.Config{
		ClientID:             is.cfg.Audience,
		SupportedSigningAlgs: algs,
		Now:                  is.now,
	})
	return v, keys, nil
}

// warm discovers the issuer and fetches its keys, so that the first
// request pays for neither.
func (is *issuer) warm(ctx context.Context) {
	if _, err := is.get(ctx); err != nil {
		return
	}
	is.mu.Lock()
	keys := is.keys
	is.mu.Unlock()
	if _, err := keys.keysFor(ctx, ""); err != nil {
		is.log.Warn().Err(err).Str("issuer", is.cfg.URL).Msg("oidc signing keys unavailable")
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
