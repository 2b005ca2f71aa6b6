package signing_test

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas/signing"
)

func newSigner(t testing.TB) *signing.Signer {
	t.Helper()
	_, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := signing.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func trust(t testing.TB, roles map[string]*signing.Signer) *signing.Trust {
	t.Helper()
	var keys []signing.Key
	for role, s := range roles {
		keys = append(keys, signing.Key{Role: role, Public: s.Public()})
	}
	tr, err := signing.NewTrust(keys...)
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

func TestSignedEventVerifies(t *testing.T) {
	authn, policy := newSigner(t), newSigner(t)
	tr := trust(t, map[string]*signing.Signer{"authn": authn, "policy": policy})
	body := []byte(`{"id":"e1"}`)
	h := authn.Sign("aigov.verified.x", "e1", body)
	k, err := tr.Verify("aigov.verified.x", "e1", body, h, "authn")
	if err != nil || k.Role != "authn" || k.ID != authn.KeyID() {
		t.Fatalf("Verify = %+v, %v; want authn's key", k, err)
	}

	cases := []struct {
		name, subject, id, header string
		body                      []byte
		roles                     []string
		want                      signing.Status
	}{
		{"other subject", "aigov.verified.y", "e1", h, body, []string{"authn"}, signing.Invalid},
		{"other msg id", "aigov.verified.x", "e2", h, body, []string{"authn"}, signing.Invalid},
		{"other body", "aigov.verified.x", "e1", h, []byte(`{"id":"e1","x":1}`), []string{"authn"}, signing.Invalid},
		{"unsigned", "aigov.verified.x", "e1", "", body, []string{"authn"}, signing.Unsigned},
		{"no msg id", "aigov.verified.x", "", h, body, []string{"authn"}, signing.Unsigned},
		{"wrong role", "aigov.verified.x", "e1", h, body, []string{"policy"}, signing.Untrusted},
		{"garbage", "aigov.verified.x", "e1", "v1;kid=zz;sig=!!", body, []string{"authn"}, signing.Invalid},
		{"not v1", "aigov.verified.x", "e1", strings.Replace(h, "v1;", "v2;", 1), body, []string{"authn"}, signing.Invalid},
		{"unknown key", "aigov.verified.x", "e1", newSigner(t).Sign("aigov.verified.x", "e1", body), body, []string{"authn"}, signing.Untrusted},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := tr.Verify(c.subject, c.id, c.body, c.header, c.roles...)
			if got := signing.StatusOf(err); got != c.want {
				t.Fatalf("status %s (%v), want %s", got, err, c.want)
			}
		})
	}
}

// A batch's events each verify alone, and a path moved to another event of
// the batch does not.
func TestBatchesVerifyPerEvent(t *testing.T) {
	s := newSigner(t)
	tr := trust(t, map[string]*signing.Signer{"policy": s})
	const n = 300 // more than one batch can hold
	msgs := make([]*nats.Msg, n)
	for i := range msgs {
		msgs[i] = nats.NewMsg("aigov.decision.x")
		msgs[i].Data = []byte(fmt.Sprint("body-", i))
		msgs[i].Header.Set(nats.MsgIdHdr, fmt.Sprint("id-", i))
	}
	s.SignMsgs(msgs)
	headers := make([]string, n)
	for i, m := range msgs {
		headers[i] = m.Header.Get(signing.Header)
	}
	batched := 0
	for i, h := range headers {
		if strings.Contains(h, ";d=") {
			batched++
		}
		if _, err := tr.Verify("aigov.decision.x", fmt.Sprint("id-", i), []byte(fmt.Sprint("body-", i)), h, "policy"); err != nil {
			t.Fatalf("event %d: %v (header %s)", i, err, h)
		}
		// A fresh trust has no cached root: the Ed25519 check itself runs.
		if _, err := trust(t, map[string]*signing.Signer{"policy": s}).Verify("aigov.decision.x", fmt.Sprint("id-", i), []byte(fmt.Sprint("body-", i)), h, "policy"); err != nil {
			t.Fatalf("event %d, uncached: %v", i, err)
		}
		// Another event's header (same batch or not) does not verify this
		// event. (A trust that verified this event before accepts it under
		// any header of its key that leads to the same root: the event is
		// authentic, whatever header it is shown with.)
		j := (i + 1) % n
		if _, err := trust(t, map[string]*signing.Signer{"policy": s}).Verify("aigov.decision.x", fmt.Sprint("id-", i), []byte(fmt.Sprint("body-", i)), headers[j], "policy"); err == nil {
			t.Fatalf("event %d verified with event %d's header", i, j)
		}
	}
	if batched != n || s.Stats().Ed25519 != 2 {
		t.Fatalf("%d of %d events in batches under %d signatures, want all under 2", batched, n, s.Stats().Ed25519)
	}
}

