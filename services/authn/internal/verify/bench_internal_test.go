package verify

import (
	"context"
	"crypto"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/go-jose/go-jose/v4"
	"github.com/rs/zerolog"
)

// benchToken is a token of a realistic size (~1 KB) from the test issuer.
func benchToken(b *testing.B, ti *testIssuer, alg jose.SignatureAlgorithm) (string, crypto.PublicKey) {
	claims := ti.claims(func(c map[string]any) {
		c["exp"] = time.Now().Add(time.Hour).Unix()
		c["groups"] = []string{"data-scientists", "ml-platform", "dataset-contributors", "risk-team"}
		c["scope"] = "openid profile email model:retrain model:deploy dataset:update"
		c["acr"] = "urn:mace:incommon:iap:silver"
	})
	if alg == jose.ES256 {
		return sign(b, alg, ti.ecKey, "e1", claims), &ti.ecKey.PublicKey
	}
	return sign(b, alg, ti.key, ti.kid, claims), &ti.key.PublicKey
}

func benchAuth(b *testing.B, ti *testIssuer, cacheSize int, tok string) *Authenticator {
	a, err := NewAuthenticator(Config{Workers: 1, HTTPTimeout: 2 * time.Second, CacheSize: cacheSize,
		Issuers: []Issuer{{URL: ti.srv.URL, Audiences: []string{"aigov"}}}}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := a.Verify(context.Background(), tok); err != nil {
		b.Fatal(err)
	}
	return a
}

var benchAlgs = []jose.SignatureAlgorithm{jose.RS256, jose.ES256}

// BenchmarkVerifyCacheHit: a token verified before: hash, lookup, exp and
// key-still-published checks. Revocation (a KV read the Verifier does on
// every request) is not included; see BenchmarkRevocationLookup.
func BenchmarkVerifyCacheHit(b *testing.B) {
	for _, alg := range benchAlgs {
		b.Run(string(alg), func(b *testing.B) {
			ti := startIssuer(b)
			tok, _ := benchToken(b, ti, alg)
			a := benchAuth(b, ti, DefaultCacheSize, tok)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerifyCacheMiss: the full verification of a warm issuer, every
// time (cache off): parse, header and type checks, key by kid, signature,
// claim checks, principal mapping, session key.
func BenchmarkVerifyCacheMiss(b *testing.B) {
	for _, alg := range benchAlgs {
		b.Run(string(alg), func(b *testing.B) {
			ti := startIssuer(b)
			tok, _ := benchToken(b, ti, alg)
			a := benchAuth(b, ti, -1, tok)
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkGoOIDCBareVerify is the baseline: go-oidc's own verifier on the
// same token with a one-key StaticKeySet, and nothing else (no claim
// mapping, none of aigov's extra checks).
func BenchmarkGoOIDCBareVerify(b *testing.B) {
	for _, alg := range benchAlgs {
		b.Run(string(alg), func(b *testing.B) {
			ti := startIssuer(b)
			tok, pub := benchToken(b, ti, alg)
			v := oidc.NewVerifier(ti.srv.URL, &oidc.StaticKeySet{PublicKeys: []crypto.PublicKey{pub}},
				&oidc.Config{ClientID: "aigov", SupportedSigningAlgs: []string{string(alg)}})
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Verify(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
