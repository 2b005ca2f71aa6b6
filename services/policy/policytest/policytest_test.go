package policytest

import (
	"bytes"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// The repository's case files pass: what `aigov policy test policies/tests` runs.
func TestRepositoryCases(t *testing.T) {
	t.Parallel()
	var out bytes.Buffer
	ok, err := Report(&out, []string{"../../../policies/tests"}, true)
	if err != nil || !ok {
		t.Fatalf("policy cases failed (%v):\n%s", err, out.String())
	}
	t.Log(out.String())
}

// A wrong expectation fails with a diff naming what differs.
func TestFailureDiff(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	abs, _ := filepath.Abs("../../../policies")
	body := `{"policies": "` + abs + `", "cases": [{"name": "wrong", "principal": {"sub": "alice", "groups": ["data-scientists"]},
	  "request": {"action": "model.retrain", "resource": {"type": "Model", "id": "fraud-detector"}, "context": {"environment": "staging"}},
	  "expect": {"decision": "deny", "code": "policy_denied", "policy_ids": ["nope"]}}]}`
	if err := os.WriteFile(filepath.Join(dir, "c.json"), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	ok, err := Report(&out, []string{dir}, false)
	if err != nil || ok {
		t.Fatalf("ok=%v err=%v", ok, err)
	}
	for _, want := range []string{"FAIL", "decision: want deny/policy_denied, got allow", `policy_ids: want ["nope"], got ["data-scientists-retrain-staging"]`, "0 passed, 1 failed"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}

// The evaluator's per-action index and scope filter decide every case
// exactly as the plain path (all policies, Cedar alone) does: the same
// decision, codes, policy ids, errors, shadow outcome and reason.
func TestIndexedEqualsReference(t *testing.T) {
	t.Parallel()
	files, err := CaseFiles([]string{"../../../policies/tests"})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, f := range files {
		fast, err := RunFileWith(f, Options{})
		if err != nil {
			t.Fatal(err)
		}
		ref, err := RunFileWith(f, Options{Reference: true})
		if err != nil {
			t.Fatal(err)
		}
		for i := range fast {
			n++
			if !reflect.DeepEqual(fast[i].Got, ref[i].Got) {
				t.Errorf("%s: %s: indexed %+v, reference %+v", f, fast[i].Case, fast[i].Got, ref[i].Got)
			}
		}
	}
	if n < 20 {
		t.Fatalf("only %d cases compared", n)
	}
}
