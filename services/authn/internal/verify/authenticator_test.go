package verify

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
)

// testIssuer is a real OIDC issuer over HTTP (discovery + JWKS) whose key
// the test holds, so it can sign tokens no real IdP would issue: nbf in the
// future, no sub, HS256, and so on. Verifying them through the
// Authenticator exercises go-oidc's real error messages.
type testIssuer struct {
	srv       *httptest.Server
	key       *rsa.PrivateKey
	kid       string
	ecKey     *ecdsa.PrivateKey
	jwksHits  atomic.Int64
	jwksBroke atomic.Bool
	jwksSlow  atomic.Bool
	published atomic.Pointer[[]jose.JSONWebKey]
	// discoveries counts discovery requests; discoveryDown fails them.
	discoveries   atomic.Int64
	discoveryDown atomic.Bool
}

func startIssuer(t testing.TB) *testIssuer {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ti := &testIssuer{key: key, kid: "k1"}
	mux := http.NewServeMux()
	ti.srv = httptest.NewServer(mux)
	t.Cleanup(ti.srv.Close)
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		ti.discoveries.Add(1)
		if ti.discoveryDown.Load() {
			http.Error(w, "starting", http.StatusBadGateway)
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                ti.srv.URL,
			"jwks_uri":                              ti.srv.URL + "/jwks",
			"id_token_signing_alg_values_supported": []string{"RS256", "ES256", "HS256", "none"},
		})
	})
	ti.ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ti.publish(
		jose.JSONWebKey{Key: &ti.key.PublicKey, KeyID: ti.kid, Algorithm: "RS256", Use: "sig"},
		jose.JSONWebKey{Key: &ti.ecKey.PublicKey, KeyID: "e1", Algorithm: "ES256", Use: "sig"},
	)
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, r *http.Request) {
		ti.jwksHits.Add(1)
		if ti.jwksSlow.Load() {
			// Longer than the clients' timeout, but bounded so that the
			// server can close.
			select {
			case <-time.After(3 * time.Second):
			case <-r.Context().Done():
			}
		}
		if ti.jwksBroke.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: *ti.published.Load()})
	})
	return ti
}

// publish replaces the keys the JWKS endpoint serves.
func (ti *testIssuer) publish(keys ...jose.JSONWebKey) { ti.published.Store(&keys) }

func (ti *testIssuer) claims(mod func(map[string]any)) map[string]any {
	now := time.Now()
	c := map[string]any{
		"iss": ti.srv.URL, "sub": "svc-1", "aud": "aigov",
		"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(time.Minute).Unix(),
		"auth_time": now.Add(-time.Minute).Unix(), "sid": "s-1", "jti": "j-1",
		"groups": []string{"g1", "g2"}, "scope": "openid model:write", "amr": []string{"mfa"},
		"email": "svc@example.org", "name": "Service One",
	}
	if mod != nil {
		mod(c)
	}
	return c
}

