package verify

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
)

// signHeader signs payload (raw JSON text, so duplicates survive) under a
// hand-written header with RS256, for headers go-jose will not produce.
func signHeader(t *testing.T, key *rsa.PrivateKey, header, payload string) string {
	t.Helper()
	in := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
	sum := sha256.Sum256([]byte(in))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, sum[:])
	if err != nil {
		t.Fatal(err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func newAuthFor(t *testing.T, cfg Config) *Authenticator {
	t.Helper()
	if cfg.Workers == 0 {
		cfg.Workers = 1
	}
	if cfg.HTTPTimeout == 0 {
		cfg.HTTPTimeout = time.Second
	}
	a, err := NewAuthenticator(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TestHostileTokens is the catalogue of hostile tokens of issue 3, each
// against real discovery and JWKS over HTTP, each with its own code.
// Tokens that need claims no provider library issues are crafted here and
// signed with the keys the test issuers publish.
func TestHostileTokens(t *testing.T) {
	t.Parallel()
	ti := startIssuer(t)      // the issuer under attack
	other := startIssuer(t)   // another trusted issuer ("issuer B")
	tenant := startIssuer(t)  // a multi-tenant issuer pinned to tenant-a
	typed := startIssuer(t)   // accepts at+jwt access tokens
	azpOnly := startIssuer(t) // names its authorized parties
	a := newAuthFor(t, Config{Issuers: []Issuer{
		{URL: ti.srv.URL, Audiences: []string{"aigov"}},
		{URL: other.srv.URL, Audiences: []string{"aigov"}},
		{URL: tenant.srv.URL, Audiences: []string{"aigov"}, Tenant: "tenant-a"},
		{URL: typed.srv.URL, Audiences: []string{"aigov"}, TokenTypes: []string{"JWT", "at+jwt"}},
		{URL: azpOnly.srv.URL, Audiences: []string{"aigov"}, AuthorizedParties: []string{"ml-platform"}},
	}})
	rs := func(c map[string]any) string { return sign(t, jose.RS256, ti.key, ti.kid, c) }
	mod := func(f func(map[string]any)) map[string]any { return ti.claims(f) }
	hdr := func(extra map[string]any) string {
		h := map[string]any{"alg": "RS256", "kid": ti.kid, "typ": "JWT"}
		for k, v := range extra {
			h[k] = v
		}
		return mustJSON(h)
	}
	good := ti.claims(nil)
	goodJSON := mustJSON(good)
	withTyp := func(typ string, is *testIssuer) string {
		return signHeader(t, is.key, mustJSON(map[string]any{"alg": "RS256", "kid": is.kid, "typ": typ}), mustJSON(is.claims(nil)))
	}
	cases := []struct {
		name  string
		token string
		want  schemas.Code
	}{
		{"good RS256", rs(good), "verified"},
		{"good ES256", sign(t, jose.ES256, ti.ecKey, "e1", good), "verified"},
		{"alg none", b64(map[string]any{"alg": "none"}) + "." + b64(good) + ".", schemas.CodeDisallowedAlgorithm},
		{"HS256 signed with the RSA public key", sign(t, jose.HS256, []byte(b64(ti.key.PublicKey.N.Bytes())), ti.kid, good), schemas.CodeDisallowedAlgorithm},
		{"an asymmetric alg the issuer does not allow", sign(t, jose.RS512, ti.key, ti.kid, good), schemas.CodeDisallowedAlgorithm},
		{"expired", rs(mod(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Second).Unix() })), schemas.CodeTokenExpired},
		{"nbf ahead", rs(mod(func(c map[string]any) { c["nbf"] = time.Now().Add(10 * time.Minute).Unix() })), schemas.CodeTokenNotYetValid},
		{"iat far ahead", rs(mod(func(c map[string]any) { c["iat"] = time.Now().Add(10 * time.Minute).Unix() })), schemas.CodeIATInFuture},
		{"iat within the skew", rs(mod(func(c map[string]any) { c["iat"] = time.Now().Add(5 * time.Second).Unix() })), "verified"},
		{"wrong issuer", rs(mod(func(c map[string]any) { c["iss"] = "https://evil.example" })), schemas.CodeUntrustedIssuer},
		{"issuer with a trailing slash", rs(mod(func(c map[string]any) { c["iss"] = ti.srv.URL + "/" })), schemas.CodeUntrustedIssuer},
		{"wrong audience", rs(mod(func(c map[string]any) { c["aud"] = "other" })), schemas.CodeWrongAudience},
		{"several audiences, foreign azp", rs(mod(func(c map[string]any) { c["aud"] = []string{"aigov", "other"}; c["azp"] = "other" })), schemas.CodeWrongAZP},
		{"several audiences, no azp", rs(mod(func(c map[string]any) { c["aud"] = []string{"aigov", "other"} })), schemas.CodeWrongAZP},
		{"several audiences, azp is ours", rs(mod(func(c map[string]any) { c["aud"] = []string{"aigov", "other"}; c["azp"] = "aigov" })), "verified"},
		{"azp not an authorized party", sign(t, jose.RS256, azpOnly.key, azpOnly.kid, azpOnly.claims(func(c map[string]any) { c["azp"] = "someone" })), schemas.CodeWrongAZP},
		{"azp an authorized party", sign(t, jose.RS256, azpOnly.key, azpOnly.kid, azpOnly.claims(func(c map[string]any) { c["azp"] = "ml-platform" })), "verified"},
		{"unknown kid", sign(t, jose.RS256, ti.key, "nobody-knows", good), schemas.CodeUnknownKey},
		{"oversized", strings.Repeat("a", DefaultMaxTokenBytes+1), schemas.CodeTokenTooLarge},
		{"malformed base64", "eyJhbGciOiJSUzI1NiJ9.@@@." + strings.Split(rs(good), ".")[2], schemas.CodeMalformedToken},
		{"malformed JSON payload", b64(map[string]any{"alg": "RS256"}) + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":`)) + ".c2ln", schemas.CodeMalformedToken},
		{"malformed JSON header", base64.RawURLEncoding.EncodeToString([]byte("{")) + "." + b64(good) + ".c2ln", schemas.CodeMalformedToken},
		{"JWE five parts", "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d", schemas.CodeMalformedToken},
		{"crit header", signHeader(t, ti.key, hdr(map[string]any{"crit": []string{"exp"}, "exp": 1}), goodJSON), schemas.CodeUnsupportedHeader},
		{"jku elsewhere", signHeader(t, ti.key, hdr(map[string]any{"jku": "https://evil.example/jwks"}), goodJSON), schemas.CodeUnsupportedHeader},
		{"x5u elsewhere", signHeader(t, ti.key, hdr(map[string]any{"x5u": "https://evil.example/cert"}), goodJSON), schemas.CodeUnsupportedHeader},
		{"embedded jwk", signHeader(t, ti.key, hdr(map[string]any{"jwk": map[string]any{"kty": "RSA"}}), goodJSON), schemas.CodeUnsupportedHeader},
		{"logout token by typ", withTyp("logout+jwt", ti), schemas.CodeWrongTokenType},
		{"logout token by events claim", rs(mod(func(c map[string]any) {
			c["events"] = map[string]any{"http://schemas.openid.net/event/backchannel-logout": map[string]any{}}
		})), schemas.CodeWrongTokenType},
		{"at+jwt where not configured", withTyp("at+jwt", ti), schemas.CodeWrongTokenType},
		{"at+jwt where configured", withTyp("application/at+JWT", typed), "verified"},
		{"logout+jwt even where at+jwt is configured", withTyp("logout+jwt", typed), schemas.CodeWrongTokenType},
		{"duplicate claim", signHeader(t, ti.key, hdr(nil), strings.TrimSuffix(goodJSON, "}")+`,"sub":"admin"}`), schemas.CodeDuplicateClaims},
		{"case-variant claim", signHeader(t, ti.key, hdr(nil), strings.TrimSuffix(goodJSON, "}")+`,"SUB":"admin"}`), schemas.CodeDuplicateClaims},
		{"escaped duplicate claim", signHeader(t, ti.key, hdr(nil), strings.TrimSuffix(goodJSON, "}")+`,"s\u0075b":"admin"}`), schemas.CodeDuplicateClaims},
		{"duplicate in a nested claim", signHeader(t, ti.key, hdr(nil), strings.TrimSuffix(goodJSON, "}")+`,"realm_access":{"roles":["a"],"Roles":["admin"]}}`), schemas.CodeDuplicateClaims},
		{"duplicate header", signHeader(t, ti.key, `{"alg":"RS256","kid":"k1","alg":"none"}`, goodJSON), schemas.CodeDuplicateClaims},
		{"other tenant", sign(t, jose.RS256, tenant.key, tenant.kid, tenant.claims(func(c map[string]any) { c["tid"] = "tenant-b" })), schemas.CodeWrongTenant},
		{"no tenant", sign(t, jose.RS256, tenant.key, tenant.kid, tenant.claims(nil)), schemas.CodeWrongTenant},
		{"pinned tenant", sign(t, jose.RS256, tenant.key, tenant.kid, tenant.claims(func(c map[string]any) { c["tid"] = "tenant-a" })), "verified"},
		// Signed by A under A's kid, naming B: B's keys decide, and B
		// publishes the same kid name with another key.
		{"issuer A's token carrying issuer B's iss", rs(mod(func(c map[string]any) { c["iss"] = other.srv.URL })), schemas.CodeBadSignature},
		{"issuer A's token carrying B's iss under a kid B lacks", sign(t, jose.ES256, ti.ecKey, "a-only", mod(func(c map[string]any) { c["iss"] = other.srv.URL })), schemas.CodeUnknownKey},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := a.Verify(context.Background(), tc.token)
			if got := codeOf(err); got != tc.want {
				t.Fatalf("code = %s, want %s (err: %v)", got, tc.want, err)
			}
			if d, ok := IsDenial(err); ok && (d.Reason == "" || strings.Contains(d.Reason, tc.token)) {
				t.Fatalf("reason empty or contains the token: %q", d.Reason)
			}
		})
	}
}

// TestJWKSOutages: with the JWKS down or slower than the HTTP timeout,
// known keys keep verifying and an unknown kid fails closed with
// jwks_unavailable, within the timeout.
func TestJWKSOutages(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"down", "slow"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			ti := startIssuer(t)
			a := newAuthFor(t, Config{HTTPTimeout: 500 * time.Millisecond, DiscoveryRetry: 10 * time.Millisecond, CacheSize: -1,
				Issuers: []Issuer{{URL: ti.srv.URL, Audiences: []string{"aigov"}}}})
			ctx := context.Background()
			known := sign(t, jose.RS256, ti.key, ti.kid, ti.claims(nil))
			if _, err := a.Verify(ctx, known); err != nil {
				t.Fatal(err)
			}
			if mode == "down" {
				ti.jwksBroke.Store(true)
			} else {
				ti.jwksSlow.Store(true)
			}
			time.Sleep(20 * time.Millisecond)
			start := time.Now()
			_, err := a.Verify(ctx, sign(t, jose.RS256, ti.key, "rotated-in", ti.claims(nil)))
			if codeOf(err) != schemas.CodeJWKSUnavailable {
				t.Fatalf("unknown kid with the jwks %s: %v", mode, err)
			}
			if el := time.Since(start); el > 2*time.Second {
				t.Fatalf("deny took %s; the HTTP timeout is 500ms", el)
			}
			if _, err := a.Verify(ctx, known); err != nil {
				t.Fatalf("known kid with the jwks %s: %v", mode, err)
			}
		})
	}
}

