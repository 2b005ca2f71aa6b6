// Package app holds the devstack commands: the demo behind `make run` and
// the load generator behind `make bench`.
package app

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// Demo starts the stack on fixed ports, plays the scenarios, prints the
// decisions and the audit answers, then serves until ctx ends.
func Demo(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devstack run", flag.ContinueOnError)
	dir := fs.String("dir", ".run", "working directory for data, logs, binaries and tokens (wiped at start)")
	maxAge := fs.Duration("session-max-age", 15*time.Second, "session max age, short so the demo can show one end")
	keep := fs.Bool("serve", true, "keep serving after the demo until Ctrl-C")
	if err := fs.Parse(args); err != nil {
		return err
	}
	root, err := stack.FindRoot()
	if err != nil {
		return err
	}
	work, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.RemoveAll(work); err != nil {
		return fmt.Errorf("wipe %s: %w", work, err)
	}
	bin := filepath.Join(work, "bin")
	fmt.Fprintln(out, "== building services")
	if err := stack.Build(ctx, root, bin); err != nil {
		return err
	}
	fmt.Fprintln(out, "== starting the stack")
	st, err := stack.Start(ctx, stack.Options{
		Root: root, Dir: work, BinDir: bin,
		NATSPort: 4222, IdPPort: 5556, ClickHousePort: 19000, HTTPBasePort: 8080,
		SessionMaxAge: *maxAge, Progress: out,
	})
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(out, "\n== shutting down")
		for _, err := range st.Stop() {
			fmt.Fprintln(out, "stop:", err)
		}
	}()

	fmt.Fprintln(out, "\n== playing the demo")
	results, err := demo.Play(ctx, st, *maxAge, out)
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	demo.PrintDecisions(out, results)
	ids := make([]string, 0, len(results))
	failed := 0
	for _, r := range results {
		ids = append(ids, r.Decision.RequestID)
		if !r.OK() {
			failed++
		}
	}
	fmt.Fprintln(out, "\n== audit analytics (ClickHouse, database aigov)")
	if err := demo.WaitAudited(ctx, st.DB, ids, 30*time.Second); err != nil {
		return err
	}
	for _, q := range demo.Queries("alice@aigov.example") {
		if err := demo.PrintQuery(ctx, out, st.DB, q); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d scenarios did not get the decision they must", failed)
	}
	if !*keep {
		return nil
	}
	return serve(ctx, st, work, out)
}

// writeEnvFiles writes one file per NATS role with the variables the aigov
// CLI reads, so a user can act as the operator or the reaper against the dev
// stack. The passwords are the dev stack's own, generated at start.
func writeEnvFiles(st *stack.Stack, dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	for _, role := range schemas.Roles() {
		env := fmt.Sprintf("AIGOV_NATS_URL=%s\nAIGOV_NATS_USER=%s\nAIGOV_NATS_PASSWORD=%s\n", st.NATS.URL(), role, st.NATS.Password(role))
		if err := os.WriteFile(filepath.Join(dir, role+".env"), []byte(env), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// serve keeps fresh persona tokens on disk and prints how to send a request.
func serve(ctx context.Context, st *stack.Stack, work string, out io.Writer) error {
	tokens := filepath.Join(work, "tokens")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return err
	}
	write := func() error {
		for name := range idp.Personas() {
			tok, err := st.IdP.Token(ctx, name)
			if err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(tokens, name+".jwt"), []byte(tok), 0o600); err != nil {
				return err
			}
		}
		return nil
	}
	if err := write(); err != nil {
		return fmt.Errorf("write tokens: %w", err)
	}
	if err := writeEnvFiles(st, filepath.Join(work, "env")); err != nil {
		return fmt.Errorf("write env files: %w", err)
	}
	rel, _ := filepath.Rel(st.Root, work)
	fmt.Fprintf(out, `
== aigov is serving (Ctrl-C to stop)
Fresh tokens for alice, carol, erin, rita and oscar are rewritten every 5s in %[1]s/tokens/.
Send your own request:

  %[1]s/bin/aigov authorize --password %[2]s \
      --token-file %[1]s/tokens/carol.jwt --action dataset.update \
      --resource Dataset:transactions-training --context '{"environment":"staging"}'

or with the nats CLI (user platform):

  nats --server %[3]s --user platform --password %[2]s --inbox-prefix _INBOX.platform \
      pub aigov.request.model.retrain -H "Authorization:Bearer $(cat %[1]s/tokens/alice.jwt)" \
      -H "Nats-Msg-Id:my-request-1" \
      '{"specversion":"1.0","id":"my-request-1","source":"cli","type":"dev.aigov.request.v1","time":"2026-01-01T00:00:00Z","data":{"action":"model.retrain","resource":{"type":"Model","id":"fraud-detector"},"context":{"environment":"staging"}}}'

The CLI reads its NATS user from the environment: %[1]s/env/<role>.env holds
the URL, user and dev password of each role (platform, operator, reaper, audit, ...),
e.g.  (set -a; . %[1]s/env/operator.env; %[1]s/bin/aigov entities list)
Verify the audit's hash chain against its signed checkpoints:
      (set -a; . %[1]s/env/audit.env; %[1]s/bin/aigov audit verify --clickhouse 127.0.0.1:%[4]d --public-key %[1]s/audit-signing.key.pub)

Audit:  clickhouse-client --port %[4]d --query "SELECT * FROM aigov.decisions FINAL ORDER BY event_time_us DESC LIMIT 5 FORMAT Vertical"
Logs:   %[1]s/logs/
`, rel, st.NATS.Password("platform"), st.NATS.URL(), 19000)
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := write(); err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintln(out, "refresh tokens:", err)
			}
		}
	}
}