// sign signs claims with key under alg and kid.
func sign(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	payload, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: jose.JSONWebKey{Key: key, KeyID: kid}}, (&jose.SignerOptions{}).WithType("JWT"))
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// signRaw signs an arbitrary payload with RS256.
func signRaw(t *testing.T, key *rsa.PrivateKey, payload []byte) string {
	t.Helper()
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: key}, nil)
	if err != nil {
		t.Fatal(err)
	}
	obj, err := s.Sign(payload)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := obj.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func b64(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func newAuth(t *testing.T, retry time.Duration, issuers ...string) *Authenticator {
	t.Helper()
	cfg := Config{Workers: 1, HTTPTimeout: 2 * time.Second, DiscoveryRetry: retry}
	for _, u := range issuers {
		cfg.Issuers = append(cfg.Issuers, Issuer{URL: u, Audiences: []string{"aigov"}})
	}
	a, err := NewAuthenticator(cfg, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func codeOf(err error) schemas.Code {
	if d, ok := IsDenial(err); ok {
		return d.Code
	}
	if err != nil {
		return "error: " + schemas.Code(err.Error())
	}
	return "verified"
}

func TestVerifyMapsEveryRejection(t *testing.T) {
	t.Parallel()
	ti := startIssuer(t)
	a := newAuth(t, time.Hour, ti.srv.URL)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	good := ti.claims(nil)
	header := map[string]any{"alg": "RS256", "kid": ti.kid, "typ": "JWT"}
	validSig := strings.Split(sign(t, jose.RS256, ti.key, ti.kid, good), ".")[2]

	cases := []struct {
		name  string
		token string
		want  schemas.Code
	}{
		{"good", sign(t, jose.RS256, ti.key, ti.kid, good), "verified"},
		{"expired", sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Second).Unix() })), schemas.CodeTokenExpired},
		{"no exp counts as expired", sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { delete(c, "exp") })), schemas.CodeTokenExpired},
		{"nbf an hour ahead", sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) {
			c["nbf"] = time.Now().Add(time.Hour).Unix()
			c["exp"] = time.Now().Add(2 * time.Hour).Unix()
		})), schemas.CodeTokenNotYetValid},
		{"iat an hour ahead", sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { c["iat"] = time.Now().Add(time.Hour).Unix() })), schemas.CodeIATInFuture},
		{"wrong audience", sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { c["aud"] = []string{"other", "more"} })), schemas.CodeWrongAudience},
		{"signed by another key under the real kid", sign(t, jose.RS256, other, ti.kid, good), schemas.CodeBadSignature},
		{"HS256 keyed with the public key", sign(t, jose.HS256, []byte(b64(ti.key.PublicKey.N.Bytes())), ti.kid, good), schemas.CodeDisallowedAlgorithm},
		{"alg none", b64(map[string]any{"alg": "none", "typ": "JWT"}) + "." + b64(good) + ".", schemas.CodeDisallowedAlgorithm},
		{"payload swapped under a valid signature", b64(header) + "." + b64(ti.claims(func(c map[string]any) { c["sub"] = "admin" })) + "." + validSig, schemas.CodeBadSignature},
		{"untrusted issuer", sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { c["iss"] = ti.srv.URL + "/" })), schemas.CodeUntrustedIssuer},
		{"no iss", sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { delete(c, "iss") })), schemas.CodeMalformedToken},
		{"two parts", "abc.def", schemas.CodeMalformedToken},
		{"JWE shape", "a.b.c.d.e", schemas.CodeMalformedToken},
		{"payload not base64", "eyJhbGciOiJSUzI1NiJ9.@@@.sig", schemas.CodeMalformedToken},
		{"payload not JSON", b64(header) + "." + base64.RawURLEncoding.EncodeToString([]byte("nope")) + ".c2ln", schemas.CodeMalformedToken},
		{"iss not a string", b64(header) + "." + b64(map[string]any{"iss": 7}) + ".c2ln", schemas.CodeMalformedToken},
		{"header not JSON", base64.RawURLEncoding.EncodeToString([]byte("{")) + "." + b64(good) + "." + validSig, schemas.CodeMalformedToken},
		{"no sub", sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { delete(c, "sub") })), schemas.CodeMalformedToken},
		{"groups of the wrong type", sign(t, jose.RS256, ti.key, ti.kid, ti.claims(func(c map[string]any) { c["groups"] = map[string]any{"a": 1} })), schemas.CodeMalformedToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := a.Verify(context.Background(), tc.token)
			if got := codeOf(err); got != tc.want {
				t.Fatalf("code = %s, want %s (err: %v)", got, tc.want, err)
			}
			if d, ok := IsDenial(err); ok && strings.Contains(d.Reason, tc.token) {
				t.Fatalf("reason contains the token: %q", d.Reason)
			}
		})
	}
}

func TestVerifyMapsClaims(t *testing.T) {
	t.Parallel()
	ti := startIssuer(t)
	a := newAuth(t, time.Hour, ti.srv.URL)
	authTime := time.Now().Add(-time.Minute).Truncate(time.Second)
	cases := []struct {
		name   string
		mod    func(map[string]any)
		check  func(t *testing.T, id Identity)
		sidKey string
	}{
		{"all claims", func(c map[string]any) { c["auth_time"] = authTime.Unix() }, func(t *testing.T, id Identity) {
			p := id.Principal
			if p.ID != ti.srv.URL+"#svc-1" || p.Type != schemas.PrincipalUser || p.Issuer != ti.srv.URL || p.Subject != "svc-1" {
				t.Errorf("identity fields: %+v", p)
			}
			if p.Email != "svc@example.org" || p.Name != "Service One" || p.SessionID != "s-1" || p.TokenID != "j-1" {
				t.Errorf("profile fields: %+v", p)
			}
			if strings.Join(p.Groups, ",") != "g1,g2" || strings.Join(p.Scopes, ",") != "openid,model:write" || strings.Join(p.AMR, ",") != "mfa" {
				t.Errorf("lists: groups %v scopes %v amr %v", p.Groups, p.Scopes, p.AMR)
			}
			if p.AuthTime == nil || !p.AuthTime.Equal(authTime) || p.IssuedAt.IsZero() || p.ExpiresAt.IsZero() {
				t.Errorf("times: auth %v iat %v exp %v", p.AuthTime, p.IssuedAt, p.ExpiresAt)
			}
			if want := schemas.SessionKey(schemas.Principal{Issuer: ti.srv.URL, SessionID: "s-1", Subject: "svc-1", AuthTime: p.AuthTime}); id.SessionKey != want {
				t.Errorf("session key %s, want %s", id.SessionKey, want)
			}
		}, ""},
		{"absent groups, scp array", func(c map[string]any) {
			delete(c, "groups")
			delete(c, "scope")
			c["scp"] = []string{"a", "b"}
		}, func(t *testing.T, id Identity) {
			if id.Principal.Groups != nil || strings.Join(id.Principal.Scopes, ",") != "a,b" {
				t.Errorf("groups %v scopes %v", id.Principal.Groups, id.Principal.Scopes)
			}
		}, ""},
		{"single group string, scp string", func(c map[string]any) {
			c["groups"] = "solo"
			delete(c, "scope")
			c["scp"] = "x y"
		}, func(t *testing.T, id Identity) {
			if strings.Join(id.Principal.Groups, ",") != "solo" || strings.Join(id.Principal.Scopes, ",") != "x,y" {
				t.Errorf("groups %v scopes %v", id.Principal.Groups, id.Principal.Scopes)
			}
		}, ""},
		{"case-variant claim is not the claim", func(c map[string]any) {
			delete(c, "groups")
			c["GROUPS"] = []string{"admins"}
		}, func(t *testing.T, id Identity) {
			if id.Principal.Groups != nil {
				t.Errorf("GROUPS was read as groups: %v", id.Principal.Groups)
			}
		}, ""},
		{"no sid: session keyed by subject and auth_time", func(c map[string]any) {
			delete(c, "sid")
			c["auth_time"] = authTime.Unix()
		}, func(t *testing.T, id Identity) {
			at := authTime
			if want := schemas.SessionKey(schemas.Principal{Issuer: ti.srv.URL, Subject: "svc-1", AuthTime: &at}); id.SessionKey != want {
				t.Errorf("session key %s, want %s", id.SessionKey, want)
			}
		}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			id, err := a.Verify(context.Background(), sign(t, jose.RS256, ti.key, ti.kid, ti.claims(tc.mod)))
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, id)
		})
	}
}

