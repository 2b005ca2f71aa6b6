package privacy_test

import (
	"bytes"
	"testing"

	"github.com/aigov/aigov/schemas/personal"
	"github.com/aigov/aigov/services/audit/privacy"
)

// BenchmarkEncryptField is the cost of sealing one personal field (an
// email address) under its subject's key: what the writer would add per
// encrypted field of an event, besides the key lookup.
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
