package e2e

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// TestGovernanceEndToEnd drives policy governance with the built aigov CLI
// against the running services and the dev IdP's tokens: validate and test
// the repository's set; a push denied approval_required with an approval
// request; the pusher's own approval refused; another admin's push and a
// changed set each needing their own; a rejection ending one; two risk
// reviewers approving; the push then activated once and deciding; a
// replay of the used approval after a rollback denied approval_used; a
// request past its TTL expired; every lifecycle event in ClickHouse; and
// an entity put visible in the next decision. The dev IdP's tokens carry
// amr ["pwd"] (no MFA), so the governance policies used here require none.
func TestGovernanceEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	root, bin := built.root, built.bin
	st, err := stack.Start(ctx, stack.Options{
		Root: root, Dir: t.TempDir(), BinDir: bin,
		// paula pushes and, as a risk reviewer, may review others'
		// requests but never her own; pat is another policy admin.
		Personas: map[string]idp.Persona{
			"paula": {Subject: "paula", Email: "paula@aigov.example", Name: "Paula Park", Groups: []string{"policy-admins", "risk-reviewers"}},
			"pat":   {Subject: "pat", Email: "pat@aigov.example", Name: "Pat Poe", Groups: []string{"policy-admins"}},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })

	tokenFile := func(persona string) string { return personaToken(ctx, t, st, persona) }
	aigov := func(args ...string) (int, string, string) {
		t.Helper()
		return runCLI(ctx, t, bin, args...)
	}
	bus := []string{"--nats", st.NATS.URL(), "--tls-ca", st.NATS.CAFile(), "--trust-file", st.Keys.TrustFile, "--password", st.NATS.Password(schemas.RoleOperator)}
	decision := func(what, out string) schemas.Decision {
		t.Helper()
		var d schemas.Decision
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("%s: output %q: %v", what, out, err)
		}
		return d
	}
	authorize := func(persona, action string, res schemas.Resource, c map[string]any) schemas.Decision {
		t.Helper()
		tok, err := st.IdP.Token(ctx, persona)
		if err != nil {
			t.Fatal(err)
		}
		d, err := st.Client.Authorize(ctx, client.Call{Token: tok, Request: schemas.Request{Action: action, Resource: res, Context: c}})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}

	// validate and test the repository's set, as `make test` does.
	if code, out, errOut := aigov("policy", "validate", filepath.Join(root, "policies")); code != 0 || !strings.Contains(out, "valid") {
		t.Fatalf("policy validate: exit %d %s%s", code, out, errOut)
	}
	if code, out, errOut := aigov("policy", "test", filepath.Join(root, "policies", "tests")); code != 0 || !strings.Contains(out, " 0 failed") {
		t.Fatalf("policy test: exit %d %s%s", code, out, errOut)
	}

	// An allowed job.start carries its lease.
	job := authorize("alice", schemas.ActionJobStart, schemas.Resource{Type: "Job", ID: "nightly-retrain"}, map[string]any{"environment": "staging"})
	if !job.Allowed() || job.Lease == nil || job.Lease.ID == "" {
		t.Fatalf("job.start: %s/%s lease %+v", job.Decision, job.Code, job.Lease)
	}

	// The new set: the repository's plus one permit. writeSet copies the
	// repository's set with extra files.
	writeSet := func(extra map[string]string) string {
		dir := t.TempDir()
		paths, _ := filepath.Glob(filepath.Join(root, "policies", "*.cedar*"))
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		for name, text := range extra {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	dir := writeSet(map[string]string{"zz-e2e.cedar": `@id("e2e-data-scientists-deploy-staging")
permit (principal in Group::"data-scientists", action == Action::"model.deploy", resource is Model)
when { context has environment && context.environment == "staging" };`})
	fraud := schemas.Resource{Type: "Model", ID: "fraud-detector"}
	staging := map[string]any{"environment": "staging"}
	before := authorize("alice", "model.deploy", fraud, staging)
	if before.Allowed() {
		t.Fatal("alice deploys to staging before the push")
	}
	seedVersion := before.PolicyVersion
	push := func(persona, dir string) (int, schemas.Decision, string) {
		t.Helper()
		code, out, errOut := aigov(append(append([]string{"policy", "push", "--json", "--token-file", tokenFile(persona)}, bus...), dir)...)
		return code, decision("push by "+persona, out), errOut
	}
	review := func(verb, persona, id string) (int, schemas.Decision) {
		t.Helper()
		code, out, errOut := aigov(append([]string{"approvals", verb, id, "--json", "--token-file", tokenFile(persona)}, bus...)...)
		if errOut != "" && !strings.Contains(errOut, id) {
			t.Logf("approvals %s as %s: %s", verb, persona, errOut)
		}
		return code, decision(verb+" by "+persona, out)
	}

	// Without an approval the push is denied, the set stays, and an
	// approval request for exactly this set over the active one is opened.
	code, d, errOut := push("paula", dir)
	hash, _ := d.Context[schemas.ContextPolicyHash].(string)
	id := d.ApprovalID
	if code != 3 || d.Code != schemas.CodeApprovalRequired || !strings.HasPrefix(id, "apr-") || !strings.HasPrefix(hash, "sha256:") ||
		!strings.Contains(errOut, "aigov approvals approve "+id) {
		t.Fatalf("unapproved push: exit %d %s/%s %s\n%s", code, d.Decision, d.Code, d.Reason, errOut)
	}
	if code, out, _ := aigov(append([]string{"approvals", "show", id}, bus...)...); code != 0 || !strings.Contains(out, schemas.ActionPolicyUpdate) || !strings.Contains(out, hash) {
		t.Fatalf("approvals show: exit %d\n%s", code, out)
	}

	// paula is a risk reviewer too, but never of her own push.
	if code, g := review("approve", "paula", id); code != 3 || !strings.Contains(g.Reason, "self-approval refused") {
		t.Fatalf("self-approval: exit %d %s/%s %s", code, g.Decision, g.Code, g.Reason)
	}
	if code, g := review("approve", "rita", id); code != 0 || !strings.Contains(g.Reason, "risk-reviewers 1/2") {
		t.Fatalf("rita's approval: exit %d %s/%s %s", code, g.Decision, g.Code, g.Reason)
	}
	// Bound to the pusher and to the set: another admin's push of the same
	// set, or paula's push of a changed set, opens a request of its own.
	if code, d, _ := push("pat", dir); code != 3 || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == id {
		t.Fatalf("another admin's push: exit %d %s/%s %s", code, d.Decision, d.Code, d.Reason)
	}
	changed := writeSet(map[string]string{"zz-e2e.cedar": `@id("e2e-data-scientists-deploy-anywhere")
permit (principal in Group::"data-scientists", action == Action::"model.deploy", resource is Model);`})
	code, other, _ := push("paula", changed)
	if code != 3 || other.Code != schemas.CodeApprovalRequired || other.ApprovalID == id || other.ApprovalID == "" {
		t.Fatalf("push of a changed set: exit %d %s/%s %s", code, other.Decision, other.Code, other.Reason)
	}
	// ravi rejects that one: it is over, whatever rita thinks.
	if code, g := review("reject", "ravi", other.ApprovalID); code != 0 || !strings.Contains(g.Reason, "rejected approval request") {
		t.Fatalf("ravi's rejection: exit %d %s/%s %s", code, g.Decision, g.Code, g.Reason)
	}
	if code, g := review("approve", "rita", other.ApprovalID); code != 3 || !strings.Contains(g.Reason, "is rejected") {
		t.Fatalf("approval after the rejection: exit %d %s/%s %s", code, g.Decision, g.Code, g.Reason)
	}
	if code, g := review("approve", "ravi", id); code != 0 || !strings.Contains(g.Reason, "approved") {
		t.Fatalf("ravi's approval: exit %d %s/%s %s", code, g.Decision, g.Code, g.Reason)
	}

	// paula's retry of the same push is allowed and activates the set, once.
	code, pushed, _ := push("paula", dir)
	if code != 0 || !pushed.Allowed() || pushed.ApprovalID != id || !slices.Equal(pushed.Approvals, []string{"risk-reviewers"}) ||
		!strings.Contains(pushed.Reason, "use 1 of 1") || !strings.Contains(pushed.Reason, "activated policy set "+hash) {
		t.Fatalf("approved push: exit %d %s/%s %s approvals %v", code, pushed.Decision, pushed.Code, pushed.Reason, pushed.Approvals)
	}
	// And the next decision is under the new set: the push was answered
	// once the set was in force.
	after := authorize("alice", "model.deploy", fraud, staging)
	if after.PolicyVersion != hash || !after.Allowed() || !slices.Equal(after.PolicyIDs, []string{"e2e-data-scientists-deploy-staging"}) {
		t.Fatalf("under the new set: %s/%s %q version %s", after.Decision, after.Code, after.PolicyIDs, after.PolicyVersion)
	}
	// The same set again: nothing to activate, and nobody is asked.
	if code, d, _ := push("paula", dir); code != 3 || d.Code != schemas.CodePolicyInvalid || d.ApprovalID != "" {
		t.Fatalf("push of the active set: exit %d %s/%s %s", code, d.Decision, d.Code, d.Reason)
	}

	// Roll back to the repository's set (approved afresh), then replay the
	// first push: its approval was used, so it is denied approval_used.
	code, back, _ := push("paula", filepath.Join(root, "policies"))
	if code != 3 || back.Code != schemas.CodeApprovalRequired {
		t.Fatalf("rollback push: exit %d %s/%s %s", code, back.Decision, back.Code, back.Reason)
	}
	for _, r := range []string{"rita", "ravi"} {
		if code, g := review("approve", r, back.ApprovalID); code != 0 {
			t.Fatalf("%s's approval of the rollback: exit %d %s/%s %s", r, code, g.Decision, g.Code, g.Reason)
		}
	}
	if code, d, _ := push("paula", filepath.Join(root, "policies")); code != 0 || !d.Allowed() || !strings.Contains(d.Reason, "activated policy set "+seedVersion) {
		t.Fatalf("approved rollback: exit %d %s/%s %s", code, d.Decision, d.Code, d.Reason)
	}
	code, replay, _ := push("paula", dir)
	if code != 3 || replay.Code != schemas.CodeApprovalUsed || replay.ApprovalID == id || !strings.Contains(replay.Reason, "approval request "+id+" was already used") {
		t.Fatalf("replayed approval: exit %d %s/%s %s", code, replay.Decision, replay.Code, replay.Reason)
	}
	if d := authorize("alice", "model.deploy", fraud, staging); d.PolicyVersion != seedVersion || d.Allowed() {
		t.Fatalf("after the replay: %s under %s", d.Decision, d.PolicyVersion)
	}

	// A request past its TTL expires, announced, and a retry opens a new
	// one: policy restarted with a short TTL.
	st.SetServiceEnv("policy", []string{"AIGOV_APPROVAL_TTL=2s"})
	if err := st.RestartService(ctx, "policy"); err != nil {
		t.Fatal(err)
	}
	code, late, _ := push("pat", changed)
	if code != 3 || late.Code != schemas.CodeApprovalRequired || late.ApprovalID == "" {
		t.Fatalf("push under a 2 s TTL: exit %d %s/%s %s", code, late.Decision, late.Code, late.Reason)
	}
	time.Sleep(2500 * time.Millisecond)
	if code, g := review("approve", "rita", late.ApprovalID); code != 3 || !strings.Contains(g.Reason, "expired") {
		t.Fatalf("approval past the TTL: exit %d %s/%s %s", code, g.Decision, g.Code, g.Reason)
	}

	// Every lifecycle event of these requests is a row in ClickHouse.
	checkPushApprovalRows(ctx, t, st, map[string][]string{
		id:                {"approved", "granted", "granted", "requested", "used"},
		other.ApprovalID:  {"rejected", "requested"},
		back.ApprovalID:   {"approved", "granted", "granted", "requested", "used"},
		replay.ApprovalID: {"requested"},
		late.ApprovalID:   {"expired", "requested"},
	})
	var changes uint64
	if err := st.DB.QueryRow(ctx, `SELECT count() FROM aigov.policy_changes FINAL WHERE kind = 'policy' AND version IN (?, ?)
		AND type = ?`, hash, seedVersion, schemas.TypePolicyChanged).Scan(&changes); err != nil || changes < 2 {
		t.Fatalf("policy.changed rows for the push and the rollback: %d, %v", changes, err)
	}

	// An entity put is in the next decisions.
	newModel := schemas.Resource{Type: "Model", ID: "e2e-model"}
	if d := authorize("alice", "model.retrain", newModel, staging); d.Code != schemas.CodeUnknownResource {
		t.Fatalf("unknown model: %s/%s", d.Decision, d.Code)
	}
	ents := filepath.Join(t.TempDir(), "e.json")
	if err := os.WriteFile(ents, []byte(`{"uid": {"type": "Model", "id": "e2e-model"}, "attrs": {"environment": "staging", "stage": "candidate", "owner_team": {"__entity": {"type": "Group", "id": "ml-platform"}}}, "parents": []}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := aigov(append(append([]string{"entities", "put"}, bus...), ents)...); code != 0 {
		t.Fatalf("entities put: exit %d %s%s", code, out, errOut)
	}
	natsdev.WaitFor(t, 15*time.Second, "the new entity", func() bool {
		d := authorize("alice", "model.retrain", newModel, staging)
		return d.Allowed() && slices.Equal(d.PolicyIDs, []string{"data-scientists-retrain-staging"})
	})
	if code, out, _ := aigov(append(append([]string{"entities", "list"}, bus...), "Model")...); code != 0 || !strings.Contains(out, "e2e-model") {
		t.Fatalf("entities list: exit %d %s", code, out)
	}
}

// checkPushApprovalRows waits until ClickHouse holds, for each approval
// request, exactly the lifecycle rows want lists (sorted statuses).
func checkPushApprovalRows(ctx context.Context, t *testing.T, st *stack.Stack, want map[string][]string) {
	t.Helper()
	ids := slices.Collect(maps.Keys(want))
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := map[string][]string{}
		rows, err := st.DB.Query(ctx, `SELECT approval_id, arraySort(groupArray(status)) FROM aigov.approvals FINAL
			WHERE has(?, approval_id) AND action = 'policy.update' GROUP BY approval_id`, ids)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id string
			var statuses []string
			if err := rows.Scan(&id, &statuses); err != nil {
				t.Fatal(err)
			}
			got[id] = statuses
		}
		rows.Close()
		if maps.EqualFunc(got, want, slices.Equal) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("approval rows by request %v, want %v", got, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
