// Package privacy holds what the audit does to personal data before it is
// stored, shared with the aigov CLI: keyed pseudonyms (HMAC-SHA256 under a
// secret key file), so auditors can group and join rows by person while a
// dictionary attack on an email address needs the key.
package privacy

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// KeySize is the length of a pseudonym key in bytes.
const KeySize = 32

// PseudonymPrefix starts every pseudonym and every hash-masked value.
const PseudonymPrefix = "hmac-sha256:"

// Pseudonymizer derives pseudonyms under one secret key. The zero value has
// no key and derives nothing (Enabled reports false).
type Pseudonymizer struct {
	key []byte
}

// NewPseudonymizer returns a pseudonymizer keyed with key (KeySize bytes).
func NewPseudonymizer(key []byte) (Pseudonymizer, error) {
	if len(key) != KeySize {
		return Pseudonymizer{}, fmt.Errorf("pseudonym key: %d bytes, want %d", len(key), KeySize)
	}
	return Pseudonymizer{key: append([]byte(nil), key...)}, nil
}

// Enabled reports whether p has a key.
func (p Pseudonymizer) Enabled() bool { return len(p.key) == KeySize }

// sum is PseudonymPrefix and the hex HMAC-SHA256 of domain ‖ 0 ‖ parts
// joined by 0 bytes. The domain separates what is pseudonymized, so a
// subject's pseudonym never equals a masked value's.
func (p Pseudonymizer) sum(domain string, parts ...string) string {
	m := hmac.New(sha256.New, p.key)
	m.Write([]byte(domain))
	for _, s := range parts {
		m.Write([]byte{0})
		m.Write([]byte(s))
	}
	return PseudonymPrefix + hex.EncodeToString(m.Sum(nil))
}

// Subject is the pseudonym of the data subject issuer+subject, or "" when
// p has no key or the subject is empty.
func (p Pseudonymizer) Subject(issuer, subject string) string {
	if !p.Enabled() || subject == "" {
		return ""
	}
	return p.sum("aigov-subject-v1", issuer, subject)
}

// Value is the pseudonym of a masked value (its compact JSON text): equal
// values give equal pseudonyms under one key.
func (p Pseudonymizer) Value(compactJSON []byte) string {
	return p.sum("aigov-mask-v1", string(compactJSON))
}

// LoadOrCreateKey reads a pseudonym key file: the key in hex on one line.
// With create, a missing file is generated (mode 0600; for development).
// The key is never logged.
func LoadOrCreateKey(path string, create bool) ([]byte, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && create {
		return createKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read pseudonym key: %w", err)
	}
	key, err := hex.DecodeString(strings.TrimSpace(string(b)))
	if err != nil || len(key) != KeySize {
		return nil, fmt.Errorf("pseudonym key %s: want %d bytes in hex", path, KeySize)
	}
	return key, nil
}

func createKey(path string) ([]byte, error) {
	key := make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, fmt.Errorf("generate pseudonym key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create pseudonym key: %w", err)
	}
	// O_EXCL: two replicas starting together must agree on one key.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return LoadOrCreateKey(path, false)
	}
	if err != nil {
		return nil, fmt.Errorf("create pseudonym key: %w", err)
	}
	_, werr := f.WriteString(hex.EncodeToString(key) + "\n")
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr != nil {
		return nil, fmt.Errorf("write pseudonym key: %w", werr)
	}
	return key, nil
}
