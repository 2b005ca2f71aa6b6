package logout_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/reaper/internal/logout"
	"github.com/aigov/aigov/services/reaper/internal/reap"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// idp serves OIDC discovery and a JWKS over real HTTP, and signs tokens.
type idp struct {
	srv *httptest.Server
	key *rsa.PrivateKey
}

func newIDP(t *testing.T) *idp {
	t.Helper()
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p := &idp{key: key}
	mux := http.NewServeMux()
	p.srv = httptest.NewServer(mux)
	t.Cleanup(p.srv.Close)
	mux.HandleFunc("/.well-known/openid-configuration", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer": p.srv.URL, "jwks_uri": p.srv.URL + "/jwks", "authorization_endpoint": p.srv.URL + "/auth",
			"token_endpoint": p.srv.URL + "/token", "id_token_signing_alg_values_supported": []string{"RS256"},
			"backchannel_logout_supported": true,
		})
	})
	mux.HandleFunc("/jwks", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: &key.PublicKey, KeyID: "k1", Algorithm: "RS256", Use: "sig"}}})
	})
	return p
}

// sign makes a token with the given typ header (none when empty).
func (p *idp) sign(t *testing.T, typ string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithHeader("kid", "k1")
	if typ != "" {
		opts = opts.WithType(jose.ContentType(typ))
	}
	s, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.RS256, Key: p.key}, opts)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(claims)
	jws, err := s.Sign(b)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func (p *idp) claims(now time.Time, jti string) map[string]any {
	return map[string]any{
		"iss": p.srv.URL, "aud": "aigov", "iat": now.Unix(), "exp": now.Add(2 * time.Minute).Unix(), "jti": jti,
		"sub": "alice", "sid": "sid-1",
		"events": map[string]any{logout.EventBackchannelLogout: map[string]any{}},
	}
}

type env struct {
	t     *testing.T
	ctx   context.Context
	idp   *idp
	admin jetstream.JetStream
	topo  topology.Topology
	url   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvConfig(t, func(issuer string) logout.Config {
		return logout.Config{Issuers: []string{issuer}, Audience: "aigov", MaxAge: 5 * time.Minute, Skew: 30 * time.Second, HTTPTimeout: 5 * time.Second}
	})
}

