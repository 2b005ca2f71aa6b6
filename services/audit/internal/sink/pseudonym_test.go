package sink

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/services/audit/privacy"
)

// testPseudonymizer is a pseudonymizer under a fixed test key.
func testPseudonymizer(tb testing.TB) privacy.Pseudonymizer {
	tb.Helper()
	p, err := privacy.NewPseudonymizer(bytes.Repeat([]byte{7}, privacy.KeySize))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

// TestMaskHashNeedsAKey: hash masking without a pseudonym key is refused,
// rather than falling back to an unkeyed hash.
func TestMaskHashNeedsAKey(t *testing.T) {
	t.Parallel()
	if _, err := newMasker([]string{"email"}, MaskHash, privacy.Pseudonymizer{}); err == nil {
		t.Fatal("hash masking without a key was accepted")
	}
	if _, err := newMasker([]string{"email"}, MaskRedact, privacy.Pseudonymizer{}); err != nil {
		t.Fatalf("redact masking needs no key: %v", err)
	}
}

// TestPseudonymsInClickHouse: on the real servers, two decisions of one
// person carry the same subject_pseudonym, the HMAC under the configured
// key; a masked email is that key's pseudonym; and no column of the rows
// holds the bare SHA-256 of the email.
func TestPseudonymsInClickHouse(t *testing.T) {
	t.Parallel()
	keyFile := t.TempDir() + "/pseudonym.key"
	h := startHarness(t, harnessOptions{maskFields: "owner", pseudonymKey: keyFile})
	const email = "alice@example.com"
	for i := 1; i <= 2; i++ {
		d := decisionN(i)
		d.Context = map[string]any{"owner": email, "environment": "staging"}
		h.publishDecision(d)
	}
	h.waitCount(2, 10*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	key, err := privacy.LoadOrCreateKey(keyFile, false)
	if err != nil {
		t.Fatal(err)
	}
	p, err := privacy.NewPseudonymizer(key)
	if err != nil {
		t.Fatal(err)
	}
	want := p.Subject("https://idp.example", "alice")
	if n := h.count("SELECT count() FROM "+h.db+".decisions FINAL WHERE subject_pseudonym = ?", want); n != 2 {
		t.Fatalf("%d decisions carry the subject's pseudonym %s, want 2", n, want)
	}
	if n := h.count("SELECT uniqExact(subject_pseudonym) FROM " + h.db + ".decisions FINAL"); n != 1 {
		t.Fatalf("%d distinct pseudonyms for one person", n)
	}
	masked := p.Value([]byte(`"` + email + `"`))
	if n := h.count("SELECT count() FROM "+h.db+".decisions FINAL WHERE visitParamExtractString(context, 'owner') = ?", masked); n != 2 {
		t.Fatalf("%d decisions hold the keyed pseudonym of the masked email, want 2", n)
	}
	var rows []string
	for _, q := range []string{
		"SELECT concat(context, ' ', subject_pseudonym) FROM " + h.db + ".decisions",
		"SELECT data FROM " + h.db + ".event_log",
	} {
		r, err := h.ch.Query(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		for r.Next() {
			var s string
			if err := r.Scan(&s); err != nil {
				t.Fatal(err)
			}
			rows = append(rows, s)
		}
		r.Close()
	}
	for _, in := range []string{email, `"` + email + `"`} {
		bare := sha256.Sum256([]byte(in))
		for _, s := range rows {
			if strings.Contains(s, hex.EncodeToString(bare[:])) {
				t.Fatalf("a row holds the bare SHA-256 of %s: %s", in, s)
			}
		}
	}
	if len(rows) < 4 {
		t.Fatalf("read %d rows, want at least 4", len(rows))
	}
}
