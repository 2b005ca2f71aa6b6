package verify_test

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/devenv/idp"
)

// BenchmarkVerify measures the per-token path of a warm authenticator on an
// RS256 token from the dev IdP: unverified iss peek, go-oidc parse and
// checks, key lookup by kid, RSA verification, claim mapping and the
// session key. Discovery and the JWKS fetch happen once, before the timer.
// Revocation lookup is not included; see BenchmarkRevocationLookup.
func BenchmarkVerify(b *testing.B) {
	ctx := context.Background()
	p, err := idp.Start(ctx, idp.Options{TokenTTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	tok, err := p.Token(ctx, "carol")
	if err != nil {
		b.Fatal(err)
	}
	a, err := verify.NewAuthenticator(verify.Config{
		Workers:     1,
		HTTPTimeout: 2 * time.Second,
		Issuers:     []verify.Issuer{{URL: p.Issuer(), Audiences: []string{p.ClientID()}}},
	}, zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := a.Verify(ctx, tok); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := a.Verify(ctx, tok); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
