package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// maxJWKSBytes bounds a JWKS response; real ones are a few KB.
const maxJWKSBytes = 1 << 20

// errKeysUnavailable means the issuer's keys could not be fetched, so the
// token can be neither accepted nor called forged.
var errKeysUnavailable = errors.New("signing keys unavailable")

// errNoKey means no published key verifies the signature.
var errNoKey = errors.New("no published key verifies the signature")

// keySet is an oidc.KeySet over an issuer's JWKS. It replaces go-oidc's
// RemoteKeySet, which refetches on every signature failure (so each forged
// token would cost the IdP a request) and never expires keys. Here:
//   - a known kid whose signature fails is a bad signature, with no fetch;
//   - an unknown kid triggers a refetch at most once per minRefresh;
//   - keys older than maxAge are refetched, and kept if that fails, so an
//     IdP outage does not fail requests signed with keys already known.
type keySet struct {
	url        string
	client     *http.Client
	algs       []jose.SignatureAlgorithm
	minRefresh time.Duration
	maxAge     time.Duration
	now        func() time.Time

	mu        sync.Mutex
	keys      []jose.JSONWebKey
	fetchedAt time.Time     // last successful fetch
	triedAt   time.Time     // last attempt, successful or not
	lastErr   error         // outcome of the last attempt
	inflight  chan struct{} // closed when the running fetch ends
}

// sigResultKey carries a *sigResult through go-oidc's Verify, which
// flattens KeySet errors into strings; the typed error comes back this way.
type sigResultKey struct{}

type sigResult struct{ err error }

// VerifySignature implements oidc.KeySet.
func (k *keySet) VerifySignature(ctx context.Context, raw string) ([]byte, error) {
	payload, err := k.verify(ctx, raw)
	if res, ok := ctx.Value(sigResultKey{}).(*sigResult); ok {
		res.err = err
	}
	return payload, err
}

func (k *keySet) verify(ctx context.Context, raw string) ([]byte, error) {
	// go-oidc has parsed the token with the same algorithm list already;
	// its parsed copy is not reachable from here, so parse again. The
	// compact parser skips ParseSigned's rune-by-rune whitespace strip
	// (bearer tokens hold no whitespace), which is most of a parse's cost.
	jws, err := jose.ParseSignedCompact(raw, k.algs)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoKey, err)
	}
	if len(jws.Signatures) != 1 {
		return nil, fmt.Errorf("%w: want exactly one signature", errNoKey)
	}
	kid := jws.Signatures[0].Header.KeyID
	keys, fetchErr := k.keysFor(ctx, kid)
	for i := range keys {
		if kid != "" && keys[i].KeyID != kid {
			continue
		}
		if payload, err := jws.Verify(&keys[i]); err == nil {
			return payload, nil
		}
	}
	if fetchErr != nil {
		return nil, fmt.Errorf("%w: %w", errKeysUnavailable, fetchErr)
	}
	return nil, errNoKey
}

// keysFor returns the keys to try for kid, refreshing first when there are
// none, they are stale, or kid is unknown, within the refresh rate limit.
// The error is that of the fetch, if one was needed and failed.
func (k *keySet) keysFor(ctx context.Context, kid string) ([]jose.JSONWebKey, error) {
	k.mu.Lock()
	for {
		now := k.now()
		need := len(k.keys) == 0 || now.Sub(k.fetchedAt) > k.maxAge || (kid != "" && !hasKid(k.keys, kid))
		if !need {
			keys := k.keys
			k.mu.Unlock()
			return keys, nil
		}
		if k.inflight != nil {
			if usable(k.keys, kid) {
				// A refresh of stale keys is running; the keys at hand
				// still serve this kid, so do not queue behind the fetch.
				keys := k.keys
				k.mu.Unlock()
				return keys, nil
			}
			// Someone is fetching: wait for it rather than fetch twice.
			done := k.inflight
			k.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			k.mu.Lock()
			keys, err := k.keys, k.lastErr
			k.mu.Unlock()
			return keys, err
		}
		if !k.triedAt.IsZero() && now.Sub(k.triedAt) < k.minRefresh {
			keys, err := k.keys, k.lastErr
			k.mu.Unlock()
			return keys, err
		}
		k.inflight = make(chan struct{})
		k.triedAt = now
		k.mu.Unlock()

		keys, err := k.fetch(ctx)

		k.mu.Lock()
		k.lastErr = err
		if err == nil {
			k.keys, k.fetchedAt = keys, k.now()
		}
		close(k.inflight)
		k.inflight = nil
		// Loop once more: with fresh keys (or the rate limit now in force)
		// the checks above answer without another fetch.
	}
}

// usable reports whether keys hold a candidate for kid.
func usable(keys []jose.JSONWebKey, kid string) bool {
	if kid == "" {
		return len(keys) > 0
	}
	return hasKid(keys, kid)
}

func hasKid(keys []jose.JSONWebKey, kid string) bool {
	for i := range keys {
		if keys[i].KeyID == kid {
			return true
		}
	}
	return false
}

// fetch downloads the JWKS. It runs detached from the caller's context
// (bounded by the client's timeout) because other callers wait on it.
func (k *keySet) fetch(ctx context.Context) ([]jose.JSONWebKey, error) {
	req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), http.MethodGet, k.url, nil)
	if err != nil {
		return nil, fmt.Errorf("jwks request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch jwks: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read jwks: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch jwks: status %s", resp.Status)
	}
	if len(body) > maxJWKSBytes {
		return nil, fmt.Errorf("jwks larger than %d bytes", maxJWKSBytes)
	}
	keys, err := parseJWKS(body)
	if err != nil {
		return nil, err
	}
	if len(keys) == 0 {
		return nil, errors.New("jwks has no usable signing keys")
	}
	return keys, nil
}

// parseJWKS keeps the public signing keys go-jose understands and skips
// the rest, as RFC 7517 §5 asks, instead of failing the whole set.
func parseJWKS(body []byte) ([]jose.JSONWebKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(body, &set); err != nil {
		return nil, fmt.Errorf("decode jwks: %w", err)
	}
	var keys []jose.JSONWebKey
	for _, raw := range set.Keys {
		var jwk jose.JSONWebKey
		if err := json.Unmarshal(raw, &jwk); err != nil {
			continue
		}
		if !jwk.IsPublic() || (jwk.Use != "" && jwk.Use != "sig") {
			continue
		}
		keys = append(keys, jwk)
	}
	return keys, nil
}
