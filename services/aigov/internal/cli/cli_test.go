package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aigov/aigov/services/aigov/internal/cli"
	"github.com/aigov/aigov/services/devenv/devkeys"
)

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no command", nil, "usage: aigov"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"missing action", []string{"authorize", "--resource", "Model:m"}, "--action and --resource"},
		{"resource without type", []string{"authorize", "--action", "model.retrain", "--resource", "m"}, `--resource "m" is malformed`},
		{"bad action", []string{"authorize", "--action", "Retrain", "--resource", "Model:m"}, "action"},
		{"bad context", []string{"authorize", "--action", "model.retrain", "--resource", "Model:m", "--context", "[1]"}, "--context must be a JSON object"},
		{"missing token file", []string{"authorize", "--action", "model.retrain", "--resource", "Model:m", "--token-file", filepath.Join(dir, "none")}, "read token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var out, errOut bytes.Buffer
			code := cli.Run(context.Background(), tc.args, &out, &errOut, func(string) (string, bool) { return "", false })
			if code != cli.ExitUsage {
				t.Fatalf("exit %d, want %d (stderr %q)", code, cli.ExitUsage, errOut.String())
			}
			if !strings.Contains(errOut.String(), tc.want) {
				t.Fatalf("stderr %q does not say %q", errOut.String(), tc.want)
			}
		})
	}
}

// With no NATS server to talk to, authorize fails with an error exit, not a
// hang and not a deny.
func TestAuthorizeWithoutServer(t *testing.T) {
	t.Parallel()
	tok := filepath.Join(t.TempDir(), "t.jwt")
	if err := os.WriteFile(tok, []byte("x.y.z\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := cli.Run(context.Background(), []string{"authorize", "--nats", "nats://127.0.0.1:1", "--timeout", "500ms",
		"--action", "model.retrain", "--resource", "Model:m", "--token-file", tok, "--trust-file", devkeys.New(t).TrustFile}, &out, &errOut, func(string) (string, bool) { return "", false })
	if code != cli.ExitError || !strings.Contains(errOut.String(), "connect to nats://127.0.0.1:1") {
		t.Fatalf("exit %d stderr %q", code, errOut.String())
	}
}