// TestKeyFetchesAreBounded: forged tokens under a known kid cost no fetch,
// unknown kids refetch at most once per interval, and a JWKS outage with
// no usable key is issuer_unavailable rather than bad_signature.
func TestKeyFetchesAreBounded(t *testing.T) {
	t.Parallel()
	ti := startIssuer(t)
	a := newAuth(t, 300*time.Millisecond, ti.srv.URL)
	ctx := context.Background()
	if _, err := a.Verify(ctx, sign(t, jose.RS256, ti.key, ti.kid, ti.claims(nil))); err != nil {
		t.Fatal(err)
	}
	if n := ti.jwksHits.Load(); n != 1 {
		t.Fatalf("jwks fetched %d times for the first token, want 1", n)
	}
	forger, _ := rsa.GenerateKey(rand.Reader, 2048)
	for range 20 {
		if _, err := a.Verify(ctx, sign(t, jose.RS256, forger, ti.kid, ti.claims(nil))); codeOf(err) != schemas.CodeBadSignature {
			t.Fatalf("forged: %v", err)
		}
	}
	if n := ti.jwksHits.Load(); n != 1 {
		t.Fatalf("jwks fetched %d times after forged tokens under a known kid, want 1", n)
	}
	time.Sleep(350 * time.Millisecond)
	for range 20 {
		if _, err := a.Verify(ctx, sign(t, jose.RS256, forger, "unknown-kid", ti.claims(nil))); codeOf(err) != schemas.CodeUnknownKey {
			t.Fatalf("unknown kid: %v", err)
		}
	}
	if n := ti.jwksHits.Load(); n != 2 {
		t.Fatalf("jwks fetched %d times, want 2 (one refresh for the unknown kid, rate limited)", n)
	}

	ti.jwksBroke.Store(true)
	time.Sleep(350 * time.Millisecond)
	_, err := a.Verify(ctx, sign(t, jose.RS256, forger, "rotated-kid", ti.claims(nil)))
	if codeOf(err) != schemas.CodeJWKSUnavailable {
		t.Fatalf("unknown kid while jwks is down: %v", err)
	}
	// Known keys keep working through the outage.
	if _, err := a.Verify(ctx, sign(t, jose.RS256, ti.key, ti.kid, ti.claims(nil))); err != nil {
		t.Fatalf("known kid while jwks is down: %v", err)
	}
}

// TestDiscoveryRetry: an issuer down at first is denied issuer_unavailable
// without a new attempt inside the retry interval, and verifies once it is
// up and the interval has passed.
func TestDiscoveryRetry(t *testing.T) {
	t.Parallel()
	ti := startIssuer(t)
	ti.discoveryDown.Store(true)
	a := newAuth(t, 300*time.Millisecond, ti.srv.URL)
	ctx := context.Background()
	tok := sign(t, jose.RS256, ti.key, ti.kid, ti.claims(nil))

	for i := range 3 {
		if _, err := a.Verify(ctx, tok); codeOf(err) != schemas.CodeIssuerUnavailable {
			t.Fatalf("attempt %d while down: %v", i, err)
		}
	}
	if n := ti.discoveries.Load(); n != 1 {
		t.Fatalf("%d discovery attempts inside the retry interval, want 1", n)
	}
	ti.discoveryDown.Store(false)
	if _, err := a.Verify(ctx, tok); codeOf(err) != schemas.CodeIssuerUnavailable {
		t.Fatalf("retried before the interval: %v", err)
	}
	time.Sleep(350 * time.Millisecond)
	if _, err := a.Verify(ctx, tok); err != nil {
		t.Fatalf("after the interval: %v", err)
	}
	if n := ti.discoveries.Load(); n != 2 {
		t.Fatalf("%d discovery attempts, want 2", n)
	}
}
