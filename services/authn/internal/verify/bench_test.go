package verify_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"

	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
)

// BenchmarkVerify measures the per-token path of a warm authenticator on an
// RS256 token from the dev IdP: unverified iss peek, go-oidc parse and
// checks, key lookup by kid, RSA verification, claim mapping and the
// session key. Discovery and the JWKS fetch happen once, before the timer.
// Revocation lookup (a KV round trip) is not included.
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

// BenchmarkRevocationLookup measures the KV read authn does on every
// request, cache hit or miss: a Get of a session key that is not revoked,
// on embedded JetStream (file storage).
func BenchmarkRevocationLookup(b *testing.B) {
	ctx := context.Background()
	srv, err := natsdev.Start(natsdev.Options{Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Shutdown()
	nc, err := srv.Connect(schemas.RoleAuthn)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	topo := schemas.NewTopology("")
	if err := topo.Ensure(ctx, js); err != nil {
		b.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, topo.BucketRevocations())
	if err != nil {
		b.Fatal(err)
	}
	key := schemas.SessionKey("https://idp.example", "sid-1", "alice", nil)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kv.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
			b.Fatal(err)
		}
	}
}
