package cli_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/aigov/internal/cli"
	"github.com/aigov/aigov/services/devenv/natsdev"
)

const repoPolicies = "../../../../policies"

func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := cli.Run(context.Background(), args, &out, &errOut, func(string) (string, bool) { return "", false })
	return code, out.String(), errOut.String()
}

// copyPolicies copies the repository's policy set into a temp dir.
func copyPolicies(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	paths, err := filepath.Glob(filepath.Join(repoPolicies, "*"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		if st, err := os.Stat(p); err != nil || st.IsDir() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// The repository's case files pass; a wrong expectation fails with a diff
// and exit 1.
func TestPolicyTest(t *testing.T) {
	t.Parallel()
	code, out, errOut := run(t, "policy", "test", filepath.Join(repoPolicies, "tests"))
	if code != cli.ExitAllow || !strings.Contains(out, "0 failed, 0 file errors") {
		t.Fatalf("exit %d\n%s%s", code, out, errOut)
	}
	dir := t.TempDir()
	abs, _ := filepath.Abs(repoPolicies)
	body := `{"policies": "` + abs + `", "cases": [{"name": "retrain in production", "principal": {"sub": "alice", "groups": ["data-scientists"]},
	  "request": {"action": "model.retrain", "resource": {"type": "Model", "id": "fraud-detector"}, "context": {"environment": "staging"}},
	  "expect": {"decision": "deny", "code": "policy_denied"}}]}`
	if err := os.WriteFile(filepath.Join(dir, "wrong.json"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ = run(t, "policy", "test", dir)
	if code != cli.ExitError || !strings.Contains(out, "FAIL") || !strings.Contains(out, "retrain in production") ||
		!strings.Contains(out, "decision: want deny/policy_denied, got allow") {
		t.Fatalf("failing case: exit %d\n%s", code, out)
	}
	if code, _, errOut := run(t, "policy", "test"); code != cli.ExitUsage || !strings.Contains(errOut, "name case files") {
		t.Fatalf("no args: exit %d %q", code, errOut)
	}
}

// validate accepts the repository's set and lists every error of a broken
// one: a parse error, a missing @id, a duplicate @id, a schema violation
// and an entity that does not conform.
func TestPolicyValidate(t *testing.T) {
	t.Parallel()
	code, out, _ := run(t, "policy", "validate", repoPolicies)
	if code != cli.ExitAllow || !strings.Contains(out, "valid,") || !strings.Contains(out, "version sha256:") {
		t.Fatalf("repository set: exit %d\n%s", code, out)
	}
	dir := copyPolicies(t)
	bad := `@id("data-scientists-retrain-staging") permit (principal, action == Action::"model.retrain", resource);
permit (principal, action == Action::"model.retrain", resource);
@id("typo") permit (principal, action == Action::"model.retrain", resource is Model) when { resource.enviroment == "staging" };
`
	if err := os.WriteFile(filepath.Join(dir, "zz-bad.cedar"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "zz-parse.cedar"), []byte(`@id("x") permit (principal, action, resource`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, _ = run(t, "policy", "validate", dir)
	for _, want := range []string{"duplicate @id \"data-scientists-retrain-staging\"", "has no @id", "enviroment", "zz-parse.cedar", "invalid, 4 error(s)"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if code != cli.ExitError {
		t.Errorf("exit %d, want %d", code, cli.ExitError)
	}
	if t.Failed() {
		t.Log(out)
	}

	// Entities are validated against the schema too.
	dir = copyPolicies(t)
	ents := `[{"uid": {"type": "Model", "id": "m"}, "attrs": {"environment": "staging"}, "parents": []}]`
	if err := os.WriteFile(filepath.Join(dir, "entities.json"), []byte(ents), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, _ := run(t, "policy", "validate", dir); code != cli.ExitError || !strings.Contains(out, `Model::"m"`) {
		t.Fatalf("bad entities: exit %d\n%s", code, out)
	}
}

// entities put/get/list/delete edit the entity bucket as the operator user.
func TestEntities(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	bus := []string{"--nats", srv.URL(), "--tls-ca", srv.CAFile(), "--password", srv.Password(schemas.RoleOperator)}
	file := filepath.Join(t.TempDir(), "e.json")
	body := `[{"uid": {"type": "Model", "id": "new model/1"}, "attrs": {"environment": "staging", "stage": "candidate", "owner_team": {"__entity": {"type": "Group", "id": "ml-platform"}}}, "parents": []},
	{"uid": {"type": "Dataset", "id": "d"}, "attrs": {"stage": "training", "owner_team": {"__entity": {"type": "Group", "id": "ml-platform"}}}, "parents": []}]`
	if err := os.WriteFile(file, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out, errOut := run(t, append(append([]string{"entities", "put"}, bus...), file)...); code != cli.ExitAllow || !strings.Contains(out, `put Model::"new model/1"`) {
		t.Fatalf("put: exit %d %s%s", code, out, errOut)
	}
	code, out, errOut := run(t, append(append([]string{"entities", "get"}, bus...), "Model:new model/1")...)
	if code != cli.ExitAllow || !strings.Contains(out, `"candidate"`) {
		t.Fatalf("get: exit %d %s%s", code, out, errOut)
	}
	code, out, _ = run(t, append(append([]string{"entities", "list"}, bus...), "Model")...)
	if code != cli.ExitAllow || !strings.Contains(out, "new model/1") || strings.Contains(out, `"Dataset"`) {
		t.Fatalf("list Model: exit %d %s", code, out)
	}
	if code, out, _ = run(t, append([]string{"entities", "list"}, bus...)...); code != cli.ExitAllow || strings.Count(out, "\n") != 2 {
		t.Fatalf("list: exit %d %s", code, out)
	}
	if code, out, errOut = run(t, append(append([]string{"entities", "delete"}, bus...), "Model:new model/1")...); code != cli.ExitAllow {
		t.Fatalf("delete: exit %d %s%s", code, out, errOut)
	}
	if code, _, errOut = run(t, append(append([]string{"entities", "get"}, bus...), "Model:new model/1")...); code != cli.ExitError || !strings.Contains(errOut, "not found") {
		t.Fatalf("get after delete: exit %d %s", code, errOut)
	}
	// The operator user may not touch other buckets: the platform's user may not even edit entities.
	plat := []string{"--nats", srv.URL(), "--tls-ca", srv.CAFile(), "--user", schemas.RolePlatform, "--password", srv.Password(schemas.RolePlatform), "--timeout", "2s"}
	if code, _, _ = run(t, append(append([]string{"entities", "put"}, plat...), file)...); code != cli.ExitError {
		t.Fatalf("put as platform: exit %d, want an error", code)
	}
	if code, _, errOut = run(t, append([]string{"entities", "get"}, bus...)...); code != cli.ExitUsage || !strings.Contains(errOut, "Type:id") {
		t.Fatalf("get without uid: exit %d %s", code, errOut)
	}
}

// push refuses an invalid set before staging anything; approve refuses a
// malformed request before connecting.
func TestPushAndApproveUsage(t *testing.T) {
	t.Parallel()
	dir := copyPolicies(t)
	if err := os.WriteFile(filepath.Join(dir, "zz.cedar"), []byte(`permit (principal, action, resource);`), 0o600); err != nil {
		t.Fatal(err)
	}
	code, _, errOut := run(t, "policy", "push", "--nats", "nats://127.0.0.1:1", dir)
	if code != cli.ExitError || !strings.Contains(errOut, "has no @id") || !strings.Contains(errOut, "nothing pushed") {
		t.Fatalf("invalid push: exit %d %s", code, errOut)
	}
	code, _, errOut = run(t, "approve", "--action", "model.deploy", "--resource", "churn")
	if code != cli.ExitUsage || !strings.Contains(errOut, "--resource Type:id") {
		t.Fatalf("approve without a type: exit %d %s", code, errOut)
	}
	code, _, errOut = run(t, "approve", "--nats", "nats://127.0.0.1:1", "--timeout", "500ms", "--action", "model.deploy", "--resource", "Model:churn-predictor", "--context", `{"environment":"production"}`)
	digest, _ := schemas.ApprovalDigest("model.deploy", schemas.Resource{Type: "Model", ID: "churn-predictor"}, map[string]any{"environment": "production"})
	if code != cli.ExitError || !strings.Contains(errOut, digest) || !strings.Contains(errOut, "legacy digest approval") {
		t.Fatalf("approve without a server: exit %d %s (want the digest %s and an error)", code, errOut, digest)
	}
}
