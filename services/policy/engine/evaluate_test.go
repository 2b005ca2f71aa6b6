package engine

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cedar-policy/cedar-go"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/idp"
)

const (
	policyDir = "../../../policies"
	testIss   = "https://idp.test"
)

var testNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func loadSample(tb testing.TB) *Evaluator {
	tb.Helper()
	set, err := LoadDir(policyDir)
	if err != nil {
		tb.Fatalf("load sample policies: %v", err)
	}
	store, err := LoadStore(filepath.Join(policyDir, "entities.json"))
	if err != nil {
		tb.Fatal(err)
	}
	ev, err := NewEvaluator(set, store, Options{Clock: func() time.Time { return testNow }})
	if err != nil {
		tb.Fatal(err)
	}
	return ev
}

// verified builds the event authn would emit for a dev persona.
func verified(tb testing.TB, persona, action, resType, resID string, ctx map[string]any) schemas.Verified {
	tb.Helper()
	p, ok := idp.Personas()[persona]
	if !ok {
		tb.Fatalf("no persona %q", persona)
	}
	authTime := testNow.Add(-10 * time.Minute)
	return schemas.Verified{
		RequestID: "req-" + persona + "-" + action,
		Source:    "test",
		Request:   schemas.Request{Action: action, Resource: schemas.Resource{Type: resType, ID: resID}, Context: ctx},
		Principal: schemas.Principal{
			ID: schemas.PrincipalID(testIss, p.Subject), Type: schemas.PrincipalUser,
			Issuer: testIss, Subject: p.Subject, Email: p.Email, Name: p.Name,
			Groups: p.Groups, Scopes: []string{"openid", "email", "profile", "groups"},
			AMR: []string{"pwd"}, AuthTime: &authTime, IssuedAt: authTime, ExpiresAt: testNow.Add(time.Hour),
		},
		SessionKey:       "sk",
		TokenFingerprint: schemas.Fingerprint("token"),
		ReceivedAt:       testNow.Add(-2 * time.Millisecond),
		VerifiedAt:       testNow.Add(-1 * time.Millisecond),
	}
}

func env(e string) map[string]any { return map[string]any{"environment": e} }