// TestKeyRotation: the IdP removes its key and publishes a new one. After
// the scheduled refresh, a token verified (and cached) under the old key
// is refused, and tokens under the new key verify.
func TestKeyRotation(t *testing.T) {
	t.Parallel()
	ti := startIssuer(t)
	a := newAuthFor(t, Config{KeysRefresh: 100 * time.Millisecond, DiscoveryRetry: 10 * time.Millisecond,
		Issuers: []Issuer{{URL: ti.srv.URL, Audiences: []string{"aigov"}}}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); a.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	old := sign(t, jose.RS256, ti.key, ti.kid, ti.claims(nil))
	if _, err := a.Verify(ctx, old); err != nil {
		t.Fatal(err)
	}
	if a.cache.len() != 1 {
		t.Fatalf("cache holds %d entries, want 1", a.cache.len())
	}
	newKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ti.publish(jose.JSONWebKey{Key: &newKey.PublicKey, KeyID: "k2", Algorithm: "RS256", Use: "sig"})
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := a.Verify(ctx, old)
		if codeOf(err) == schemas.CodeUnknownKey {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("token under the removed key still %v 5s after rotation", codeOf(err))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if _, err := a.Verify(ctx, sign(t, jose.RS256, newKey, "k2", ti.claims(nil))); err != nil {
		t.Fatalf("token under the new key: %v", err)
	}
}

// TestUnknownKidFloodIsBounded: a thousand random kids cost at most one
// JWKS fetch per refresh interval.
func TestUnknownKidFloodIsBounded(t *testing.T) {
	t.Parallel()
	ti := startIssuer(t)
	a := newAuthFor(t, Config{DiscoveryRetry: time.Hour, Issuers: []Issuer{{URL: ti.srv.URL, Audiences: []string{"aigov"}}}})
	ctx := context.Background()
	if _, err := a.Verify(ctx, sign(t, jose.RS256, ti.key, ti.kid, ti.claims(nil))); err != nil {
		t.Fatal(err)
	}
	base := ti.jwksHits.Load()
	for i := range 1000 {
		tok := b64(map[string]any{"alg": "RS256", "kid": schemas.NewID()}) + "." + b64(ti.claims(nil)) + ".c2ln"
		if _, err := a.Verify(ctx, tok); codeOf(err) != schemas.CodeUnknownKey {
			t.Fatalf("random kid %d: %v", i, err)
		}
	}
	if n := ti.jwksHits.Load() - base; n > 1 {
		t.Fatalf("%d JWKS fetches for 1000 random kids, want at most 1", n)
	}
}

// TestCacheNeverOutlivesExp: a cached token is refused once its exp
// passes, and the cache stays within its bound.
func TestCacheNeverOutlivesExp(t *testing.T) {
	t.Parallel()
	ti := startIssuer(t)
	a := newAuthFor(t, Config{CacheSize: 8, Issuers: []Issuer{{URL: ti.srv.URL, Audiences: []string{"aigov"}}}})
	ctx := context.Background()
	tok := sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { c["exp"] = time.Now().Add(1500 * time.Millisecond).Unix() }))
	if _, err := a.Verify(ctx, tok); err != nil {
		t.Fatal(err)
	}
	a.now = func() time.Time { return time.Now().Add(2 * time.Second) }
	if _, err := a.Verify(ctx, tok); codeOf(err) != schemas.CodeTokenExpired {
		t.Fatalf("cached token after its exp: %v", codeOf(err))
	}
	a.now = time.Now
	for i := range 50 {
		if _, err := a.Verify(ctx, sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { c["jti"] = strings.Repeat("x", i+1) }))); err != nil {
			t.Fatal(err)
		}
		if n := a.cache.len(); n > 8 {
			t.Fatalf("cache holds %d entries, bound 8", n)
		}
	}
}
