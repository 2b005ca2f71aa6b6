package cli_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/aigov/internal/cli"
)

// Key rotation as docs/security.md tells it: gen, add the next key (both
// verify), remove the retired one (only the new one verifies).
func TestKeysRotation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	if code, out, errOut := run(t, "keys", "gen", "--dir", dir); code != cli.ExitAllow || !strings.Contains(out, "trust file") {
		t.Fatalf("gen: exit %d %s %s", code, out, errOut)
	}
	trust := filepath.Join(dir, signing.TrustFileName)
	oldKey := filepath.Join(dir, signing.KeyFileName(schemas.RolePolicy))
	next := filepath.Join(t.TempDir(), "policy-next.key")
	if _, err := signing.LoadOrCreateKey(next, true); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run(t, "keys", "add", "--trust-file", trust, "--role", schemas.RolePolicy, "--key", next+".pub", "--comment", "2027 key"); code != cli.ExitAllow {
		t.Fatalf("add: exit %d %s %s", code, out, errOut)
	}
	if code, _, _ := run(t, "keys", "add", "--trust-file", trust, "--role", schemas.RolePolicy, "--key", next); code != cli.ExitError {
		t.Fatalf("adding a trusted key again: exit %d", code)
	}
	signer := func(path string) *signing.Signer {
		k, err := signing.LoadOrCreateKey(path, false)
		if err != nil {
			t.Fatal(err)
		}
		s, err := signing.NewSigner(k)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	verifies := func(s *signing.Signer) bool {
		tr, err := signing.LoadTrust(trust)
		if err != nil {
			t.Fatal(err)
		}
		_, err = tr.Verify("aigov.decision.x", "id", []byte("b"), s.Sign("aigov.decision.x", "id", []byte("b")), schemas.RolePolicy)
		return err == nil
	}
	old, nxt := signer(oldKey), signer(next)
	if !verifies(old) || !verifies(nxt) {
		t.Fatal("during rotation both keys must verify")
	}
	code, out, _ := run(t, "keys", "list", "--trust-file", trust)
	if code != cli.ExitAllow || !strings.Contains(out, nxt.KeyID()+"  2027 key") || !strings.Contains(out, old.KeyID()) {
		t.Fatalf("list: exit %d\n%s", code, out)
	}
	if code, out, errOut := run(t, "keys", "remove", "--trust-file", trust, "--key-id", old.KeyID()); code != cli.ExitAllow {
		t.Fatalf("remove: exit %d %s %s", code, out, errOut)
	}
	if verifies(old) || !verifies(nxt) {
		t.Fatal("after removal only the new key may verify")
	}
	if code, _, _ := run(t, "keys", "remove", "--trust-file", trust, "--key-id", old.KeyID()); code != cli.ExitError {
		t.Fatalf("removing an unknown key: exit %d", code)
	}
	if code, _, _ := run(t, "keys", "add", "--trust-file", trust); code != cli.ExitUsage {
		t.Fatalf("add without role and key: exit %d", code)
	}
}

// authorize refuses to run without a trust file: it could not tell a
// decision from a forgery.
func TestAuthorizeNeedsATrustFile(t *testing.T) {
	t.Parallel()
	code, _, errOut := run(t, "authorize", "--nats", "nats://127.0.0.1:1", "--action", "model.retrain", "--resource", "Model:m")
	if code != cli.ExitUsage || !strings.Contains(errOut, "--trust-file") {
		t.Fatalf("exit %d stderr %q", code, errOut)
	}
}
