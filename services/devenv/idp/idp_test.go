package idp_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/aigov/aigov/services/devenv/idp"
)

func startIdP(t *testing.T, opts idp.Options) *idp.Provider {
	t.Helper()
	p, err := idp.Start(t.Context(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return p
}

func verifier(t *testing.T, p *idp.Provider) *oidc.IDTokenVerifier {
	t.Helper()
	op, err := oidc.NewProvider(t.Context(), p.Issuer())
	if err != nil {
		t.Fatalf("oidc.NewProvider(%q): %v", p.Issuer(), err)
	}
	return op.Verifier(&oidc.Config{ClientID: p.ClientID()})
}

type claims struct {
	Iss               string   `json:"iss"`
	Sub               string   `json:"sub"`
	Aud               []string `json:"aud"`
	Exp               int64    `json:"exp"`
	Iat               int64    `json:"iat"`
	Nbf               int64    `json:"nbf"`
	AuthTime          int64    `json:"auth_time"`
	SID               string   `json:"sid"`
	AMR               []string `json:"amr"`
	Scope             string   `json:"scope"`
	Email             string   `json:"email"`
	EmailVerified     bool     `json:"email_verified"`
	Name              string   `json:"name"`
	PreferredUsername string   `json:"preferred_username"`
	Groups            []string `json:"groups"`
	Nonce             string   `json:"nonce"`
}

func header(t *testing.T, token string) map[string]any {
	t.Helper()
	raw, err := base64.RawURLEncoding.DecodeString(strings.Split(token, ".")[0])
	if err != nil {
		t.Fatalf("decode header: %v", err)
	}
	var h map[string]any
	if err := json.Unmarshal(raw, &h); err != nil {
		t.Fatalf("unmarshal header: %v", err)
	}
	return h
}

func getJSON(t *testing.T, url string, into any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: status %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(into); err != nil {
		t.Fatalf("GET %s: decode: %v", url, err)
	}
}

func TestDiscoveryAndJWKS(t *testing.T) {
	p := startIdP(t, idp.Options{})
	if !strings.HasPrefix(p.Issuer(), "http://127.0.0.1:") || strings.HasSuffix(p.Issuer(), "/") {
		t.Errorf("Issuer() = %q, want http://127.0.0.1:<port>/... without trailing slash", p.Issuer())
	}
	if p.ClientID() != "aigov" {
		t.Errorf("ClientID() = %q, want default aigov", p.ClientID())
	}

	var doc struct {
		Issuer  string   `json:"issuer"`
		JWKSURI string   `json:"jwks_uri"`
		Algs    []string `json:"id_token_signing_alg_values_supported"`
	}
	getJSON(t, p.Issuer()+"/.well-known/openid-configuration", &doc)
	if doc.Issuer != p.Issuer() {
		t.Errorf("discovery issuer = %q, want %q", doc.Issuer, p.Issuer())
	}
	if !strings.HasPrefix(doc.JWKSURI, p.Issuer()+"/") {
		t.Errorf("jwks_uri = %q, want under %q", doc.JWKSURI, p.Issuer())
	}
	if !slices.Equal(doc.Algs, []string{"RS256"}) {
		t.Errorf("id_token_signing_alg_values_supported = %v, want [RS256]", doc.Algs)
	}

	var jwks struct {
		Keys []struct {
			Kty, Alg, Use, Kid string
		} `json:"keys"`
	}
	getJSON(t, doc.JWKSURI, &jwks)
	if len(jwks.Keys) != 1 {
		t.Fatalf("jwks has %d keys, want 1", len(jwks.Keys))
	}
	k := jwks.Keys[0]
	if k.Kty != "RSA" || k.Alg != "RS256" || k.Use != "sig" || k.Kid == "" {
		t.Errorf("jwk = %+v, want RSA/RS256/sig with a kid", k)
	}

	tok, err := p.Token(t.Context(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if h := header(t, tok); h["alg"] != "RS256" || h["kid"] != k.Kid {
		t.Errorf("token header = %v, want alg RS256 kid %q", h, k.Kid)
	}
}

func TestPersonaTokensVerify(t *testing.T) {
	p := startIdP(t, idp.Options{})
	v := verifier(t, p)
	for name, want := range idp.Personas() {
		t.Run(name, func(t *testing.T) {
			before := time.Now().Truncate(time.Second)
			tok, err := p.Token(t.Context(), name)
			if err != nil {
				t.Fatalf("Token: %v", err)
			}
			idt, err := v.Verify(t.Context(), tok)
			if err != nil {
				t.Fatalf("Verify: %v", err)
			}
			var c claims
			if err := idt.Claims(&c); err != nil {
				t.Fatal(err)
			}
			if c.Sub != want.Subject || idt.Subject != want.Subject {
				t.Errorf("sub = %q, want %q", c.Sub, want.Subject)
			}
			if c.Iss != p.Issuer() {
				t.Errorf("iss = %q, want %q", c.Iss, p.Issuer())
			}
			if !slices.Equal(c.Aud, []string{"aigov"}) {
				t.Errorf("aud = %v", c.Aud)
			}
			if c.Email != want.Email || !c.EmailVerified {
				t.Errorf("email = %q verified=%v, want %q", c.Email, c.EmailVerified, want.Email)
			}
			if c.Name != want.Name {
				t.Errorf("name = %q, want %q", c.Name, want.Name)
			}
			if c.Groups == nil || !slices.Equal(c.Groups, want.Groups) {
				t.Errorf("groups = %#v, want %#v", c.Groups, want.Groups)
			}
			if c.PreferredUsername != name {
				t.Errorf("preferred_username = %q, want %q", c.PreferredUsername, name)
			}
			if c.Iat < before.Unix() || c.Exp-c.Iat != int64((10*time.Minute).Seconds()) || c.Nbf != c.Iat {
				t.Errorf("iat=%d nbf=%d exp=%d, want iat>=%d and 10m lifetime", c.Iat, c.Nbf, c.Exp, before.Unix())
			}
			if c.AuthTime != c.Iat {
				t.Errorf("auth_time = %d, want iat %d", c.AuthTime, c.Iat)
			}
			wantAMR := []string{"pwd"}
			if want.AMR != nil {
				wantAMR = want.AMR
			}
			if name == "fiona" && !slices.Contains(c.AMR, "hwk") {
				t.Errorf("fiona's amr %v has no second factor; the demo's production release needs one", c.AMR)
			}
			if c.SID == "" || !slices.Equal(c.AMR, wantAMR) || c.Scope != "openid email profile groups" || c.Nonce == "" {
				t.Errorf("sid=%q amr=%v scope=%q nonce=%q", c.SID, c.AMR, c.Scope, c.Nonce)
			}
		})
	}
}

func TestOutsiderHasExplicitEmptyGroups(t *testing.T) {
	p := startIdP(t, idp.Options{})
	tok, err := p.Token(t.Context(), "oscar")
	if err != nil {
		t.Fatal(err)
	}
	idt, err := verifier(t, p).Verify(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]json.RawMessage
	if err := idt.Claims(&raw); err != nil {
		t.Fatal(err)
	}
	if string(raw["groups"]) != "[]" {
		t.Errorf("groups = %s, want []", raw["groups"])
	}
}

func TestTokenOptions(t *testing.T) {
	p := startIdP(t, idp.Options{ClientID: "other-client", TokenTTL: time.Hour})
	v := verifier(t, p)

	tok, err := p.Token(t.Context(), "erin", idp.WithSessionID("sess-123"), idp.WithTTL(2*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	idt, err := v.Verify(t.Context(), tok)
	if err != nil {
		t.Fatal(err)
	}
	var c claims
	if err := idt.Claims(&c); err != nil {
		t.Fatal(err)
	}
	if c.SID != "sess-123" || c.Exp-c.Iat != 120 || !slices.Equal(c.Aud, []string{"other-client"}) {
		t.Errorf("sid=%q lifetime=%d aud=%v", c.SID, c.Exp-c.Iat, c.Aud)
	}

	// Options.TokenTTL is the default lifetime.
	tok, err = p.Token(t.Context(), "erin")
	if err != nil {
		t.Fatal(err)
	}
	if idt, err = v.Verify(t.Context(), tok); err != nil {
		t.Fatal(err)
	}
	if err := idt.Claims(&c); err != nil {
		t.Fatal(err)
	}
	if c.Exp-c.Iat != 3600 || c.SID == "sess-123" {
		t.Errorf("lifetime=%d sid=%q, want 3600 and a fresh sid", c.Exp-c.Iat, c.SID)
	}

	// WithoutSessionClaims: neither sid nor auth_time, as Dex and Google.
	tok, err = p.Token(t.Context(), "erin", idp.WithoutSessionClaims())
	if err != nil {
		t.Fatal(err)
	}
	if idt, err = v.Verify(t.Context(), tok); err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := idt.Claims(&raw); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"sid", "auth_time"} {
		if v, ok := raw[name]; ok {
			t.Errorf("WithoutSessionClaims: claim %s = %v, want absent", name, v)
		}
	}
	if _, ok := raw["iat"]; !ok {
		t.Error("WithoutSessionClaims: no iat")
	}

	// A verifier for the default audience must refuse this provider's tokens.
	op, err := oidc.NewProvider(t.Context(), p.Issuer())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := op.Verifier(&oidc.Config{ClientID: "aigov"}).Verify(t.Context(), tok); err == nil || !strings.Contains(err.Error(), "audience") {
		t.Errorf("Verify with wrong client id: err = %v, want audience error", err)
	}
}

func TestExpiredToken(t *testing.T) {
	p := startIdP(t, idp.Options{})
	v := verifier(t, p)
	issued := time.Now().Add(-time.Hour)
	tok, err := p.Token(t.Context(), "alice", idp.WithIssuedAt(issued), idp.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	_, err = v.Verify(t.Context(), tok)
	var expired *oidc.TokenExpiredError
	if !errors.As(err, &expired) {
		t.Fatalf("Verify: err = %v, want *oidc.TokenExpiredError", err)
	}
	if want := issued.Add(time.Minute).Unix(); expired.Expiry.Unix() != want {
		t.Errorf("expiry = %v, want %v", expired.Expiry.Unix(), want)
	}
}

func TestOptionsNowClock(t *testing.T) {
	past := time.Now().Add(-24 * time.Hour)
	p := startIdP(t, idp.Options{Now: func() time.Time { return past }})
	tok, err := p.Token(t.Context(), "rita")
	if err != nil {
		t.Fatal(err)
	}
	_, err = verifier(t, p).Verify(t.Context(), tok)
	var expired *oidc.TokenExpiredError
	if !errors.As(err, &expired) {
		t.Fatalf("Verify: err = %v, want *oidc.TokenExpiredError", err)
	}
}

func TestForgedToken(t *testing.T) {
	p := startIdP(t, idp.Options{})
	v := verifier(t, p)
	tok, err := p.Token(t.Context(), "carol")
	if err != nil {
		t.Fatal(err)
	}
	forged, err := idp.Forge(tok)
	if err != nil {
		t.Fatal(err)
	}
	parts, fparts := strings.Split(tok, "."), strings.Split(forged, ".")
	if parts[1] != fparts[1] {
		t.Error("forged payload differs from the original")
	}
	if parts[2] == fparts[2] {
		t.Error("forged signature equals the original")
	}
	oh, fh := header(t, tok), header(t, forged)
	if fmt.Sprint(oh) != fmt.Sprint(fh) {
		t.Errorf("forged header %v, want %v", fh, oh)
	}

	// The genuine token still verifies; the forgery fails on its signature.
	if _, err := v.Verify(t.Context(), tok); err != nil {
		t.Fatalf("Verify(original): %v", err)
	}
	_, err = v.Verify(t.Context(), forged)
	if err == nil || !strings.Contains(err.Error(), "failed to verify signature") {
		t.Fatalf("Verify(forged): err = %v, want signature error", err)
	}

	if _, err := idp.Forge("not.a.jwt"); err == nil {
		t.Error("Forge(garbage) succeeded")
	}
}

func TestTokensFromAnotherProviderRejected(t *testing.T) {
	p1 := startIdP(t, idp.Options{})
	p2 := startIdP(t, idp.Options{})
	tok, err := p2.Token(t.Context(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verifier(t, p1).Verify(t.Context(), tok); err == nil {
		t.Fatal("p1 verifier accepted a p2 token")
	}
}

func TestConcurrentTokens(t *testing.T) {
	p := startIdP(t, idp.Options{})
	v := verifier(t, p)
	names := []string{"alice", "carol", "erin", "rita", "oscar"}
	personas := idp.Personas()
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := range 20 {
		name := names[i%len(names)]
		wg.Go(func() {
			tok, err := p.Token(context.Background(), name)
			if err != nil {
				errs <- fmt.Errorf("%s: Token: %w", name, err)
				return
			}
			idt, err := v.Verify(context.Background(), tok)
			if err != nil {
				errs <- fmt.Errorf("%s: Verify: %w", name, err)
				return
			}
			if idt.Subject != personas[name].Subject {
				errs <- fmt.Errorf("%s: sub = %q", name, idt.Subject)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestUnknownPersona(t *testing.T) {
	p := startIdP(t, idp.Options{})
	if _, err := p.Token(t.Context(), "mallory"); err == nil {
		t.Fatal("Token(mallory) succeeded")
	}
	// The failed call must not poison the next login.
	tok, err := p.Token(t.Context(), "alice")
	if err != nil {
		t.Fatal(err)
	}
	idt, err := verifier(t, p).Verify(t.Context(), tok)
	if err != nil || idt.Subject != "alice" {
		t.Fatalf("after unknown persona: sub=%v err=%v", idt, err)
	}
}

func TestCancelledTokenDoesNotPoisonNextLogin(t *testing.T) {
	p := startIdP(t, idp.Options{})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.Token(ctx, "rita"); err == nil {
		t.Fatal("Token with cancelled ctx succeeded")
	}
	tok, err := p.Token(t.Context(), "oscar")
	if err != nil {
		t.Fatal(err)
	}
	idt, err := verifier(t, p).Verify(t.Context(), tok)
	if err != nil || idt.Subject != "oscar" {
		t.Fatalf("after cancelled flow: sub=%v err=%v", idt, err)
	}
}

func TestStartRejectsUnspecifiedHost(t *testing.T) {
	for _, addr := range []string{":0", "0.0.0.0:0", "[::]:0", "nonsense"} {
		if p, err := idp.Start(t.Context(), idp.Options{Addr: addr}); err == nil {
			_ = p.Close()
			t.Errorf("Start(Addr: %q) succeeded, want error", addr)
		}
	}
}

func TestPersonasIsACopy(t *testing.T) {
	m := idp.Personas()
	m["alice"].Groups[0] = "ml-platform"
	delete(m, "rita")
	again := idp.Personas()
	if again["alice"].Groups[0] != "data-scientists" || again["rita"].Subject != "rita" {
		t.Fatal("Personas() shares state between calls")
	}
	if len(again) != 9 {
		t.Fatalf("len(Personas()) = %d, want 9", len(again))
	}
}

func TestCloseIsIdempotent(t *testing.T) {
	p, err := idp.Start(t.Context(), idp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := http.Get(p.Issuer() + "/.well-known/openid-configuration"); err == nil {
		t.Error("provider still serving after Close")
	}
}

// TestJWKSDown: the fail switch makes the JWKS endpoint answer 503 until
// it is turned off; Rekey signs under a kid the JWKS does not hold.
func TestJWKSDown(t *testing.T) {
	ctx := context.Background()
	p, err := idp.Start(ctx, idp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	get := func() int {
		resp, err := http.Get(p.Issuer() + "/.well-known/jwks.json")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if c := get(); c != http.StatusOK {
		t.Fatalf("jwks: %d", c)
	}
	p.SetJWKSDown(true)
	if c := get(); c != http.StatusServiceUnavailable {
		t.Fatalf("jwks while down: %d, want 503", c)
	}
	p.SetJWKSDown(false)
	if c := get(); c != http.StatusOK {
		t.Fatalf("jwks back up: %d", c)
	}
	tok, err := p.Token(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	re, err := idp.Rekey(tok)
	if err != nil {
		t.Fatal(err)
	}
	if re == tok || strings.Split(re, ".")[1] != strings.Split(tok, ".")[1] {
		t.Fatal("Rekey must keep the payload and change the signature")
	}
}
