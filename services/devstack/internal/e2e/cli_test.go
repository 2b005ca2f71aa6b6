package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// personaToken writes a fresh dev IdP token of persona to a file of the
// test's and returns its path, for the CLI's --token-file.
func personaToken(ctx context.Context, t *testing.T, st *stack.Stack, persona string) string {
	t.Helper()
	tok, err := st.IdP.Token(ctx, persona)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), persona+".jwt")
	if err := os.WriteFile(f, []byte(tok), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// runCLI runs the built aigov CLI and returns its exit status, stdout and
// stderr; only a failure to run it at all fails the test.
func runCLI(ctx context.Context, t *testing.T, bin string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "aigov"), args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		return ee.ExitCode(), string(out), stderr.String()
	case err != nil:
		t.Fatal(err)
	}
	return 0, string(out), stderr.String()
}
