// Package commands holds the devstack commands: the demo behind `make run` and
// the load generator behind `make bench`.
package commands

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// The fixed ports of `make run`, which the README and the env files name.
const (
	demoNATSPort       = 4222
	demoIdPPort        = 5556
	demoClickHousePort = 19000
	demoHTTPBasePort   = 8080
	// demoGatewayPort serves the gateway's authorize API and MCP endpoint;
	// its health and metrics are on demoGatewayHealthPort (base+6: base+5
	// is the reaper's logout endpoint).
	demoGatewayPort       = 8090
	demoGatewayHealthPort = demoHTTPBasePort + 6
)

// demoPorts are the fixed ports the demo stack listens on: NATS, the IdP,
// ClickHouse, the four services' health ports and the reaper's logout
// endpoint (base+1..5).
func demoPorts() []int {
	out := []int{demoNATSPort, demoIdPPort, demoClickHousePort}
	for i := 1; i <= 5; i++ {
		out = append(out, demoHTTPBasePort+i)
	}
	return append(out, demoGatewayPort, demoGatewayHealthPort)
}

// Demo starts the stack on fixed ports, plays the scenarios, prints the
// decisions and the audit answers, then serves until ctx ends.
func Demo(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devstack run", flag.ContinueOnError)
	dir := fs.String("dir", ".run", "working directory for data, logs, binaries and tokens (wiped at start)")
	maxAge := fs.Duration("session-max-age", 15*time.Second, "session max age, short so the demo can show one end")
	keep := fs.Bool("serve", true, "keep serving after the demo until Ctrl-C")
	issuers := fs.String("issuers", "", "a file of further trusted OIDC issuers, as authn's AIGOV_OIDC_CONFIG (make run ISSUERS=...)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	root, err := stack.FindRoot()
	if err != nil {
		return err
	}
	if *issuers != "" {
		// Checked before anything starts; authn checks every field.
		if *issuers, err = filepath.Abs(*issuers); err != nil {
			return err
		}
		if _, err := os.Stat(*issuers); err != nil {
			return fmt.Errorf("-issuers (make run ISSUERS=): %w", err)
		}
	}
	work, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	// Never wipe a live stack: a second make run refuses, naming the first.
	lock, err := lockRun(work)
	if err != nil {
		return err
	}
	defer lock.release()
	if err := portsFree(demoPorts()...); err != nil {
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
		NATSPort: demoNATSPort, IdPPort: demoIdPPort, ClickHousePort: demoClickHousePort, HTTPBasePort: demoHTTPBasePort,
		SessionMaxAge: *maxAge, Progress: out, Issuers: *issuers,
		// The risk reviewers' approval notifications arrive at a local
		// receiver, which checks their signature; the flows print them.
		ApprovalWebhooks: []string{"risk-reviewers"},
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

	// The tokens and env files the banner, the README and the flows' CLI
	// commands use.
	if err := st.WriteTokens(ctx, filepath.Join(work, "tokens")); err != nil {
		return err
	}
	if err := stack.WriteEnvFiles(st.NATS, st.Keys, filepath.Join(work, "env")); err != nil {
		return fmt.Errorf("write env files: %w", err)
	}
	if err := startGateway(ctx, st, work, bin); err != nil {
		return err
	}

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
	fmt.Fprintln(out, "\n== governance flows, with the aigov CLI (each command as run)")
	steps, err := demo.PlayFlows(ctx, st, demo.Paths{Root: root, Work: work, Bin: bin}, out)
	if err != nil {
		return err
	}
	fmt.Fprintln(out)
	demo.PrintFlows(out, steps)
	for _, s := range steps {
		if !s.OK() {
			failed++
		}
	}
	fmt.Fprintf(out, "\n== an agent's MCP tool calls through the gateway (%s/mcp, a go-sdk client, persona tokens)\n", st.GatewayURL())
	calls := demo.PlayToolCalls(ctx, st, st.GatewayURL()+"/mcp", out)
	fmt.Fprintln(out)
	demo.PrintToolCalls(out, calls)
	for _, c := range calls {
		if !c.OK() {
			failed++
		}
		if c.RequestID != "" {
			ids = append(ids, c.RequestID)
		}
	}
	fmt.Fprintln(out, "\n== audit analytics (ClickHouse, database aigov)")
	if err := demo.WaitAudited(ctx, st.DB, ids, 30*time.Second); err != nil {
		return err
	}
	for _, q := range demo.Queries("alice") {
		if err := demo.PrintQuery(ctx, out, st.DB, q); err != nil {
			return err
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d scenarios, flow steps or tool calls did not get the decision they must", failed)
	}
	if !*keep {
		return nil
	}
	return serve(ctx, st, work, *issuers, out)
}

// serve keeps fresh persona tokens on disk and prints how to send a request.
func serve(ctx context.Context, st *stack.Stack, work, issuers string, out io.Writer) error {
	tokens := filepath.Join(work, "tokens")
	rel, _ := filepath.Rel(st.Root, work)
	fmt.Fprint(out, Banner(rel, 19000))
	if issuers != "" {
		fmt.Fprintf(out, "authn also trusts the issuers of %s (.run/authn-issuers.yaml is what it reads).\n", issuers)
	}
	if st.Webhooks != nil {
		fmt.Fprintf(out, "Approval notifications for the risk reviewers arrive at %s and are printed here.\n", st.Webhooks.URL("risk-reviewers"))
	}
	var seen uint64
	if st.Webhooks != nil {
		if notes := st.Webhooks.Since(0); len(notes) > 0 {
			seen = notes[len(notes)-1].Seq // the demo's, already printed
		}
	}
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if err := st.WriteTokens(ctx, tokens); err != nil && !errors.Is(err, context.Canceled) {
				fmt.Fprintln(out, "refresh tokens:", err)
			}
			if st.Webhooks != nil {
				for _, n := range st.Webhooks.Since(seen) {
					fmt.Fprintln(out, n)
					seen = n.Seq
				}
			}
		}
	}
}

// Banner is what `make run` prints once the stack serves: how to send a
// request with the aigov CLI and with the plain nats CLI (subscribe on the
// platform's inbox, publish with Aigov-Reply-To naming it), all over TLS
// with the dev CA, credentials taken from the role's env file so that no
// password is printed. run is the working directory relative to the
// repository root.
func Banner(run string, clickhousePort int) string {
	return fmt.Sprintf(`
== aigov is serving (Ctrl-C to stop)
Fresh tokens for %[4]s are rewritten every 5s in %[1]s/tokens/.
%[1]s/env/<role>.env holds what a client needs to act as each NATS role (platform,
operator, reaper, audit, ...): AIGOV_NATS_URL, AIGOV_NATS_USER, AIGOV_NATS_PASSWORD,
AIGOV_NATS_TLS_CA (NATS speaks only TLS; its dev CA is in %[1]s/nats/tls/), AIGOV_TRUST_FILE
(the services' public keys: a decision counts only when signed by authn or policy) and,
for authn, policy and the reaper, AIGOV_SIGNING_KEY (keys in %[1]s/keys/).

Send your own request (the CLI reads the env file):

  (set -a; . %[1]s/env/platform.env; %[1]s/bin/aigov authorize \
      --token-file %[1]s/tokens/carol.jwt --action dataset.update \
      --resource Dataset:transactions-training --context '{"environment":"staging"}')

or with the nats CLI as the platform: decisions arrive on its inbox.

  set -a; . %[1]s/env/platform.env; set +a
  nats --server "$AIGOV_NATS_URL" --tlsca "$AIGOV_NATS_TLS_CA" --user "$AIGOV_NATS_USER" --password "$AIGOV_NATS_PASSWORD" \
      --inbox-prefix _INBOX.platform sub _INBOX.platform.mine &
  nats --server "$AIGOV_NATS_URL" --tlsca "$AIGOV_NATS_TLS_CA" --user "$AIGOV_NATS_USER" --password "$AIGOV_NATS_PASSWORD" \
      --inbox-prefix _INBOX.platform pub aigov.request.model.retrain \
      -H "Authorization:Bearer $(cat %[1]s/tokens/alice.jwt)" -H "Nats-Msg-Id:my-request-1" \
      -H "%[3]s:_INBOX.platform.mine" \
      '{"specversion":"1.0","id":"my-request-1","source":"cli","type":"dev.aigov.request.v1","time":"2026-01-01T00:00:00Z","data":{"action":"model.retrain","resource":{"type":"Model","id":"fraud-detector"},"context":{"environment":"staging"}}}'
  kill %%1    # stops the background sub

Act as another role the same way, e.g.
      (set -a; . %[1]s/env/operator.env; %[1]s/bin/aigov entities list)
Verify the audit's hash chain against its signed checkpoints:
      (set -a; . %[1]s/env/audit.env; %[1]s/bin/aigov audit verify --clickhouse 127.0.0.1:%[2]d --public-key %[1]s/audit-signing.key.pub)

Audit:  clickhouse-client --port %[2]d --query "SELECT * FROM aigov.decisions FINAL ORDER BY event_time_us DESC LIMIT 5 FORMAT Vertical"
Logs:   %[1]s/logs/
`, run, clickhousePort, schemas.HeaderReplyTo, personaNames())
}

// personaNames lists the dev personas, sorted, as "a, b and c".
func personaNames() string {
	names := slices.Sorted(maps.Keys(idp.Personas()))
	if len(names) < 2 {
		return strings.Join(names, "")
	}
	return strings.Join(names[:len(names)-1], ", ") + " and " + names[len(names)-1]
}

// startGateway runs the gateway on its fixed ports, its MCP endpoint
// fronting the demo upstream (mcpdemo over stdio).
func startGateway(ctx context.Context, st *stack.Stack, work, bin string) error {
	cfg := demo.GatewayMCPConfig(fmt.Sprintf("http://127.0.0.1:%d/mcp", demoGatewayPort), st.IdP.Issuer(), filepath.Join(bin, "mcpdemo"))
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("gateway mcp config: %w", err)
	}
	path := filepath.Join(work, "gateway-mcp.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("gateway mcp config: %w", err)
	}
	if err := st.StartGateway(ctx, demoGatewayPort, demoGatewayHealthPort, "AIGOV_GATEWAY_MCP_CONFIG="+path); err != nil {
		return err
	}
	fmt.Fprintf(st.Progress(), "gateway     %s/v1/authorize (HTTP), %s/mcp (MCP; config %s)\n", st.GatewayURL(), st.GatewayURL(), path)
	return nil
}
