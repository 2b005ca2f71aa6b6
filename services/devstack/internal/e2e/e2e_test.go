// Package e2e runs the four service binaries as processes against embedded
// NATS, a real ClickHouse process and the dev OIDC provider, and checks every
// demo decision and every audit row.
package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/devenv/proc"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

func TestPipelineEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	root, bin := built.root, built.bin
	const maxAge = 3 * time.Second
	st, err := stack.Start(ctx, stack.Options{
		Root: root, Dir: t.TempDir(), BinDir: bin,
		SessionMaxAge: maxAge, ReaperInterval: 200 * time.Millisecond,
		// make run's webhook receiver, failing the first delivery so
		// that the policy service's retry is what delivers it.
		ApprovalWebhooks: []string{"risk-reviewers"}, WebhookFailFirst: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			st.Stop()
		}
	})

	results, err := demo.Play(ctx, st, maxAge, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	version := ""
	for _, r := range results {
		sc, d := r.Scenario, r.Decision
		if r.Err != nil {
			t.Fatalf("%s: no decision: %v", sc.Name, r.Err)
		}
		if d.Decision != sc.Decision || d.Code != sc.Code {
			t.Errorf("%s: got %s/%q (%s), want %s/%q", sc.Name, d.Decision, d.Code, d.Reason, sc.Decision, sc.Code)
		}
		if d.Action != sc.Request.Action || d.Resource != sc.Request.Resource {
			t.Errorf("%s: decision is about %s on %s", sc.Name, d.Action, d.Resource)
		}
		wantStage := schemas.StagePolicy
		if sc.Code != schemas.CodePolicyDenied && sc.Code != "" {
			wantStage = schemas.StageAuthn
		}
		if d.Stage != wantStage {
			t.Errorf("%s: stage %q, want %q", sc.Name, d.Stage, wantStage)
		}
		if wantStage == schemas.StagePolicy {
			if d.Principal == nil || d.Principal.Subject != sc.Persona {
				t.Errorf("%s: principal %+v, want subject %s", sc.Name, d.Principal, sc.Persona)
			}
			if !strings.HasPrefix(d.PolicyVersion, "sha256:") {
				t.Errorf("%s: policy version %q", sc.Name, d.PolicyVersion)
			}
			if version == "" {
				version = d.PolicyVersion
			} else if d.PolicyVersion != version {
				t.Errorf("%s: policy version changed from %s to %s", sc.Name, version, d.PolicyVersion)
			}
			if d.Allowed() && len(d.PolicyIDs) == 0 {
				t.Errorf("%s: an allow must name its determining policies", sc.Name)
			}
		}
		if r.Token != "" && d.TokenFingerprint != schemas.Fingerprint(r.Token) {
			t.Errorf("%s: token fingerprint %q, want sha256 of the token", sc.Name, d.TokenFingerprint)
		}
	}

	cliResults := checkCLI(ctx, t, st, bin)

	// Bad input gets an audited deny, not a drop.
	bad := malformedRequest(ctx, t, st)
	if bad.Decision != schemas.Deny || bad.Code != schemas.CodeMalformedRequest {
		t.Fatalf("malformed request: got %s/%q, want deny/malformed_request", bad.Decision, bad.Code)
	}

	byID := map[string]schemas.Decision{bad.RequestID: bad}
	ids := []string{bad.RequestID}
	for _, r := range append(results, cliResults...) {
		byID[r.Decision.RequestID] = r.Decision
		ids = append(ids, r.Decision.RequestID)
	}
	if err := demo.WaitAudited(ctx, st.DB, ids, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	checkDecisionRows(ctx, t, st, byID)
	all := append(results, cliResults...)
	checkNoTokens(ctx, t, st, all)
	checkSessionRows(ctx, t, st, all)

	// The governance flows of make run, each step the aigov CLI as printed:
	// a production release with MFA and two risk reviewers' approval of
	// the approval request the deny opened, allowed once and denied
	// approval_used the second time, and a policy change pushed by a
	// policy admin, approved, active and deciding.
	if err := stack.WriteEnvFiles(st.NATS, st.Keys, filepath.Join(st.Dir, "env")); err != nil {
		t.Fatal(err)
	}
	steps, err := demo.PlayFlows(ctx, st, demo.Paths{Root: root, Work: st.Dir, Bin: bin}, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	if len(steps) != 13 {
		t.Fatalf("%d flow steps played, want 13", len(steps))
	}
	for _, s := range steps {
		if !s.OK() {
			t.Errorf("%s: %s: got %s %s %v (%v), want %s %s %s", s.Flow, s.Command, s.Decision, s.Code, s.Policies, s.Err,
				s.Step.Decision, s.Step.Code, s.Step.Policy)
		}
	}
	checkApprovalRows(ctx, t, st)
	checkWebhookNotes(t, st, steps)
	checkToolCalls(ctx, t, st)

	// Every service shuts down cleanly on SIGTERM (exit status 0).
	stopped = true
	if errs := st.Stop(); len(errs) > 0 {
		t.Fatalf("unclean shutdown: %v", errs)
	}
}

// checkCLI runs the aigov binary as a user would: exit 0 on allow, 3 on
// deny, the decision as JSON on stdout.
func checkCLI(ctx context.Context, t *testing.T, st *stack.Stack, bin string) []demo.Result {
	t.Helper()
	var out []demo.Result
	for _, tc := range []struct {
		persona  string
		wantExit int
		want     string
	}{
		{"carol", 0, schemas.Allow},
		{"alice", 3, schemas.Deny},
	} {
		token, err := st.IdP.Token(ctx, tc.persona)
		if err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(t.TempDir(), tc.persona+".jwt")
		if err := os.WriteFile(file, []byte(token), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.CommandContext(ctx, filepath.Join(bin, "aigov"), "authorize", "--json",
			"--nats", st.NATS.URL(), "--tls-ca", st.NATS.CAFile(), "--trust-file", st.Keys.TrustFile, "--user", schemas.RolePlatform, "--password", st.NATS.Password(schemas.RolePlatform),
			"--token-file", file, "--action", "dataset.update", "--resource", "Dataset:transactions-training",
			"--context", `{"environment":"staging"}`)
		stdout, err := cmd.Output()
		exit := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			exit = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		var d schemas.Decision
		if jerr := json.Unmarshal(stdout, &d); jerr != nil {
			t.Fatalf("aigov authorize as %s: exit %d, output %q: %v", tc.persona, exit, stdout, jerr)
		}
		if exit != tc.wantExit || d.Decision != tc.want || d.Principal == nil || d.Principal.Subject != tc.persona {
			t.Fatalf("aigov authorize as %s: exit %d decision %s (%s), want exit %d %s", tc.persona, exit, d.Decision, d.Code, tc.wantExit, tc.want)
		}
		out = append(out, demo.Result{Token: token, Decision: d})
	}
	return out
}

func malformedRequest(ctx context.Context, t *testing.T, st *stack.Stack) schemas.Decision {
	t.Helper()
	inbox := schemas.InboxPrefix(schemas.RolePlatform) + ".e2e-malformed"
	sub, err := st.Platform.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	msg := nats.NewMsg(schemas.NewSubjects("").Request("model.retrain"))
	msg.Header.Set(schemas.HeaderMsgID, "e2e-malformed-1")
	msg.Header.Set(schemas.HeaderReplyTo, inbox)
	msg.Data = []byte(`{"specversion":"1.0", this is not json`)
	if err := st.Platform.PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	reply, err := sub.NextMsgWithContext(ctx)
	if err != nil {
		t.Fatalf("no decision for a malformed request: %v", err)
	}
	var ev schemas.Event
	var d schemas.Decision
	if err := json.Unmarshal(reply.Data, &ev); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatal(err)
	}
	if d.RequestID != "e2e-malformed-1" {
		t.Fatalf("malformed request decided under id %q, want the Nats-Msg-Id", d.RequestID)
	}
	return d
}

// checkDecisionRows asserts one row per decision, equal field by field.
func checkDecisionRows(ctx context.Context, t *testing.T, st *stack.Stack, byID map[string]schemas.Decision) {
	t.Helper()
	rows, err := st.DB.Query(ctx, `SELECT request_id, action, resource_type, resource_id, toString(decision), code, stage,
		principal_id, issuer, subject, email, groups, policy_ids, policy_version, token_fingerprint, session_key, event_time_us,
		signer_key_id, toString(signature)
		FROM aigov.decisions FINAL`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	seen := map[string]bool{}
	for rows.Next() {
		var (
			id, action, rtype, rid, decision, code, stage, pid, iss, sub, email, version, fp, session, signer, sig string
			groups, policies                                                                                       []string
			at                                                                                                     uint64
		)
		if err := rows.Scan(&id, &action, &rtype, &rid, &decision, &code, &stage, &pid, &iss, &sub, &email, &groups, &policies, &version, &fp, &session, &at, &signer, &sig); err != nil {
			t.Fatal(err)
		}
		d, ok := byID[id]
		if !ok {
			t.Errorf("row for unknown request %s", id)
			continue
		}
		if seen[id] {
			t.Errorf("two rows for request %s", id)
		}
		seen[id] = true
		// The audit checked each decision's signature: authn's key for its
		// denies, policy's for the rest.
		wantSigner := st.Keys.Signer(schemas.RolePolicy).KeyID()
		if d.Stage == schemas.StageAuthn {
			wantSigner = st.Keys.Signer(schemas.RoleAuthn).KeyID()
		}
		if sig != string(signing.Valid) || signer != wantSigner {
			t.Errorf("row %s: signature %q by %q, want valid by %s", id, sig, signer, wantSigner)
		}
		want := []string{d.Action, d.Resource.Type, d.Resource.ID, d.Decision, string(d.Code), d.Stage, d.PolicyVersion, d.TokenFingerprint, d.SessionKey}
		got := []string{action, rtype, rid, decision, code, stage, version, fp, session}
		if !slices.Equal(got, want) {
			t.Errorf("row %s:\n got  %q\n want %q", id, got, want)
		}
		if !slices.Equal(policies, d.PolicyIDs) && !(len(policies) == 0 && len(d.PolicyIDs) == 0) {
			t.Errorf("row %s: policy ids %q, want %q", id, policies, d.PolicyIDs)
		}
		if p := d.Principal; p != nil {
			if pid != p.ID || iss != p.Issuer || sub != p.Subject || email != p.Email || !slices.Equal(groups, p.Groups) {
				t.Errorf("row %s: principal (%s %s %s %s %q), want %+v", id, pid, iss, sub, email, groups, *p)
			}
		}
		if wantAt := uint64(d.Timings.DecidedAt.UnixMicro()); at != wantAt {
			t.Errorf("row %s: event_time_us %d, want %d (sub-second time must survive)", id, at, wantAt)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != len(byID) {
		t.Errorf("%d decision rows, want exactly %d", len(seen), len(byID))
	}
}

// checkNoTokens asserts no raw token reached any audit table.
func checkNoTokens(ctx context.Context, t *testing.T, st *stack.Stack, results []demo.Result) {
	t.Helper()
	for _, r := range results {
		if r.Token == "" {
			continue
		}
		sig := r.Token[strings.LastIndexByte(r.Token, '.')+1:]
		for _, q := range []string{
			`SELECT count() FROM aigov.event_log WHERE position(data, ?) > 0`,
			`SELECT count() FROM aigov.decisions WHERE position(context, ?) > 0 OR position(reason, ?) > 0`,
		} {
			args := []any{sig}
			if strings.Count(q, "?") == 2 {
				args = append(args, sig)
			}
			var n uint64
			if err := st.DB.QueryRow(ctx, q, args...).Scan(&n); err != nil {
				t.Fatal(err)
			}
			if n != 0 {
				t.Errorf("%s: the raw token appears in %d audit rows (%s)", r.Scenario.Name, n, q)
			}
		}
	}
}

// checkSessionRows asserts one started row per verified session and the
// expiry of the long job's session.
func checkSessionRows(ctx context.Context, t *testing.T, st *stack.Stack, results []demo.Result) {
	t.Helper()
	sessions := map[string]bool{}
	var longJob string
	for _, r := range results {
		if r.Decision.Stage == schemas.StagePolicy {
			key, err := demo.SessionKeyOf(r.Token)
			if err != nil {
				t.Fatal(err)
			}
			sessions[key] = true
			if r.Decision.SessionKey != key {
				t.Errorf("%s: decision session key %s, want %s", r.Scenario.Name, r.Decision.SessionKey, key)
			}
		}
		if r.Scenario.Token == demo.TokenAfterSessionEnd {
			longJob, _ = demo.SessionKeyOf(r.Token)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	var started []string
	for time.Now().Before(deadline) {
		started = started[:0]
		rows, err := st.DB.Query(ctx, `SELECT session_key FROM aigov.session_events FINAL WHERE type = 'started'`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				t.Fatal(err)
			}
			started = append(started, k)
		}
		rows.Close()
		if len(started) >= len(sessions) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(started) != len(sessions) {
		t.Errorf("%d session started rows, want exactly %d", len(started), len(sessions))
	}
	for _, k := range started {
		if !sessions[k] {
			t.Errorf("started row for unknown session %s", k)
		}
	}
	var reason string
	if err := st.DB.QueryRow(ctx, `SELECT reason FROM aigov.session_events FINAL WHERE type = 'expired' AND session_key = ?`, longJob).Scan(&reason); err != nil {
		t.Fatalf("no expired row for the long job's session %s: %v", longJob, err)
	}
	if reason != schemas.ReasonMaxAge {
		t.Errorf("long job's session ended for %q, want %q", reason, schemas.ReasonMaxAge)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// checkApprovalRows: the production release's approval request reached
// ClickHouse as its lifecycle, one row per event: opened twice (the first
// deny, and the deny after its single use), granted by rita and ravi,
// approved once, used once by fiona's allowed deploy.
func checkApprovalRows(ctx context.Context, t *testing.T, st *stack.Stack) {
	t.Helper()
	want := map[string]uint64{"requested": 2, "granted": 2, "approved": 1, "used": 1}
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := map[string]uint64{}
		rows, err := st.DB.Query(ctx, `SELECT status, count() FROM aigov.approvals FINAL
			WHERE approval_id LIKE 'apr-%' AND action = 'model.deploy' GROUP BY status`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var status string
			var n uint64
			if err := rows.Scan(&status, &n); err != nil {
				t.Fatal(err)
			}
			got[status] = n
		}
		rows.Close()
		if maps.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("approval request rows by status %v, want %v", got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkWebhookNotes: every approval request the flows opened reached the
// risk reviewers' webhook receiver, signed (the receiver verified each
// with the team's secret), with its grants and its approval; the first
// delivery was refused 503 on purpose, so one arrived by retry; no
// delivery was refused as unsigned or stale.
func checkWebhookNotes(t *testing.T, st *stack.Stack, steps []demo.StepResult) {
	t.Helper()
	notes := st.Webhooks.Notes()
	events := map[string][]string{}
	for _, n := range notes {
		if n.Team != "risk-reviewers" || n.Type != schemas.TypeOfApprovalEvent(n.Event) || n.Delivery == "" {
			t.Errorf("webhook note %+v", n)
		}
		events[n.ApprovalID] = append(events[n.ApprovalID], n.Event)
	}
	opened := 0
	for _, s := range steps {
		if s.Code != string(schemas.CodeApprovalRequired) && s.Code != string(schemas.CodeApprovalUsed) {
			continue
		}
		opened++
		if !slices.Contains(events[s.ApprovalID], schemas.ApprovalRequested) {
			t.Errorf("%s: approval request %q: webhook events %v, no requested", s.Command, s.ApprovalID, events[s.ApprovalID])
		}
	}
	approved := 0
	for _, evs := range events {
		if slices.Contains(evs, schemas.ApprovalApproved) && slices.Equal(slices.DeleteFunc(slices.Clone(evs), func(e string) bool { return e != schemas.ApprovalGranted }), []string{"granted", "granted"}) {
			approved++
		}
	}
	// The release and the policy change: each approved by two reviewers.
	if opened < 2 || approved != 2 {
		t.Errorf("%d approval_required steps, %d requests notified as granted twice and approved: %v", opened, approved, events)
	}
	if tries, rejected := st.Webhooks.Stats(); tries != len(notes)+1 || rejected != 0 {
		t.Errorf("webhook receiver: %d tries for %d notes (want one more: the refused first), %d refused as unsigned", tries, len(notes), rejected)
	}
}

// checkToolCalls plays the demo's MCP tool calls through the gateway, as
// make run does (mcpdemo over stdio behind it): each row gets the decision
// and code it must, the allowed ones the upstream's result, and every call
// is an audited agent.tool_call.
func checkToolCalls(ctx context.Context, t *testing.T, st *stack.Stack) {
	t.Helper()
	port, err := proc.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := demo.GatewayMCPConfig(fmt.Sprintf("http://127.0.0.1:%d/mcp", port), st.IdP.Issuer(), filepath.Join(built.bin, "mcpdemo"))
	b, _ := json.Marshal(cfg)
	path := filepath.Join(st.Dir, "gateway-mcp.json")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := st.StartGateway(ctx, port, 0, "AIGOV_GATEWAY_MCP_CONFIG="+path); err != nil {
		t.Fatal(err)
	}
	calls := demo.PlayToolCalls(ctx, st, st.GatewayURL()+"/mcp", testWriter{t})
	var table strings.Builder
	demo.PrintToolCalls(&table, calls)
	t.Logf("agent tool calls:\n%s", table.String())
	var ids []string
	allowed, denied := 0, map[string]int{}
	for _, c := range calls {
		if !c.OK() {
			t.Errorf("%s (%s %s): got %s %q %q (%v), want %s %q %q", c.Call.Name, c.Call.Persona, c.Call.Tool,
				c.Decision, c.Code, c.Result, c.Err, c.Call.Decision, c.Call.Code, c.Call.Want)
		}
		if c.Call.Tool == "" {
			continue
		}
		ids = append(ids, c.RequestID)
		if c.Decision == schemas.Allow {
			allowed++
		} else {
			denied[c.Code]++
		}
	}
	// The rows the demo must show: the upstream's answers, a write query
	// and another group's tool denied by policy, a production deploy held
	// for approval.
	for _, want := range []string{"fraud-detector (staging, candidate)", "1 row (read_only=true): SELECT count() FROM features", "deployed fraud-detector 7 to staging"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("the tool calls' table lacks the upstream's %q", want)
		}
	}
	if allowed != 3 || denied[string(schemas.CodePolicyDenied)] != 3 || denied[string(schemas.CodeApprovalRequired)] != 1 {
		t.Errorf("tool calls: %d allowed, denies %v; want 3 allowed, 3 policy_denied, 1 approval_required", allowed, denied)
	}
	if err := demo.WaitAudited(ctx, st.DB, ids, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var n uint64
	if err := st.DB.QueryRow(ctx, `SELECT count() FROM aigov.decisions FINAL WHERE has(?, request_id) AND action = 'agent.tool_call' AND resource_type = 'Tool'`, ids).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != uint64(len(ids)) {
		t.Errorf("%d agent.tool_call audit rows for %d tool calls", n, len(ids))
	}
}