func TestSamplePolicies(t *testing.T) {
	t.Parallel()
	ev := loadSample(t)
	workload := func(scopes ...string) func(*schemas.Verified) {
		return func(v *schemas.Verified) {
			v.Principal = schemas.Principal{ID: schemas.PrincipalID(testIss, "agent-7"), Type: schemas.PrincipalWorkload,
				Issuer: testIss, Subject: "agent-7", Scopes: scopes}
		}
	}
	cases := []struct {
		name     string
		v        schemas.Verified
		edit     func(*schemas.Verified)
		decision string
		code     schemas.Code
		ids      []string
	}{
		// 1. retrain: staging only.
		{name: "alice retrains in staging", v: verified(t, "alice", "model.retrain", "Model", "fraud-detector", env("staging")),
			decision: schemas.Allow, ids: []string{"data-scientists-retrain-staging"}},
		{name: "alice retrains in production", v: verified(t, "alice", "model.retrain", "Model", "fraud-detector", env("production")),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"no-production-request-on-staging-resource", "production-changes-need-mfa"}},
		{name: "alice retrains without environment", v: verified(t, "alice", "model.retrain", "Model", "fraud-detector", nil),
			decision: schemas.Deny, code: schemas.CodePolicyDenied},
		{name: "alice tunes in staging", v: verified(t, "alice", "model.update_hyperparameters", "Model", "fraud-detector", env("staging")),
			decision: schemas.Allow, ids: []string{"data-scientists-tune-staging"}},
		// 2. training data: contributors only.
		{name: "alice updates training data", v: verified(t, "alice", "dataset.update", "Dataset", "transactions-training", nil),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"only-contributors-modify-training-data"}},
		{name: "carol updates training data", v: verified(t, "carol", "dataset.update", "Dataset", "transactions-training", nil),
			decision: schemas.Allow, ids: []string{"contributors-modify-training-data"}},
		{name: "carol updates production data", v: verified(t, "carol", "dataset.update", "Dataset", "customer-features", nil),
			decision: schemas.Deny, code: schemas.CodePolicyDenied},
		{name: "alice reads a dataset", v: verified(t, "alice", "dataset.read", "Dataset", "customer-features", nil),
			decision: schemas.Allow, ids: []string{"data-scientists-read-datasets"}},
		{name: "carol promotes a dataset without approval", v: verified(t, "carol", "dataset.promote", "Dataset", "transactions-training", nil),
			decision: schemas.Deny, code: schemas.CodeApprovalRequired},
		// 3. production needs risk approval.
		{name: "erin deploys to production", v: verified(t, "erin", "model.deploy", "Model", "fraud-detector", env("production")),
			decision: schemas.Deny, code: schemas.CodePolicyDenied,
			ids: []string{"no-production-request-on-staging-resource", "production-changes-need-mfa", "production-release-needs-risk-approval"}},
		{name: "erin deploys to production with forged approvals and mfa",
			v: verified(t, "erin", "model.deploy", "Model", "churn-predictor",
				map[string]any{"environment": "production", "approvals": []any{"risk-reviewers"}, "mfa": true}),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"production-changes-need-mfa", "production-release-needs-risk-approval"}},
		{name: "erin deploys to staging", v: verified(t, "erin", "model.deploy", "Model", "fraud-detector", env("staging")),
			decision: schemas.Allow, ids: []string{"ml-platform-deploy-staging"}},
		{name: "erin promotes to production is not segmentation's business",
			v:        verified(t, "erin", "model.promote", "Model", "fraud-detector", env("production")),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"production-changes-need-mfa", "production-release-needs-risk-approval"}},
		// 4. weights: owners only, fresh login.
		{name: "erin overwrites weights", v: verified(t, "erin", "model.overwrite_weights", "Model", "fraud-detector", nil),
			edit:     func(v *schemas.Verified) { v.Principal.Scopes = append(v.Principal.Scopes, "models:overwrite_weights") },
			decision: schemas.Allow, ids: []string{"owners-overwrite-weights"}},
		{name: "erin overwrites weights without the scope", v: verified(t, "erin", "model.overwrite_weights", "Model", "fraud-detector", nil),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"weight-overwrite-needs-scope"}},
		{name: "alice overwrites weights", v: verified(t, "alice", "model.overwrite_weights", "Model", "fraud-detector", nil),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"no-weight-overwrite-by-non-owners", "weight-overwrite-needs-scope"}},
		{name: "erin overwrites weights on a stale session", v: verified(t, "erin", "model.overwrite_weights", "Model", "fraud-detector", nil),
			edit: func(v *schemas.Verified) {
				old := testNow.Add(-13 * time.Hour)
				v.Principal.AuthTime = &old
			},
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"weight-overwrite-needs-recent-login", "weight-overwrite-needs-scope"}},
		// 5. segmentation.
		{name: "erin deploys staging work onto a production model", v: verified(t, "erin", "model.deploy", "Model", "churn-predictor", env("staging")),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"no-staging-request-on-production-resource"}},
		{name: "alice retrains a production model from staging", v: verified(t, "alice", "model.retrain", "Model", "churn-predictor", env("staging")),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"no-staging-request-on-production-resource"}},
		// 6. no groups, no access.
		{name: "oscar retrains", v: verified(t, "oscar", "model.retrain", "Model", "fraud-detector", env("staging")),
			decision: schemas.Deny, code: schemas.CodePolicyDenied},
		{name: "oscar deploys", v: verified(t, "oscar", "model.deploy", "Model", "fraud-detector", env("staging")),
			decision: schemas.Deny, code: schemas.CodePolicyDenied},
		{name: "oscar reads", v: verified(t, "oscar", "dataset.read", "Dataset", "customer-features", nil),
			decision: schemas.Deny, code: schemas.CodePolicyDenied},
		{name: "rita deploys", v: verified(t, "rita", "model.deploy", "Model", "fraud-detector", env("staging")),
			decision: schemas.Deny, code: schemas.CodePolicyDenied},
		// Agents and scopes.
		{name: "agent calls an approved tool", v: verified(t, "oscar", "agent.tool_call", "Tool", "web-search", nil), edit: workload("tools:call"),
			decision: schemas.Allow, ids: []string{"agents-call-approved-tools"}},
		{name: "agent without the scope", v: verified(t, "oscar", "agent.tool_call", "Tool", "web-search", nil), edit: workload("openid"),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"tool-calls-need-tools-scope"}},
		{name: "agent claims the scope in context", v: verified(t, "oscar", "agent.tool_call", "Tool", "web-search",
			map[string]any{"scopes": []any{"tools:call"}}), edit: workload(),
			decision: schemas.Deny, code: schemas.CodePolicyDenied, ids: []string{"tool-calls-need-tools-scope"}},
		{name: "agent calls an unapproved tool", v: verified(t, "oscar", "agent.tool_call", "Tool", "shell", nil), edit: workload("tools:call"),
			decision: schemas.Deny, code: schemas.CodePolicyDenied},
		{name: "a human is not an agent", v: verified(t, "erin", "agent.tool_call", "Tool", "web-search", nil),
			edit:     func(v *schemas.Verified) { v.Principal.Scopes = []string{"tools:call"} },
			decision: schemas.Deny, code: schemas.CodePolicyDenied},
		// Inputs that cannot be decided.
		{name: "unknown resource", v: verified(t, "erin", "model.deploy", "Model", "no-such-model", env("staging")),
			decision: schemas.Deny, code: schemas.CodeUnknownResource},
		{name: "unknown resource type", v: verified(t, "erin", "model.deploy", "Widget", "fraud-detector", env("staging")),
			decision: schemas.Deny, code: schemas.CodeUnknownResource},
		{name: "unknown principal type", v: verified(t, "erin", "model.deploy", "Model", "fraud-detector", env("staging")),
			edit:     func(v *schemas.Verified) { v.Principal.Type = "Robot" },
			decision: schemas.Deny, code: schemas.CodeMalformedRequest},
		{name: "malformed action", v: verified(t, "erin", "Deploy It", "Model", "fraud-detector", nil),
			decision: schemas.Deny, code: schemas.CodeMalformedRequest},
		{name: "misspelt action", v: verified(t, "alice", "model.retrian", "Model", "fraud-detector", env("staging")),
			decision: schemas.Deny, code: schemas.CodeUnknownAction},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			v := tc.v
			if tc.edit != nil {
				tc.edit(&v)
			}
			d := ev.Decide(v)
			if d.Decision != tc.decision || d.Code != tc.code {
				t.Fatalf("got %s/%q (%s), want %s/%q", d.Decision, d.Code, d.Reason, tc.decision, tc.code)
			}
			if !slices.Equal(d.PolicyIDs, tc.ids) {
				t.Errorf("policy ids = %q, want %q", d.PolicyIDs, tc.ids)
			}
			if len(d.PolicyErrors) > 0 {
				t.Errorf("unexpected policy errors: %q", d.PolicyErrors)
			}
			if d.Decision == schemas.Deny && d.Reason == "" {
				t.Error("a deny has no reason")
			}
			if d.Stage != schemas.StagePolicy || d.PolicyVersion != ev.Set().Version() || d.RequestID != v.RequestID {
				t.Errorf("stage %q version %q request %q", d.Stage, d.PolicyVersion, d.RequestID)
			}
			if d.Principal == nil || d.Principal.ID != v.Principal.ID || d.SessionKey != v.SessionKey || d.TokenFingerprint != v.TokenFingerprint {
				t.Errorf("identity not carried: %+v", d)
			}
		})
	}
}