// newEnvConfig serves a handler with the config cfg makes for the test IdP.
func newEnvConfig(t *testing.T, cfg func(issuer string) logout.Config) *env {
	t.Helper()
	srv := natsdev.StartT(t, natsdev.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	connect := func(user string) jetstream.JetStream {
		nc, err := srv.Connect(user)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return js
	}
	e := &env{t: t, ctx: ctx, idp: newIDP(t), admin: connect(natsdev.AdminUser), topo: topology.New("")}
	js := connect(schemas.RoleReaper)
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	sw, err := killswitch.New(ctx, js, e.topo, nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	h, err := logout.New(ctx, cfg(e.idp.srv.URL),
		logout.Deps{JS: js, Topology: e.topo, Switch: sw, Log: zerolog.Nop(), Now: time.Now})
	if err != nil {
		t.Fatal(err)
	}
	ep := httptest.NewServer(h)
	t.Cleanup(ep.Close)
	e.url = ep.URL
	return e
}

func (e *env) post(token string) (int, map[string]string) {
	e.t.Helper()
	resp, err := http.PostForm(e.url, url.Values{"logout_token": {token}})
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]string
	_ = json.NewDecoder(resp.Body).Decode(&body)
	if resp.Header.Get("Cache-Control") != "no-store" {
		e.t.Errorf("Cache-Control = %q, want no-store", resp.Header.Get("Cache-Control"))
	}
	return resp.StatusCode, body
}

func (e *env) revocation(key string) (schemas.Revocation, bool) {
	kv, _ := e.admin.KeyValue(e.ctx, e.topo.BucketRevocations())
	en, err := kv.Get(e.ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return schemas.Revocation{}, false
	}
	if err != nil {
		e.t.Fatal(err)
	}
	var r schemas.Revocation
	_ = json.Unmarshal(en.Value(), &r)
	return r, true
}

// A valid logout token revokes its session (200), the revocation says
// session_revoked by the back-channel logout, a session.revoked event is
// audited, and replaying the same token is refused (400).
func TestValidLogoutRevokesThenReplayRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	key := schemas.SessionKey(schemas.Principal{Issuer: e.idp.srv.URL, SessionID: "sid-1"})
	rec, _ := json.Marshal(killswitch.Session{SessionKey: key, Issuer: e.idp.srv.URL, Subject: "alice",
		PrincipalID: schemas.PrincipalID(e.idp.srv.URL, "alice"), SessionID: "sid-1", FirstSeen: time.Now(), LastSeen: time.Now()})
	kv, _ := e.admin.KeyValue(e.ctx, e.topo.BucketSessions())
	if _, err := kv.Create(e.ctx, key, rec); err != nil {
		t.Fatal(err)
	}
	tok := e.idp.sign(t, "logout+jwt", e.idp.claims(time.Now(), "jti-valid"))
	if code, body := e.post(tok); code != http.StatusOK {
		t.Fatalf("valid logout: %d %v", code, body)
	}
	r, ok := e.revocation(key)
	if !ok || r.Code != schemas.CodeSessionRevoked || r.By != schemas.ByLogout {
		t.Fatalf("revocation = %+v, %v", r, ok)
	}
	if _, err := kv.Get(e.ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Errorf("session record after logout: %v", err)
	}
	st, _ := e.admin.Stream(e.ctx, e.topo.StreamSessions())
	m, err := st.GetLastMsgForSubject(e.ctx, e.topo.Subjects.Session(schemas.SessionRevoked))
	if err != nil {
		t.Fatalf("no session.revoked event: %v", err)
	}
	ev, _ := schemas.ParseEvent(m.Data)
	var se schemas.SessionEvent
	if err := ev.DecodeData(&se); err != nil || se.By != schemas.ByLogout || se.SessionKey != key {
		t.Errorf("revoked event = %+v (%v)", se, err)
	}
	if code, body := e.post(tok); code != http.StatusBadRequest || !strings.Contains(body["error_description"], "jti") {
		t.Errorf("replayed jti: %d %v, want 400 naming the jti", code, body)
	}
}

// Every malformed logout token is refused with 400 and an error JSON, and
// revokes nothing.
func TestInvalidLogoutTokens(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	now := time.Now()
	cases := map[string]struct {
		typ  string
		edit func(c map[string]any)
		want string
	}{
		"wrong typ":           {typ: "JWT", want: "typ"},
		"missing events":      {typ: "logout+jwt", edit: func(c map[string]any) { delete(c, "events") }, want: "events"},
		"other event":         {typ: "logout+jwt", edit: func(c map[string]any) { c["events"] = map[string]any{"urn:other": map[string]any{}} }, want: "events"},
		"with nonce":          {typ: "logout+jwt", edit: func(c map[string]any) { c["nonce"] = "n" }, want: "nonce"},
		"stale iat":           {typ: "logout+jwt", edit: func(c map[string]any) { c["iat"] = now.Add(-time.Hour).Unix() }, want: "iat"},
		"future iat":          {typ: "logout+jwt", edit: func(c map[string]any) { c["iat"] = now.Add(time.Hour).Unix() }, want: "iat"},
		"neither sid nor sub": {typ: "logout+jwt", edit: func(c map[string]any) { delete(c, "sid"); delete(c, "sub") }, want: "sid"},
		"wrong audience":      {typ: "logout+jwt", edit: func(c map[string]any) { c["aud"] = "other" }, want: "verify"},
		"untrusted issuer":    {typ: "logout+jwt", edit: func(c map[string]any) { c["iss"] = "https://evil.test" }, want: "trusted"},
		"no jti":              {typ: "logout+jwt", edit: func(c map[string]any) { delete(c, "jti") }, want: "jti"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := e.idp.claims(now, "jti-"+name)
			if tc.edit != nil {
				tc.edit(c)
			}
			code, body := e.post(e.idp.sign(t, tc.typ, c))
			if code != http.StatusBadRequest || body["error"] != "invalid_request" || !strings.Contains(body["error_description"], tc.want) {
				t.Errorf("%d %v, want 400 invalid_request mentioning %q", code, body, tc.want)
			}
		})
	}
	if code, _ := e.post("not.a.jwt"); code != http.StatusBadRequest {
		t.Errorf("garbage token: %d, want 400", code)
	}
	forged := e.idp.sign(t, "logout+jwt", e.idp.claims(now, "jti-forged"))
	forged = forged[:len(forged)-4] + "AAAA"
	if code, _ := e.post(forged); code != http.StatusBadRequest {
		t.Errorf("bad signature: %d, want 400", code)
	}
	if _, ok := e.revocation(schemas.SessionKey(schemas.Principal{Issuer: e.idp.srv.URL, SessionID: "sid-1"})); ok {
		t.Error("an invalid logout token revoked the session")
	}
	// A token with only sub (no sid) revokes the subject's sessions.
	c := e.idp.claims(now, "jti-sub-only")
	delete(c, "sid")
	if code, body := e.post(e.idp.sign(t, "", c)); code != http.StatusOK {
		t.Errorf("sub-only token without typ: %d %v, want 200", code, body)
	}
}