func TestTrustFileRoundTrip(t *testing.T) {
	dir := t.TempDir()
	key, err := signing.LoadOrCreateKey(filepath.Join(dir, "authn.key"), true)
	if err != nil {
		t.Fatal(err)
	}
	s, err := signing.NewSigner(key)
	if err != nil {
		t.Fatal(err)
	}
	old := newSigner(t)
	path := filepath.Join(dir, "trust.json")
	if err := signing.WriteTrust(path, signing.Entry("authn", s.Public(), "new"), signing.Entry("authn", old.Public(), "old, until rotated out")); err != nil {
		t.Fatal(err)
	}
	tr, err := signing.LoadTrust(path)
	if err != nil {
		t.Fatal(err)
	}
	// Rotation: both keys are valid at once.
	for _, signer := range []*signing.Signer{s, old} {
		if _, err := tr.Verify("a.b", "id", []byte("x"), signer.Sign("a.b", "id", []byte("x")), "authn"); err != nil {
			t.Fatalf("key %s: %v", signer.KeyID(), err)
		}
	}
	if len(tr.Keys()) != 2 {
		t.Fatalf("keys %v", tr.Keys())
	}
	for _, bad := range []string{`{}`, `{"keys":[{"role":"authn","public_key":"AAAA"}]}`, `{"keys":[{"role":"","public_key":"` + signing.Entry("x", s.Public(), "").PublicKey + `"}]}`, `not json`} {
		if _, err := signing.ParseTrust([]byte(bad)); err == nil {
			t.Errorf("ParseTrust(%s) accepted", bad)
		}
	}
	// One key cannot be two roles'.
	if _, err := signing.NewTrust(signing.Key{Role: "authn", Public: s.Public()}, signing.Key{Role: "policy", Public: s.Public()}); err == nil {
		t.Fatal("a key listed for two roles was accepted")
	}
	if !errors.Is(func() error { _, err := tr.Verify("a.b", "id", []byte("x"), "", "authn"); return err }(), signing.ErrUnsigned) {
		t.Fatal("unsigned not ErrUnsigned")
	}
}

func BenchmarkSign(b *testing.B) {
	s := newSigner(b)
	body := make([]byte, 1000)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			s.Sign("aigov.decision.x", "id", body)
		}
	})
}

// BenchmarkVerifyInBatch is a verifier's cost per event of a batch of 64
// signed under one root, once the root is known: what policy, the audit
// and the SDK pay for most events under load.
func BenchmarkVerifyInBatch(b *testing.B) {
	s := newSigner(b)
	tr := trust(b, map[string]*signing.Signer{"policy": s})
	body := make([]byte, 1200)
	msgs := make([]*nats.Msg, 64)
	for i := range msgs {
		msgs[i] = nats.NewMsg("aigov.decision.model.retrain")
		msgs[i].Data = body
		msgs[i].Header.Set(nats.MsgIdHdr, fmt.Sprint("id-", i))
	}
	s.SignMsgs(msgs)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		m := msgs[i%len(msgs)]
		if _, err := tr.VerifyMsg(m.Subject, m.Header, m.Data, "policy"); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(tr.Stats().Busy.Nanoseconds())/float64(b.N), "measured-ns/op")
}

// BenchmarkSignMsgs is a signer's cost per event in batches of 16.
func BenchmarkSignMsgs(b *testing.B) {
	s := newSigner(b)
	body := make([]byte, 1200)
	msgs := make([]*nats.Msg, 16)
	for i := range msgs {
		msgs[i] = nats.NewMsg("aigov.decision.model.retrain")
		msgs[i].Data = body
		msgs[i].Header.Set(nats.MsgIdHdr, fmt.Sprint("id-", i))
	}
	b.ResetTimer()
	for i := 0; i < b.N; i += len(msgs) {
		s.SignMsgs(msgs)
	}
}
