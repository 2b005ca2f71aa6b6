package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// TestGovernanceEndToEnd drives policy governance with the built aigov CLI
// against the running services and the dev IdP's tokens: validate and test
// the repository's set, a push denied without approval, a risk reviewer's
// approval of exactly that set, the push then activated and deciding, and
// an entity put visible in the next decision. The dev IdP's tokens carry
// amr ["pwd"] (no MFA), so the governance policies used here require none:
// policy.update needs a policy admin plus the risk reviewers' approval.
func TestGovernanceEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	root, bin := built.root, built.bin
	st, err := stack.Start(ctx, stack.Options{
		Root: root, Dir: t.TempDir(), BinDir: bin,
		Personas: map[string]idp.Persona{"paula": {Subject: "paula", Email: "paula@aigov.example", Name: "Paula Park", Groups: []string{"policy-admins"}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })

	tokenFile := func(persona string) string {
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
	aigov := func(args ...string) (int, string, string) {
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
	eventually := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(100 * time.Millisecond)
		}
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

	// The new set: the repository's plus one permit.
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
	extra := `@id("e2e-data-scientists-deploy-staging")
permit (principal in Group::"data-scientists", action == Action::"model.deploy", resource is Model)
when { context has environment && context.environment == "staging" };`
	if err := os.WriteFile(filepath.Join(dir, "zz-e2e.cedar"), []byte(extra), 0o600); err != nil {
		t.Fatal(err)
	}
	fraud := schemas.Resource{Type: "Model", ID: "fraud-detector"}
	staging := map[string]any{"environment": "staging"}
	before := authorize("alice", "model.deploy", fraud, staging)
	if before.Allowed() {
		t.Fatal("alice deploys to staging before the push")
	}

	// Without an approval the push is denied and the set stays.
	paula := tokenFile("paula")
	code, out, errOut := aigov(append(append([]string{"policy", "push", "--json", "--token-file", paula}, bus...), dir)...)
	d := decision("first push", out)
	hash, _ := d.Context[schemas.ContextPolicyHash].(string)
	if code != 3 || d.Code != schemas.CodePolicyDenied || !strings.HasPrefix(hash, "sha256:") || !strings.Contains(errOut, "aigov approve") {
		t.Fatalf("unapproved push: exit %d %s/%s %s\n%s", code, d.Decision, d.Code, d.Reason, errOut)
	}

	// rita, a risk reviewer, approves exactly that set.
	code, out, errOut = aigov(append([]string{"approve", "--json", "--token-file", tokenFile("rita"), "--action", schemas.ActionPolicyUpdate,
		"--resource", "PolicySet:active", "--context", `{"policy_hash":"` + hash + `"}`}, bus...)...)
	if g := decision("approve", out); code != 0 || !g.Allowed() || !strings.Contains(g.Reason, "risk-reviewers") {
		t.Fatalf("approve: exit %d %s/%s %s\n%s", code, g.Decision, g.Code, g.Reason, errOut)
	}

	// The same push, right away, is allowed and activates the set: policy
	// answered the approval only once its own view held it.
	code, out, _ = aigov(append(append([]string{"policy", "push", "--json", "--token-file", paula}, bus...), dir)...)
	pushed := decision("push", out)
	if code != 0 || !pushed.Allowed() || !slices.Equal(pushed.Approvals, []string{"risk-reviewers"}) || !strings.Contains(pushed.Reason, "activated policy set "+hash) {
		t.Fatalf("approved push: %s/%s %s approvals %v", pushed.Decision, pushed.Code, pushed.Reason, pushed.Approvals)
	}
	// And the next decision is under the new set: the push was answered
	// once the set was in force.
	after := authorize("alice", "model.deploy", fraud, staging)
	if after.PolicyVersion != hash || !after.Allowed() || !slices.Equal(after.PolicyIDs, []string{"e2e-data-scientists-deploy-staging"}) {
		t.Fatalf("under the new set: %s/%s %q version %s", after.Decision, after.Code, after.PolicyIDs, after.PolicyVersion)
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
	eventually("the new entity", func() bool {
		d := authorize("alice", "model.retrain", newModel, staging)
		return d.Allowed() && slices.Equal(d.PolicyIDs, []string{"data-scientists-retrain-staging"})
	})
	if code, out, _ := aigov(append(append([]string{"entities", "list"}, bus...), "Model")...); code != 0 || !strings.Contains(out, "e2e-model") {
		t.Fatalf("entities list: exit %d %s", code, out)
	}
}
