package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// maxJWKSBytes bounds a JWKS response; real ones are a few KB.
const maxJWKSBytes = 1 << 20

// maxUnknownKids bounds the negative cache of kids the JWKS lacked.
const maxUnknownKids = 4096

// unknownKidTTL is how long a kid the freshly fetched JWKS lacked is
// answered unknown_key without another fetch.
const unknownKidTTL = time.Minute

// keySnapshot is an immutable view of an issuer's keys, swapped whole on
// refresh so that readers (every cache hit) take no lock.
type keySnapshot struct {
	keys []jose.JSONWebKey
	kids map[string]bool
}

// keySet is an issuer's JWKS. Unlike go-oidc's RemoteKeySet it
//   - refetches on an unknown kid at most once per minRefresh, and answers
//     a kid the fresh JWKS lacked from a bounded negative cache, so a flood
//     of random kids is not a flood of fetches;
//   - is refreshed on a schedule (Authenticator.Run), so a key the IdP
//     removed stops verifying, cached tokens included;
//   - keeps its keys when a fetch fails, so an IdP outage does not fail
//     tokens signed with keys already known.
type keySet struct {
	url        string
	client     *http.Client
	minRefresh time.Duration
	now        func() time.Time

	snap atomic.Pointer[keySnapshot]

	mu       sync.Mutex
	triedAt  time.Time            // last attempt, successful or not
	lastErr  error                // outcome of the last attempt
	inflight chan struct{}        // closed when the running fetch ends
	unknown  map[string]time.Time // kid -> when a fresh JWKS lacked it
}

// has reports whether kid is among the keys currently published. A token
// verified with a key that is no longer published is no longer trusted.
func (k *keySet) has(kid string) bool {
	s := k.snap.Load()
	return s != nil && s.kids[kid]
}

// candidates returns the keys that may have signed a token with kid,
// fetching the JWKS first when there are none or kid is unknown, within
// the rate limit. fetchErr is the error of a fetch that was needed and
// failed (or of the last one, inside the rate limit).
func (k *keySet) candidates(ctx context.Context, kid string) (keys []jose.JSONWebKey, fetchErr error) {
	if s := k.snap.Load(); s != nil && (kid == "" || s.kids[kid]) {
		return match(s, kid), nil
	}
	k.mu.Lock()
	for attempt := 0; ; attempt++ {
		s := k.snap.Load()
		if s != nil && (kid == "" || s.kids[kid]) {
			k.mu.Unlock()
			return match(s, kid), nil
		}
		now := k.now()
		if at, ok := k.unknown[kid]; ok && s != nil && now.Sub(at) < unknownKidTTL {
			k.mu.Unlock()
			return nil, nil
		}
		if attempt > 0 {
			// A fetch ended (ours or another's) and the kid is still
			// missing: remember it if the fetch succeeded.
			err := k.lastErr
			if err == nil && kid != "" {
				if k.unknown == nil || len(k.unknown) >= maxUnknownKids {
					k.unknown = make(map[string]time.Time)
				}
				k.unknown[kid] = now
			}
			k.mu.Unlock()
			return nil, err
		}
		if done := k.inflight; done != nil {
			k.mu.Unlock()
			select {
			case <-done:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			k.mu.Lock()
			continue
		}
		if !k.triedAt.IsZero() && now.Sub(k.triedAt) < k.minRefresh {
			err := k.lastErr
			k.mu.Unlock()
			return nil, err
		}
		k.mu.Unlock()
		k.refresh(ctx)
		k.mu.Lock()
	}
}

// match returns the keys to try for kid; without a kid, every key.
func match(s *keySnapshot, kid string) []jose.JSONWebKey {
	if kid == "" {
		return s.keys
	}
	for i := range s.keys {
		if s.keys[i].KeyID == kid {
			return s.keys[i : i+1]
		}
	}
	return nil
}

// refresh fetches the JWKS once, or waits for the fetch already running,
// and installs the keys on success. It returns the fetch's error.
func (k *keySet) refresh(ctx context.Context) error {
	k.mu.Lock()
	if done := k.inflight; done != nil {
		k.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
		k.mu.Lock()
		defer k.mu.Unlock()
		return k.lastErr
	}
	done := make(chan struct{})
	k.inflight = done
	k.triedAt = k.now()
	k.mu.Unlock()

	keys, err := k.fetch(ctx)

	k.mu.Lock()
	defer k.mu.Unlock()
	k.lastErr = err
	if err == nil {
		s := &keySnapshot{keys: keys, kids: make(map[string]bool, len(keys))}
		for _, key := range keys {
			s.kids[key.KeyID] = true
		}
		k.snap.Store(s)
		clear(k.unknown)
	}
	close(done)
	k.inflight = nil
	return err
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

// maxJWKSKeys bounds how many keys of one JWKS are kept (and tried for a
// token without kid).
const maxJWKSKeys = 32

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
		if len(keys) == maxJWKSKeys {
			break
		}
	}
	return keys, nil
}
