package privacy_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/aigov/aigov/services/servicekit/topology"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/audit/privacy"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/personal"
)

// BenchmarkEncryptField is the cost of sealing one personal field (an
// email address) under a raw key, the cipher set up per call (what the
// export does; authn's cached personal.Key is BenchmarkSealEvent).
func BenchmarkEncryptField(b *testing.B) {
	key := bytes.Repeat([]byte{3}, personal.KeySize)
	id := personal.SubjectKeyID("https://idp.example", "alice")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := personal.Encrypt(key, id, "email", "alice@example.com"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSubjectPseudonym is the HMAC pseudonym the writer now computes
// for every decision and session event.
func BenchmarkSubjectPseudonym(b *testing.B) {
	p, err := privacy.NewPseudonymizer(bytes.Repeat([]byte{3}, privacy.KeySize))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = p.Subject("https://idp.example", "alice")
	}
}

// BenchmarkSealEvent is what authn adds to each verified event with
// encryption on: the principal's email and name and one personal context
// field sealed under the subject's key, the key a cache hit (the steady
// state: one KV round trip per subject and process, at its first event).
func BenchmarkSealEvent(b *testing.B) {
	s, p, c := sealFixture(b)
	b.ReportAllocs()
	for b.Loop() {
		q := p
		if _, err := s.Seal(context.Background(), &q, c); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkOpenEvent is what policy adds to each decision: opening the
// same three fields, the key a cache hit.
func BenchmarkOpenEvent(b *testing.B) {
	s, p, c := sealFixture(b)
	sealed, err := s.Seal(context.Background(), &p, c)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		q := p
		if _, err := personal.Open(context.Background(), s.Keys(), &q, sealed); err != nil {
			b.Fatal(err)
		}
	}
}

func sealFixture(b *testing.B) (*personal.Sealer, schemas.Principal, map[string]any) {
	b.Helper()
	ns := natsdev.StartT(b, natsdev.Options{})
	_, js := ns.ConnectT(b, natsdev.AdminUser)
	ctx, cancel := context.WithCancel(context.Background())
	kv, err := js.KeyValue(ctx, topology.New("aigov").BucketSubjectKeys())
	if err != nil {
		b.Fatal(err)
	}
	cache := personal.NewCache(kv, 0)
	done := make(chan struct{})
	go func() { defer close(done); _ = cache.Run(ctx, nil) }()
	b.Cleanup(func() { cancel(); <-done })
	for !cache.Watching() {
		time.Sleep(time.Millisecond)
	}
	const iss = "https://idp.example"
	p := schemas.Principal{ID: schemas.PrincipalID(iss, "alice"), Issuer: iss, Subject: "alice", Email: "alice@example.com", Name: "Alice Archer"}
	return personal.NewSealer(cache, []string{"patient_ref"}), p, map[string]any{"environment": "staging", "patient_ref": "PR-4711"}
}
