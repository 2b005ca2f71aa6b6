package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/cedar-policy/cedar-go"

	"github.com/aigov/aigov/schemas"
)

// generatedPolicies exercise every scope form the index and the scope
// filter reason about: action ==, in [list], in an action group, any
// action; principal ==, in, is, is in; resource ==, in, is, is in; shadow
// policies; and policies that error.
const generatedPolicies = `
@id("g-eq") permit (principal == User::"https://idp.test#oscar", action == Action::"dataset.read", resource);
@id("g-is") permit (principal is Workload, action in [Action::"agent.tool_call", Action::"endpoint.invoke"], resource is Endpoint);
@id("g-isin") forbid (principal is User in Group::"org", action, resource in Folder::"root");
@id("g-group-action") permit (principal in Group::"org", action in Action::"reads", resource);
@id("g-res-eq") permit (principal, action == Action::"model.retrain", resource == Model::"gen-3");
@id("g-res-isin") permit (principal in Group::"team-1", action, resource is Dataset in Folder::"team");
@id("g-error") forbid (principal, action == Action::"endpoint.invoke", resource) when { context.nope == 1 };
@id("g-shadow-any") @shadow("") forbid (principal in Group::"team-2", action, resource);
@id("g-shadow-tool") @shadow("") permit (principal, action == Action::"agent.tool_call", resource is Tool);
@id("g-dup") permit (principal, action in [Action::"model.deploy", Action::"model.deploy"], resource is Model) when { context has environment && context.environment == "staging" };
`

