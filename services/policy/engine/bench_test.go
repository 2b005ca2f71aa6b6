package engine

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cedar-policy/cedar-go"

	"github.com/aigov/aigov/schemas"
)

// BenchmarkDecideLarge is the target: the sample library plus 50
// generated policies and 100 more entities, with entity assembly and the
// shadow evaluation included, configured as the service is (Pending says
// whether approvals exist for the request's action and resource; here
// none do, the common case, so no digest is computed).
func BenchmarkDecideLarge(b *testing.B) { benchLarge(b, Options{}) }

// BenchmarkDecideLargePendingApprovals is BenchmarkDecideLarge when some
// approval exists for the request's action and resource: the approval
// digest is computed and looked up on every decision.
func BenchmarkDecideLargePendingApprovals(b *testing.B) {
	benchLarge(b, Options{Pending: func(string, schemas.Resource) bool { return true }})
}

// BenchmarkDecideLargeReference is BenchmarkDecideLarge on the plain path
// (every policy, a map of entities): what the index saves.
func BenchmarkDecideLargeReference(b *testing.B) { benchLarge(b, Options{Reference: true}) }

func benchLarge(b *testing.B, opts Options) {
	files, err := ReadDir(policyDir)
	if err != nil {
		b.Fatal(err)
	}
	var gen []byte
	for i := range 50 {
		gen = fmt.Appendf(gen, "@id(\"generated-%d\")\npermit (principal in Group::\"team-%d\", action == Action::\"model.retrain\", resource is Model)\nwhen { context has environment && context.environment == \"staging\" && resource.stage == \"candidate\" };\n", i, i)
	}
	files = append(files, File{Name: "zz-generated.cedar", Data: gen})
	set, err := Compile(files)
	if err != nil {
		b.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(policyDir, "entities.json"))
	if err != nil {
		b.Fatal(err)
	}
	m, err := ParseEntities(File{Name: "entities.json", Data: data})
	if err != nil {
		b.Fatal(err)
	}
	for i := range 100 {
		uid := cedar.NewEntityUID("Model", cedar.String(fmt.Sprintf("generated-%d", i)))
		m[uid] = cedar.Entity{UID: uid, Attributes: cedar.NewRecord(cedar.RecordMap{
			"environment": cedar.String("staging"), "stage": cedar.String("candidate"),
			"owner_team": cedar.NewEntityUID("Group", cedar.String(fmt.Sprintf("team-%d", i%50))),
		})}
	}
	opts.Clock = func() time.Time { return testNow }
	opts.Approvals = func(string) []schemas.Approval { return nil }
	if opts.Pending == nil {
		opts.Pending = func(string, schemas.Resource) bool { return false }
	}
	ev, err := NewEvaluator(set, NewStore(m), opts)
	if err != nil {
		b.Fatal(err)
	}
	v := verified(b, "alice", "model.retrain", "Model", "generated-7", map[string]any{"environment": "staging"})
	b.ReportMetric(float64(len(set.PolicyIDs())+len(set.ShadowIDs())), "policies")
	b.ReportMetric(float64(len(m)), "entities")
	b.ReportAllocs()
	for b.Loop() {
		if d := ev.Decide(v); !d.Allowed() {
			b.Fatalf("got %s/%s %s", d.Decision, d.Code, d.Reason)
		}
	}
}
