// Package devkeys gives tests and the dev stack a signing key per role and
// the trust file that lists them.
package devkeys

import (
	"fmt"
	"path/filepath"
	"testing"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
)

// Roles are the roles that sign events: authn, policy and the reaper (whose
// key the kill switch CLI uses too).
var Roles = []string{schemas.RoleAuthn, schemas.RolePolicy, schemas.RoleReaper}

// Set is a directory of keys and its trust file.
type Set struct {
	Dir       string
	TrustFile string
	trust     *signing.Trust
	signers   map[string]*signing.Signer
}

// Generate writes (or reuses) the keys of Roles in dir.
func Generate(dir string) (*Set, error) {
	path, err := signing.WriteKeySet(dir, Roles...)
	if err != nil {
		return nil, err
	}
	s := &Set{Dir: dir, TrustFile: path, signers: map[string]*signing.Signer{}}
	if s.trust, err = signing.LoadTrust(path); err != nil {
		return nil, err
	}
	for _, role := range Roles {
		key, err := signing.LoadOrCreateKey(s.KeyFile(role), false)
		if err != nil {
			return nil, err
		}
		if s.signers[role], err = signing.NewSigner(key); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// New is Generate in a test's temporary directory.
func New(tb testing.TB) *Set {
	tb.Helper()
	s, err := Generate(tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// KeyFile is role's private key file.
func (s *Set) KeyFile(role string) string { return filepath.Join(s.Dir, signing.KeyFileName(role)) }

// Signer is role's signer.
func (s *Set) Signer(role string) *signing.Signer {
	sg, ok := s.signers[role]
	if !ok {
		panic(fmt.Sprintf("devkeys: no key for role %q", role))
	}
	return sg
}

// Trust verifies every role's events.
func (s *Set) Trust() *signing.Trust { return s.trust }