// The per-action index and the scope filter decide every generated request
// exactly as the plain path does, across the sample library plus generated
// policies, action groups, transitive groups and resource folders.
func TestIndexedEqualsReferenceGenerated(t *testing.T) {
	t.Parallel()
	files, err := ReadDir(policyDir)
	if err != nil {
		t.Fatal(err)
	}
	var policyFiles []File
	for _, f := range files {
		if strings.HasSuffix(f.Name, PolicySuffix) { // no schema: the generated policies use types it lacks
			policyFiles = append(policyFiles, f)
		}
	}
	var gen strings.Builder
	gen.WriteString(generatedPolicies)
	for i := range 50 {
		fmt.Fprintf(&gen, "@id(\"generated-%d\")\npermit (principal in Group::\"team-%d\", action == Action::\"model.retrain\", resource is Model)\nwhen { context has environment && context.environment == \"staging\" && resource.stage == \"candidate\" };\n", i, i%5)
	}
	policyFiles = append(policyFiles, File{Name: "zz-generated.cedar", Data: []byte(gen.String())})
	set, err := Compile(policyFiles)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(policyDir, "entities.json"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := ParseEntities(File{Name: "entities.json", Data: data})
	if err != nil {
		t.Fatal(err)
	}
	add := func(e cedar.Entity) { m[e.UID] = e }
	uid := func(typ, id string) cedar.EntityUID {
		return cedar.NewEntityUID(cedar.EntityType(typ), cedar.String(id))
	}
	add(cedar.Entity{UID: uid("Group", "team-1"), Parents: cedar.NewEntityUIDSet(uid("Group", "org"))})
	add(cedar.Entity{UID: uid("Group", "data-scientists"), Parents: cedar.NewEntityUIDSet(uid("Group", "org"))})
	add(cedar.Entity{UID: uid("Action", "dataset.read"), Parents: cedar.NewEntityUIDSet(uid("Action", "reads"))})
	add(cedar.Entity{UID: uid("Folder", "team"), Parents: cedar.NewEntityUIDSet(uid("Folder", "root"))})
	for i := range 100 {
		typ := []string{"Model", "Dataset", "Endpoint"}[i%3]
		e := cedar.Entity{UID: uid(typ, fmt.Sprintf("gen-%d", i)), Attributes: cedar.NewRecord(cedar.RecordMap{
			"environment": cedar.String([]string{"staging", "production"}[i%2]), "stage": cedar.String("candidate"),
			"owner_team": uid("Group", fmt.Sprintf("team-%d", i%5)), "sensitive": cedar.Boolean(i%4 == 0), "purpose": cedar.String("testing"),
		})}
		if i%7 == 0 {
			e.Parents = cedar.NewEntityUIDSet(uid("Folder", "team"))
		}
		add(e)
	}
	store := NewStore(m)
	// Every request carries the risk reviewers' approval, so the policies
	// that need one are exercised too.
	approvals := func(d string) []schemas.Approval {
		return []schemas.Approval{{Digest: d, ApproverID: "https://idp.test#rita", Teams: []string{"risk-reviewers"}, ExpiresAt: testNow.Add(time.Hour)}}
	}
	evaluators := [2]*Evaluator{}
	for i, ref := range []bool{false, true} {
		if evaluators[i], err = NewEvaluator(set, store, Options{Clock: func() time.Time { return testNow }, Approvals: approvals, Reference: ref}); err != nil {
			t.Fatal(err)
		}
	}

	actions := []string{"model.retrain", "model.update_hyperparameters", "model.deploy", "model.promote", "model.overwrite_weights",
		"dataset.update", "dataset.read", "dataset.promote", "endpoint.invoke", "feature_flag.toggle", "agent.tool_call",
		"policy.update", "approval.grant", "job.start", "job.heartbeat", "unknown.action"}
	var resources []cedar.EntityUID
	for u := range m {
		if u.Type != "Group" && u.Type != "Action" && u.Type != "Folder" {
			resources = append(resources, u)
		}
	}
	principals := []schemas.Principal{
		{Type: schemas.PrincipalUser, Subject: "alice", Groups: []string{"data-scientists"}},
		{Type: schemas.PrincipalUser, Subject: "oscar"},
		{Type: schemas.PrincipalUser, Subject: "erin", Groups: []string{"ml-platform", "team-2"}, AMR: []string{"otp"}, Scopes: []string{"models:overwrite_weights"}},
		{Type: schemas.PrincipalWorkload, Subject: "agent", Groups: []string{"team-1", "ml-platform"}, Scopes: []string{"tools:call"}},
		{Type: schemas.PrincipalUser, Subject: "carol", Groups: []string{"dataset-contributors", "team-3"}},
	}
	contexts := []map[string]any{nil, {"environment": "staging"}, {"environment": "production"}, {"environment": "production", "nope": 1}}
	n, allows := 0, 0
	for _, a := range actions {
		for _, r := range resources {
			for pi, p := range principals {
				for _, c := range contexts {
					p.ID, p.Issuer = schemas.PrincipalID(testIss, p.Subject), testIss
					v := schemas.Verified{RequestID: fmt.Sprintf("r-%d", n), Principal: p, VerifiedAt: testNow,
						Request: schemas.Request{Action: a, Resource: schemas.Resource{Type: string(r.Type), ID: string(r.ID)}, Context: c}}
					fast, ref := evaluators[0].Evaluate(v), evaluators[1].Evaluate(v)
					if !reflect.DeepEqual(fast, ref) {
						t.Fatalf("%s by principal #%d on %s with %v:\nindexed   %+v\nreference %+v", a, pi, r, c, fast.Decision, ref.Decision)
					}
					n++
					if fast.Decision.Allowed() {
						allows++
					}
				}
			}
		}
	}
	if allows == 0 || allows == n {
		t.Fatalf("%d allows of %d: the generated requests do not exercise both outcomes", allows, n)
	}
	t.Logf("%d generated requests, %d allowed, identical on both paths", n, allows)
}

// An allowed job.start carries the lease the reaper will enforce
// (schemas.LeaseFor); a denied one and every other action carry none.
func TestJobStartGrantsLease(t *testing.T) {
	t.Parallel()
	ev := loadSample(t)
	start := verified(t, "alice", schemas.ActionJobStart, "Job", "nightly-retrain", env("staging"))
	d := ev.Decide(start)
	want := schemas.LeaseFor(schemas.ActionJobStart, start.RequestID, testNow, schemas.DefaultLeaseTTL)
	if !d.Allowed() || want == nil || !reflect.DeepEqual(d.Lease, want) {
		t.Fatalf("job.start: %s %q lease %+v, want allow with %+v", d.Decision, d.PolicyIDs, d.Lease, want)
	}
	beat := verified(t, "alice", schemas.ActionJobHeartbeat, "Job", "nightly-retrain", map[string]any{"environment": "staging", schemas.ContextLeaseID: want.ID})
	if d := ev.Decide(beat); !d.Allowed() || d.Lease != nil {
		t.Fatalf("job.heartbeat: %s lease %+v, want allow without a new lease", d.Decision, d.Lease)
	}
	if d := ev.Decide(verified(t, "oscar", schemas.ActionJobStart, "Job", "nightly-retrain", nil)); d.Allowed() || d.Lease != nil {
		t.Fatalf("denied job.start: %s lease %+v", d.Decision, d.Lease)
	}
}