// Issuers configured by file (authn's AIGOV_OIDC_CONFIG) are trusted for
// back-channel logout too, each with the client id the file gives it; the
// two ways of naming issuers cannot be mixed.
func TestLogoutTrustsIssuersFromConfigFile(t *testing.T) {
	t.Parallel()
	var loaded logout.Config
	e := newEnvConfig(t, func(issuer string) logout.Config {
		path := filepath.Join(t.TempDir(), "issuers.yaml")
		doc := "issuers:\n  - url: " + issuer + "\n    audiences: [aigov-file, other]\n"
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		env := reaperEnv(map[string]string{"AIGOV_LOGOUT_ADDR": "127.0.0.1:0", "AIGOV_OIDC_CONFIG": path})
		_, loaded = logout.LoadConfig(env)
		if err := env.Err(); err != nil {
			t.Fatalf("config from file: %v", err)
		}
		return loaded
	})
	if !slices.Equal(loaded.Issuers, []string{e.idp.srv.URL}) || loaded.Audiences[e.idp.srv.URL] != "aigov-file" {
		t.Fatalf("loaded %+v, want the file's issuer with client id aigov-file", loaded)
	}
	wrong := e.idp.claims(time.Now(), "jti-wrong-aud") // addressed to "aigov", not this issuer's client id
	if code, body := e.post(e.idp.sign(t, "logout+jwt", wrong)); code != http.StatusBadRequest {
		t.Errorf("logout token for another client id: %d %v, want 400", code, body)
	}
	right := e.idp.claims(time.Now(), "jti-file")
	right["aud"] = "aigov-file"
	if code, body := e.post(e.idp.sign(t, "logout+jwt", right)); code != http.StatusOK {
		t.Fatalf("logout from an issuer configured by file: %d %v, want 200", code, body)
	}

	both := reaperEnv(map[string]string{"AIGOV_LOGOUT_ADDR": "127.0.0.1:0",
		"AIGOV_OIDC_CONFIG": "/nonexistent.yaml", "AIGOV_OIDC_ISSUERS": "https://idp.example"})
	logout.LoadConfig(both)
	if err := both.Err(); err == nil || !strings.Contains(err.Error(), "not both") {
		t.Errorf("both AIGOV_OIDC_CONFIG and AIGOV_OIDC_ISSUERS: %v, want a refusal", err)
	}
}

// reaperEnv reads m with the reaper's declared settings (their defaults
// and bounds), without its required common ones.
func reaperEnv(m map[string]string) *servicekit.Env {
	e := servicekit.NewEnv(servicekit.MapLookup(m))
	e.Declare(servicekit.Settings{Service: "reaper", Sections: []servicekit.Section{servicekit.SessionLimitSettings(), reap.Settings()}})
	return e
}