func TestDecisionTimings(t *testing.T) {
	t.Parallel()
	ev := loadSample(t)
	v := verified(t, "alice", "model.retrain", "Model", "fraud-detector", env("staging"))
	d := ev.Decide(v)
	tm := d.Timings
	if !tm.ReceivedAt.Equal(v.ReceivedAt) || tm.VerifiedAt == nil || !tm.VerifiedAt.Equal(v.VerifiedAt) || !tm.DecidedAt.Equal(testNow) {
		t.Fatalf("timestamps %+v", tm)
	}
	if tm.AuthnMicros != 1000 || tm.PolicyMicros != 1000 || tm.TotalMicros != 2000 {
		t.Errorf("micros authn %d policy %d total %d, want 1000 1000 2000", tm.AuthnMicros, tm.PolicyMicros, tm.TotalMicros)
	}
	if !equalJSON(t, d.Context, v.Request.Context) {
		t.Errorf("decision context %v, want the request's %v", d.Context, v.Request.Context)
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	t.Helper()
	x, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	y, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return string(x) == string(y)
}

// TestErroringForbidDenies: Cedar skips a policy that errors, so a forbid
// reading a missing attribute would let the permit through; aigov denies.
func TestErroringForbidDenies(t *testing.T) {
	t.Parallel()
	set, store, err := compileWith([]File{{Name: "t.cedar", Data: []byte(`
@id("allow-all")
permit (principal, action, resource);

@id("forbid-unless-classified")
forbid (principal, action, resource)
when { resource.classification == "secret" };
`)}}, `[{"uid":{"type":"Model","id":"m"},"attrs":{},"parents":[]}]`)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := NewEvaluator(set, store, Options{})
	if err != nil {
		t.Fatal(err)
	}
	d := ev.Decide(verified(t, "alice", "model.retrain", "Model", "m", nil))
	if d.Decision != schemas.Deny || d.Code != schemas.CodePolicyError {
		t.Fatalf("got %s/%q, want deny/policy_error", d.Decision, d.Code)
	}
	if !slices.Equal(d.PolicyIDs, []string{"forbid-unless-classified"}) {
		t.Errorf("policy ids %q, want the erroring forbid", d.PolicyIDs)
	}
	if len(d.PolicyErrors) != 1 || !strings.Contains(d.PolicyErrors[0], "forbid-unless-classified") ||
		!strings.Contains(d.PolicyErrors[0], "classification") || !strings.Contains(d.PolicyErrors[0], "t.cedar:") {
		t.Errorf("policy errors %q", d.PolicyErrors)
	}
}

func TestEntityAssembly(t *testing.T) {
	t.Parallel()
	set, store, err := compileWith([]File{{Name: "p.cedar", Data: []byte(`
@id("org-members-read")
permit (principal in Group::"org", action in Action::"reads", resource in Folder::"root")
when { principal.email == "alice@aigov.example" && principal.issuer == "https://idp.test" };
`)}}, `[
 {"uid":{"type":"Group","id":"data-scientists"},"attrs":{},"parents":[{"type":"Group","id":"org"}]},
 {"uid":{"type":"Group","id":"org"},"attrs":{},"parents":[]},
 {"uid":{"type":"Action","id":"dataset.read"},"attrs":{},"parents":[{"type":"Action","id":"reads"}]},
 {"uid":{"type":"Folder","id":"root"},"attrs":{},"parents":[]},
 {"uid":{"type":"Folder","id":"team"},"attrs":{},"parents":[{"type":"Folder","id":"root"}]},
 {"uid":{"type":"Dataset","id":"d"},"attrs":{},"parents":[{"type":"Folder","id":"team"}]},
 {"uid":{"type":"Dataset","id":"unrelated"},"attrs":{},"parents":[]},
 {"uid":{"type":"User","id":"https://idp.test#alice"},"attrs":{"email":"forged@evil"},"parents":[{"type":"Group","id":"admins"}]}
]`)
	if err != nil {
		t.Fatal(err)
	}
	ev, err := NewEvaluator(set, store, Options{})
	if err != nil {
		t.Fatal(err)
	}
	v := verified(t, "alice", "dataset.read", "Dataset", "d", nil)
	d := ev.Decide(v)
	if !d.Allowed() || !slices.Equal(d.PolicyIDs, []string{"org-members-read"}) {
		t.Fatalf("got %s/%q %q: transitive groups, action groups and resource ancestors must count", d.Decision, d.Code, d.Reason)
	}
	_, small, _, err := ev.request(v, testNow)
	entities := small.toMap()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for uid := range entities {
		got = append(got, uid.String())
	}
	slices.Sort(got)
	// Action::"reads" is only named as a parent, not stored: nothing to copy.
	want := []string{
		`Action::"dataset.read"`, `Dataset::"d"`, `Folder::"root"`, `Folder::"team"`,
		`Group::"data-scientists"`, `Group::"org"`, `User::"https://idp.test#alice"`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("entities %q, want only what the request needs %q", got, want)
	}
	p := entities[cedar.NewEntityUID(TypeUser, "https://idp.test#alice")]
	if email, _ := p.Attributes.Get("email"); email != cedar.String("alice@aigov.example") {
		t.Errorf("principal email %v: the token, not the store, defines the principal", email)
	}
}

func TestContextConversion(t *testing.T) {
	t.Parallel()
	var reqCtx map[string]any
	dec := json.NewDecoder(strings.NewReader(`{
		"environment": "staging",
		"epochs": 12,
		"negative": -3,
		"learning_rate": 0.001,
		"exponent": 1e3,
		"huge": 123456789012345678901234567890,
		"flag": true,
		"nothing": null,
		"tags": ["a", "b", "a", null, 2.5],
		"hyperparameters": {"layers": 4, "dropout": 0.1, "optimizer": {"name": "adam"}},
		"approvals": ["risk-reviewers"],
		"mfa": true,
		"scopes": ["admin"],
		"session_age_seconds": 0
	}`))
	dec.UseNumber()
	if err := dec.Decode(&reqCtx); err != nil {
		t.Fatal(err)
	}
	authTime := testNow.Add(-90 * time.Second)
	p := schemas.Principal{Scopes: []string{"openid", "models:write"}, AMR: []string{"pwd"}, AuthTime: &authTime}
	got := contextRecord(reqCtx, p, testNow, nil)

	want := cedar.NewRecord(cedar.RecordMap{
		"environment":   cedar.String("staging"),
		"epochs":        cedar.Long(12),
		"negative":      cedar.Long(-3),
		"learning_rate": cedar.String("0.001"),
		"exponent":      cedar.String("1e3"),
		"huge":          cedar.String("123456789012345678901234567890"),
		"flag":          cedar.True,
		"tags":          cedar.NewSet(cedar.String("a"), cedar.String("b"), cedar.String("2.5")),
		"hyperparameters": cedar.NewRecord(cedar.RecordMap{
			"layers":    cedar.Long(4),
			"dropout":   cedar.String("0.1"),
			"optimizer": cedar.NewRecord(cedar.RecordMap{"name": cedar.String("adam")}),
		}),
		// Trusted: the requester's values are gone.
		"approvals":           cedar.NewSet(),
		"mfa":                 cedar.False,
		"scopes":              cedar.NewSet(cedar.String("openid"), cedar.String("models:write")),
		"session_age_seconds": cedar.Long(90),
		"hour_utc":            cedar.Long(12),
		"weekday":             cedar.String("wednesday"),
	})
	if !got.Equal(want) {
		t.Errorf("context\n got %s\nwant %s", got, want)
	}
}

func TestTrustedFields(t *testing.T) {
	t.Parallel()
	future := testNow.Add(time.Hour)
	cases := []struct {
		name string
		p    schemas.Principal
		mfa  bool
		age  int64
	}{
		{name: "password only", p: schemas.Principal{AMR: []string{"pwd"}}},
		{name: "mfa", p: schemas.Principal{AMR: []string{"pwd", "mfa"}}, mfa: true},
		{name: "otp", p: schemas.Principal{AMR: []string{"otp"}}, mfa: true},
		{name: "hardware key", p: schemas.Principal{AMR: []string{"hwk"}}, mfa: true},
		{name: "auth_time ahead of our clock", p: schemas.Principal{AuthTime: &future}},
		// A token without sid and auth_time (Dex, Google) is its own
		// session: its age is the token's.
		{name: "one-token session by iat", p: schemas.Principal{IssuedAt: testNow.Add(-90 * time.Second)}, age: 90},
		{name: "sid without auth_time", p: schemas.Principal{SessionID: "s", IssuedAt: testNow.Add(-90 * time.Second)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := contextRecord(map[string]any{"mfa": !tc.mfa, "session_age_seconds": 99}, tc.p, testNow, nil)
			if got, _ := r.Get(CtxMFA); got != cedar.Boolean(tc.mfa) {
				t.Errorf("mfa = %v, want %v", got, tc.mfa)
			}
			if got, _ := r.Get(CtxSessionAgeSeconds); got != cedar.Long(tc.age) {
				t.Errorf("session_age_seconds = %v, want %d", got, tc.age)
			}
			if got, _ := r.Get(CtxScopes); !got.Equal(cedar.NewSet()) {
				t.Errorf("scopes = %v, want empty", got)
			}
		})
	}
}

func TestDeepContextBecomesText(t *testing.T) {
	t.Parallel()
	var v any = "leaf"
	for range MaxContextDepth + 5 {
		v = map[string]any{"x": v}
	}
	r := contextRecord(map[string]any{"deep": v, "rate": 0.25, "n": float64(7), "weird": struct{}{}}, schemas.Principal{}, testNow, nil)
	cur, _ := r.Get("deep")
	for depth := 1; ; depth++ {
		rec, ok := cur.(cedar.Record)
		if !ok {
			if _, isText := cur.(cedar.String); !isText || depth != MaxContextDepth+1 {
				t.Fatalf("at depth %d got %T %v, want the JSON text past depth %d", depth, cur, cur, MaxContextDepth)
			}
			break
		}
		cur, _ = rec.Get("x")
	}
	if got, _ := r.Get("rate"); got != cedar.String("0.25") {
		t.Errorf("float64 rate = %v", got)
	}
	if got, _ := r.Get("n"); got != cedar.Long(7) {
		t.Errorf("integral float64 = %v", got)
	}
	if _, ok := r.Get("weird"); ok {
		t.Error("a non-JSON Go value was kept")
	}
}

func TestCompileRejects(t *testing.T) {
	t.Parallel()
	schema, err := os.ReadFile(filepath.Join(policyDir, "schema.cedarschema"))
	if err != nil {
		t.Fatal(err)
	}
	sch := File{Name: "schema.cedarschema", Data: schema}
	cases := []struct {
		name  string
		files []File
		want  []string
	}{
		{name: "missing id", files: []File{{Name: "a.cedar", Data: []byte("@id(\"ok\")\npermit(principal, action, resource);\n\npermit(principal, action, resource);")}},
			want: []string{"a.cedar:4", "no @id"}},
		{name: "empty id", files: []File{{Name: "a.cedar", Data: []byte(`@id("  ") permit(principal, action, resource);`)}},
			want: []string{"a.cedar:1", "no @id"}},
		{name: "duplicate id across files", files: []File{
			{Name: "b.cedar", Data: []byte(`@id("same") permit(principal, action, resource);`)},
			{Name: "a.cedar", Data: []byte("\n\n@id(\"same\") forbid(principal, action, resource);")},
		}, want: []string{`b.cedar:1: duplicate @id "same", first used at a.cedar:3`}},
		{name: "parse error", files: []File{{Name: "bad.cedar", Data: []byte(`@id("x") permit(principal, action, resource) when { principal.`)}},
			want: []string{"bad.cedar"}},
		{name: "unknown attribute", files: []File{sch, {Name: "a.cedar", Data: []byte(`@id("typo") permit(principal, action, resource is Model) when { resource.enviroment == "staging" };`)}},
			want: []string{`a.cedar:1: policy "typo" does not validate`, "enviroment"}},
		{name: "optional context attribute without has", files: []File{sch, {Name: "a.cedar", Data: []byte(`@id("no-has") permit(principal, action == Action::"model.retrain", resource) when { context.environment == "staging" };`)}},
			want: []string{`policy "no-has" does not validate`}},
		{name: "unknown action", files: []File{sch, {Name: "a.cedar", Data: []byte(`@id("act") permit(principal, action == Action::"model.delete", resource);`)}},
			want: []string{`policy "act" does not validate`}},
		{name: "bad schema", files: []File{{Name: "s.cedarschema", Data: []byte(`entity {`)}, {Name: "a.cedar", Data: []byte(`@id("x") permit(principal, action, resource);`)}},
			want: []string{"s.cedarschema: schema"}},
		{name: "two schemas", files: []File{sch, {Name: "t.cedarschema", Data: schema}, {Name: "a.cedar", Data: []byte(`@id("x") permit(principal, action, resource);`)}},
			want: []string{"2 schema files"}},
		{name: "all violations at once", files: []File{
			{Name: "a.cedar", Data: []byte(`permit(principal, action, resource);`)},
			{Name: "b.cedar", Data: []byte(`nonsense`)},
			{Name: "notes.txt", Data: []byte(`x`)},
		}, want: []string{"a.cedar:1", "b.cedar", "notes.txt"}},
		{name: "no files", want: []string{"no policy files"}},
		{name: "approval without quorum", files: []File{{Name: "a.cedar", Data: []byte(`@id("q") @approval("risk") forbid(principal, action, resource);`)}},
			want: []string{`policy "q"`, `needs @quorum`}},
		{name: "quorum without approval", files: []File{{Name: "a.cedar", Data: []byte(`@id("q") @quorum("2") forbid(principal, action, resource);`)}},
			want: []string{`need @approval`}},
		{name: "quorum out of range", files: []File{{Name: "a.cedar", Data: []byte(`@id("q") @approval("risk") @quorum("0") forbid(principal, action, resource);`)}},
			want: []string{`@quorum("0") must be a whole number from 1 to 20`}},
		{name: "uses not a number", files: []File{{Name: "a.cedar", Data: []byte(`@id("q") @approval("risk") @quorum("1") @uses("many") forbid(principal, action, resource);`)}},
			want: []string{`@uses("many")`}},
		{name: "rejections out of range", files: []File{{Name: "a.cedar", Data: []byte(`@id("q") @approval("risk") @quorum("1") @rejections("21") forbid(principal, action, resource);`)}},
			want: []string{`@rejections("21") must be a whole number from 1 to 20`}},
		{name: "rejections without approval", files: []File{{Name: "a.cedar", Data: []byte(`@id("q") @rejections("2") forbid(principal, action, resource);`)}},
			want: []string{`need @approval`}},
		{name: "approval on a shadow policy", files: []File{{Name: "a.cedar", Data: []byte(`@id("q") @shadow("") @approval("risk") @quorum("1") forbid(principal, action, resource);`)}},
			want: []string{`@shadow`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			set, err := Compile(tc.files)
			if err == nil {
				t.Fatalf("compiled %v, want an error", set.PolicyIDs())
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

// The sample set validates, and a bundle round-trips only unaltered.
func TestBundle(t *testing.T) {
	t.Parallel()
	set := loadSample(t).Set()
	if !set.Validated() || len(set.ShadowIDs()) != 1 {
		t.Fatalf("sample validated=%v shadow=%v", set.Validated(), set.ShadowIDs())
	}
	b, v, err := EncodeBundle(set.Files())
	if err != nil || v != set.Version() {
		t.Fatal(v, err)
	}
	back, err := CompileBundle(b)
	if err != nil || back.Version() != set.Version() {
		t.Fatalf("round trip: %v", err)
	}
	tampered := strings.Replace(string(b), `"version":"sha256:`, `"version":"sha256:0`, 1)
	if _, err := CompileBundle([]byte(tampered)); err == nil {
		t.Error("a bundle whose files do not match its version was accepted")
	}
	noSchema, _, _ := EncodeBundle([]File{{Name: "a.cedar", Data: []byte(`@id("x") permit(principal, action, resource);`)}})
	if _, err := CompileBundle(noSchema); err == nil || !strings.Contains(err.Error(), "schema") {
		t.Errorf("a bundle without schema: %v", err)
	}
}

func TestLoadDirVersion(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	names, _ := filepath.Glob(filepath.Join(policyDir, "*.cedar*"))
	for _, p := range names {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// Non-policy files are not part of the set or its version.
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte("notes"), 0o600); err != nil {
		t.Fatal(err)
	}
	load := func() *Set {
		t.Helper()
		s, err := LoadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	base := load()
	if !strings.HasPrefix(base.Version(), "sha256:") || len(base.Version()) != len("sha256:")+64 {
		t.Fatalf("version %q", base.Version())
	}
	sample := loadSample(t).Set()
	if base.Version() != sample.Version() || !slices.Equal(base.PolicyIDs(), sample.PolicyIDs()) {
		t.Fatalf("a copy of the same files has version %s, want %s", base.Version(), sample.Version())
	}
	if err := os.WriteFile(filepath.Join(dir, "README.md"), []byte("other notes"), 0o600); err != nil {
		t.Fatal(err)
	}
	if v := load().Version(); v != base.Version() {
		t.Errorf("editing README changed the version")
	}
	f, err := os.OpenFile(filepath.Join(dir, "agents.cedar"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("\n// a comment is a change too\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	v2 := load().Version()
	if v2 == base.Version() {
		t.Error("version did not change when a policy file changed")
	}
	if err := os.Rename(filepath.Join(dir, "agents.cedar"), filepath.Join(dir, "zz-agents.cedar")); err != nil {
		t.Fatal(err)
	}
	if load().Version() == v2 {
		t.Error("version did not change when a file was renamed")
	}
}

func TestLoadDirErrors(t *testing.T) {
	t.Parallel()
	empty := t.TempDir()
	if _, err := LoadDir(empty); err == nil || !strings.Contains(err.Error(), "no *.cedar files") {
		t.Errorf("empty dir: %v", err)
	}
	if err := os.WriteFile(filepath.Join(empty, "a.cedar"), []byte(`@id("x") permit(principal, action, resource);`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadDir(empty); err == nil || !strings.Contains(err.Error(), "cedarschema") {
		t.Errorf("dir without schema: %v", err)
	}
}

func BenchmarkDecide(b *testing.B) {
	ev := loadSample(b)
	v := verified(b, "carol", "model.retrain", "Model", "fraud-detector",
		map[string]any{"environment": "staging", "epochs": json.Number("10"), "hyperparameters": map[string]any{"lr": json.Number("0.01")}})
	b.ReportAllocs()
	for b.Loop() {
		if d := ev.Decide(v); !d.Allowed() {
			b.Fatalf("got %s/%s", d.Decision, d.Code)
		}
	}
}

// compileWith compiles policies without a schema, and an entity store.
func compileWith(files []File, entities string) (*Set, *Store, error) {
	set, err := Compile(files)
	if err != nil {
		return nil, nil, err
	}
	m, err := ParseEntities(File{Name: "entities.json", Data: []byte(entities)})
	if err != nil {
		return nil, nil, err
	}
	return set, NewStore(m), nil
}

// An @approval policy gates its actions: their approvals come from the
// requester's approved approval request for the exact request only, a deny
// that approvals would lift is approval_required with what it needs, and a
// request approved for another requester or digest, used up, or expired
// does not count.
func TestApprovalRequestsGateActions(t *testing.T) {
	t.Parallel()
	set, err := LoadDir(policyDir)
	if err != nil {
		t.Fatal(err)
	}
	store, err := LoadStore(filepath.Join(policyDir, "entities.json"))
	if err != nil {
		t.Fatal(err)
	}
	if !set.Gates("model.deploy") || !set.Gates("dataset.promote") || !set.Gates("policy.update") || set.Gates("model.retrain") || set.Gates("approval.grant") {
		t.Fatal("gated actions: want model.deploy, dataset.promote and policy.update, not model.retrain or approval.grant")
	}
	v := verified(t, "fiona", "model.deploy", "Model", "churn-predictor", map[string]any{"environment": "production", "model_version": "v7"})
	v.Principal.AMR = []string{"pwd", "hwk"}
	digest, err := schemas.RequestDigest("model.deploy", v.Request.Resource, v.Request.Context, set.Version())
	if err != nil {
		t.Fatal(err)
	}
	approved := schemas.ApprovalRequest{ID: "apr-1", Status: schemas.StatusApproved, RequesterID: v.Principal.ID, Digest: digest,
		Requirements: []schemas.ApprovalRequirement{{Team: "risk-reviewers", Quorum: 2}}, MaxUses: 2, Uses: 1, ExpiresAt: testNow.Add(time.Hour)}
	legacy := []schemas.Approval{{ApproverID: "rita", Teams: []string{"risk-reviewers"}, ExpiresAt: testNow.Add(time.Hour)}}
	eval := func(ar *schemas.ApprovalRequest) Result {
		ev, err := NewEvaluator(set, store, Options{Clock: func() time.Time { return testNow },
			Approvals: func(d string) []schemas.Approval { // digest approvals of any digest: ignored for a gated action
				out := slices.Clone(legacy)
				for i := range out {
					out[i].Digest = d
				}
				return out
			},
			Requests: func(requester, d string) (schemas.ApprovalRequest, bool) {
				if ar == nil || requester != ar.RequesterID || d != ar.Digest {
					return schemas.ApprovalRequest{}, false
				}
				return *ar, true
			}})
		if err != nil {
			t.Fatal(err)
		}
		return ev.Evaluate(v)
	}
	res := eval(nil)
	if d := res.Decision; d.Code != schemas.CodeApprovalRequired || res.RequestDigest != digest || res.MaxUses != 1 ||
		len(res.Need) != 1 || res.Need[0].Team != "risk-reviewers" || res.Need[0].Quorum != 2 || len(d.Approvals) != 0 {
		t.Fatalf("without a request: %s/%s need %+v uses %d approvals %v", d.Decision, d.Code, res.Need, res.MaxUses, d.Approvals)
	}
	if res := eval(&approved); !res.Decision.Allowed() || !res.Granted || res.Decision.ApprovalID != "apr-1" ||
		!slices.Equal(res.Decision.Approvals, []string{"risk-reviewers"}) {
		t.Fatalf("approved, a use left: %s/%s granted %v", res.Decision.Decision, res.Decision.Code, res.Granted)
	}
	for name, mutate := range map[string]func(*schemas.ApprovalRequest){
		"used up":           func(a *schemas.ApprovalRequest) { a.Uses = 2 },
		"pending":           func(a *schemas.ApprovalRequest) { a.Status = schemas.StatusPending },
		"expired":           func(a *schemas.ApprovalRequest) { a.ExpiresAt = testNow },
		"another requester": func(a *schemas.ApprovalRequest) { a.RequesterID = "someone-else" },
		"another digest":    func(a *schemas.ApprovalRequest) { a.Digest = "sha256:00" },
	} {
		a := approved
		mutate(&a)
		if res := eval(&a); res.Decision.Allowed() || res.Granted || res.Decision.Code != schemas.CodeApprovalRequired {
			t.Errorf("%s: %s/%s granted %v", name, res.Decision.Decision, res.Decision.Code, res.Granted)
		}
	}
	// Used by this very request: its redelivery is decided as it was.
	a := approved
	a.Uses, a.Status, a.UsedBy, a.UsedAt = 2, schemas.StatusUsed, []string{v.RequestID}, []time.Time{v.VerifiedAt}
	if res := eval(&a); !res.Decision.Allowed() || !res.Granted {
		t.Fatalf("redelivery of the request that used it: %s/%s", res.Decision.Decision, res.Decision.Code)
	}
	// Its id reused by a new request (verified again, after JetStream's
	// duplicate window): no redelivery, and the approval is spent.
	a.UsedAt = []time.Time{v.VerifiedAt.Add(-time.Hour)}
	if res := eval(&a); res.Decision.Allowed() || res.Granted {
		t.Fatalf("a new request under the used request's id: %s/%s granted %v", res.Decision.Decision, res.Decision.Code, res.Granted)
	}
	// Denied for another reason too (no second factor): no approval helps.
	erin := verified(t, "erin", "model.deploy", "Model", "churn-predictor", map[string]any{"environment": "production"})
	ev, _ := NewEvaluator(set, store, Options{Clock: func() time.Time { return testNow }})
	if res := ev.Evaluate(erin); res.Decision.Code != schemas.CodePolicyDenied || len(res.Need) != 0 {
		t.Fatalf("erin without MFA: %s need %+v", res.Decision.Code, res.Need)
	}
	// The digest covers the whole context: an added field is another request.
	other, _ := schemas.RequestDigest("model.deploy", v.Request.Resource, map[string]any{"environment": "production", "model_version": "v7", "note": "x"}, set.Version())
	again, _ := schemas.RequestDigest("model.deploy", v.Request.Resource, map[string]any{"environment": "production", "model_version": "v7", "mfa": true, "approvals": []any{"x"}}, set.Version())
	if other == digest || again != digest {
		t.Fatal("RequestDigest must cover every requester field and no derived one")
	}
}
