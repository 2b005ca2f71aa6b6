package privacy_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aigov/aigov/services/audit/privacy"
)

func TestPseudonymsAreKeyed(t *testing.T) {
	t.Parallel()
	k1, k2 := bytes.Repeat([]byte{1}, privacy.KeySize), bytes.Repeat([]byte{2}, privacy.KeySize)
	p1, err := privacy.NewPseudonymizer(k1)
	if err != nil {
		t.Fatal(err)
	}
	p2, err := privacy.NewPseudonymizer(k2)
	if err != nil {
		t.Fatal(err)
	}
	const iss, sub, email = "https://idp.example", "alice", `"alice@example.com"`
	if a, b := p1.Subject(iss, sub), p1.Subject(iss, sub); a != b || !strings.HasPrefix(a, privacy.PseudonymPrefix) {
		t.Fatalf("same input gave %q and %q", a, b)
	}
	if p1.Subject(iss, sub) == p2.Subject(iss, sub) || p1.Value([]byte(email)) == p2.Value([]byte(email)) {
		t.Fatal("two keys gave the same pseudonym")
	}
	// The boundary between issuer and subject is part of the input.
	if p1.Subject(iss+"a", "lice") == p1.Subject(iss, "alice") {
		t.Fatal("issuer/subject boundary is not encoded")
	}
	// A subject's pseudonym is never a masked value's.
	if p1.Subject(iss, sub) == p1.Value([]byte(iss+"\x00"+sub)) {
		t.Fatal("domains are not separated")
	}
	bare := sha256.Sum256([]byte(email))
	if strings.Contains(p1.Value([]byte(email)), hex.EncodeToString(bare[:])) {
		t.Fatal("the masked value is the bare SHA-256")
	}
	if (privacy.Pseudonymizer{}).Subject(iss, sub) != "" {
		t.Fatal("a pseudonymizer without a key derived a pseudonym")
	}
	if _, err := privacy.NewPseudonymizer(k1[:16]); err == nil {
		t.Fatal("a 16-byte key was accepted")
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "keys", "pseudonym.key")
	if _, err := privacy.LoadOrCreateKey(path, false); err == nil {
		t.Fatal("a missing key file was accepted without create")
	}
	k, err := privacy.LoadOrCreateKey(path, true)
	if err != nil {
		t.Fatal(err)
	}
	again, err := privacy.LoadOrCreateKey(path, true)
	if err != nil || !bytes.Equal(k, again) {
		t.Fatalf("second load: %v, same key %v", err, bytes.Equal(k, again))
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, %v", fi.Mode(), err)
	}
	if err := os.WriteFile(path, []byte("not hex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := privacy.LoadOrCreateKey(path, true); err == nil {
		t.Fatal("a malformed key file was accepted")
	}
}
