package decide

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/servicekit/personal"
)

// principal is a verified event of a requester or reviewer made of a
// subject and groups, with a second factor (production needs one).
func principalRequest(t *testing.T, sub string, groups []string, reqID, action string, res schemas.Resource, ctx map[string]any) schemas.Verified {
	t.Helper()
	v := verified(t, "erin", action, res.Type, res.ID, ctx)
	v.RequestID = reqID
	v.Principal.ID = schemas.PrincipalID(testIss, sub)
	v.Principal.Subject, v.Principal.Email, v.Principal.Name = sub, sub+"@aigov.example", sub
	v.Principal.Groups = groups
	v.Principal.AMR = []string{"pwd", "hwk"}
	v.Principal.ExpiresAt = time.Now().Add(24 * time.Hour) // outlives the tests' clock skew
	return v
}

// decideOne sends v as authn would and returns the decision policy stored.
func (h *harness) decideOne(t *testing.T, v schemas.Verified) schemas.Decision {
	t.Helper()
	h.publishVerified(t, v, "verified-"+v.RequestID)
	h.settled++
	h.waitSettled(t, h.settled)
	_, d := decodeDecision(t, h.lastDecision(t, v.Request.Action).Data)
	if d.RequestID != v.RequestID {
		t.Fatalf("last decision is for %s, not %s", d.RequestID, v.RequestID)
	}
	return d
}

// approvalRequest reads one approval request from the bucket.
func (h *harness) approvalRequest(t *testing.T, id string) schemas.ApprovalRequest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	kv, err := h.js.KeyValue(ctx, h.topo.BucketApprovalRequests())
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(ctx, id)
	if err != nil {
		t.Fatalf("approval request %s: %v", id, err)
	}
	var a schemas.ApprovalRequest
	if err := json.Unmarshal(e.Value(), &a); err != nil {
		t.Fatal(err)
	}
	return a
}

// approvalEvents returns the data of every governance event on
// aigov.approval.<name>.
func (h *harness) approvalEvents(t *testing.T, name string) []map[string]any {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.js.OrderedConsumer(ctx, h.topo.StreamGovernance(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{h.topo.Subjects.Governance(schemas.KindApproval, name)},
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]any
	for range info.NumPending {
		m, err := c.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		ev, err := schemas.ParseEvent(m.Data())
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type != schemas.TypeOfApprovalEvent(name) {
			t.Errorf("event type %s on %s", ev.Type, m.Subject())
		}
		var data map[string]any
		if err := json.Unmarshal(ev.Data, &data); err != nil {
			t.Fatal(err)
		}
		out = append(out, data)
	}
	return out
}

// countEvents counts the events of approval id among evs.
func countEvents(evs []map[string]any, id string) int {
	n := 0
	for _, e := range evs {
		if e["approval_id"] == id {
			n++
		}
	}
	return n
}

type recordingNotifier struct {
	mu  sync.Mutex
	evs []schemas.ApprovalEvent
}

func (r *recordingNotifier) Notify(ev schemas.ApprovalEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
}

func (r *recordingNotifier) events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, e := range r.evs {
		out = append(out, e.Event)
	}
	return out
}

// TestApprovalRequestLifecycle drives one production deploy through its
// approval request: opened by the deny, a self-approval refused, a quorum
// of two distinct reviewers, refused for another requester and for a
// changed field, used once, and a second use denied approval_used.
func TestApprovalRequestLifecycle(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2)
	notes := &recordingNotifier{}
	h.svc.notify = notes
	h.start(t)

	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	deployCtx := map[string]any{"environment": "production", "model_version": "v7", "canary_percent": 5}
	riley := []string{"ml-platform", "risk-reviewers"} // requester and, elsewhere, a reviewer
	deploy := func(reqID, sub string, ctx map[string]any) schemas.Decision {
		return h.decideOne(t, principalRequest(t, sub, riley, reqID, "model.deploy", churn, ctx))
	}
	review := func(reqID, sub string, groups []string, a schemas.ApprovalRequest, verdict string) schemas.Decision {
		ctx := maps.Clone(a.Context)
		ctx[schemas.ContextApprovedAction] = a.Action
		ctx[schemas.ContextApprovalID] = a.ID
		if verdict != "" {
			ctx[schemas.ContextApprovalVerdict] = verdict
		}
		return h.decideOne(t, principalRequest(t, sub, groups, reqID, schemas.ActionApprovalGrant, a.Resource, ctx))
	}
	reviewers := []string{"risk-reviewers"}

	d := deploy("deploy-1", "riley", deployCtx)
	if d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == "" || !strings.Contains(d.Reason, d.ApprovalID) {
		t.Fatalf("first deploy: %s/%s %q id %q", d.Decision, d.Code, d.Reason, d.ApprovalID)
	}
	id := d.ApprovalID
	a := h.approvalRequest(t, id)
	if a.Status != schemas.StatusPending || a.RequesterID != schemas.PrincipalID(testIss, "riley") || a.MaxUses != 1 ||
		len(a.Requirements) != 1 || a.Requirements[0].Team != "risk-reviewers" || a.Requirements[0].Quorum != 2 ||
		a.Context["canary_percent"] != float64(5) || a.PolicyVersion != d.PolicyVersion {
		t.Fatalf("approval request %+v", a)
	}
	if d := deploy("deploy-2", "riley", deployCtx); d.Code != schemas.CodeApprovalRequired || d.ApprovalID != id || !strings.Contains(d.Reason, "awaits approval (risk-reviewers 0/2)") {
		t.Fatalf("retry while pending: %s/%s %q id %q", d.Decision, d.Code, d.Reason, d.ApprovalID)
	}

	// The requester is a risk reviewer, but never of their own request.
	if d := review("grant-self", "riley", riley, a, ""); d.Allowed() || !strings.Contains(d.Reason, "self-approval refused") {
		t.Fatalf("self-approval: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	// Cedar decides who may approve at all (approval.grant).
	if d := review("grant-alice", "alice", []string{"data-scientists"}, a, ""); d.Allowed() || d.Code != schemas.CodePolicyDenied {
		t.Fatalf("data scientist's grant: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	// A grant must review exactly what was asked.
	changed := a
	changed.Context = map[string]any{"environment": "production", "model_version": "v8", "canary_percent": 5}
	if d := review("grant-changed", "rita", reviewers, changed, ""); d.Allowed() || d.Code != schemas.CodeMalformedRequest {
		t.Fatalf("grant of another context: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := review("grant-rita", "rita", reviewers, a, ""); !d.Allowed() || !strings.Contains(d.Reason, "risk-reviewers 1/2") {
		t.Fatalf("rita's grant: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := review("grant-rita-again", "rita", reviewers, a, ""); !d.Allowed() || !strings.Contains(d.Reason, "already granted") {
		t.Fatalf("rita's second grant: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if got := h.approvalRequest(t, id); got.Status != schemas.StatusPending || len(got.Grants) != 1 {
		t.Fatalf("after one reviewer twice: %s with %d grants", got.Status, len(got.Grants))
	}
	if d := deploy("deploy-3", "riley", deployCtx); d.Code != schemas.CodeApprovalRequired || d.ApprovalID != id {
		t.Fatalf("deploy with one of two approvals: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := review("grant-ravi", "ravi", reviewers, a, ""); !d.Allowed() || !strings.Contains(d.Reason, "approved") {
		t.Fatalf("ravi's grant: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if got := h.approvalRequest(t, id); got.Status != schemas.StatusApproved || len(got.Grants) != 2 {
		t.Fatalf("after two reviewers: %s with %d grants", got.Status, len(got.Grants))
	}

	// Bound to the requester and to the exact request.
	if d := deploy("deploy-frank", "frank", deployCtx); d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == id {
		t.Fatalf("another requester: %s/%s id %q", d.Decision, d.Code, d.ApprovalID)
	}
	extra := maps.Clone(deployCtx)
	extra["rollback"] = false
	if d := deploy("deploy-extra", "riley", extra); d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == id {
		t.Fatalf("an extra context field: %s/%s id %q", d.Decision, d.Code, d.ApprovalID)
	}
	other := maps.Clone(deployCtx)
	other["canary_percent"] = 50
	if d := deploy("deploy-changed", "riley", other); d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == id {
		t.Fatalf("a changed context value: %s/%s id %q", d.Decision, d.Code, d.ApprovalID)
	}

	// Used once.
	d = deploy("deploy-4", "riley", deployCtx)
	if !d.Allowed() || d.ApprovalID != id || !strings.Contains(d.Reason, "use 1 of 1") {
		t.Fatalf("approved deploy: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if got := h.approvalRequest(t, id); got.Status != schemas.StatusUsed || got.Uses != 1 || got.UsedBy[0] != "deploy-4" {
		t.Fatalf("after the use: %+v", got)
	}
	d = deploy("deploy-5", "riley", deployCtx)
	if d.Allowed() || d.Code != schemas.CodeApprovalUsed || d.ApprovalID == id || !strings.Contains(d.Reason, "already used (1 of 1 uses)") {
		t.Fatalf("second use: %s/%s %q id %q", d.Decision, d.Code, d.Reason, d.ApprovalID)
	}

	if n := countEvents(h.approvalEvents(t, schemas.ApprovalRequested), id); n != 1 {
		t.Errorf("%d requested events for %s, want 1", n, id)
	}
	if n := countEvents(h.approvalEvents(t, schemas.ApprovalGranted), id); n != 2 {
		t.Errorf("%d granted events for %s, want 2 (one per reviewer)", n, id)
	}
	if n := countEvents(h.approvalEvents(t, schemas.ApprovalApproved), id); n != 1 {
		t.Errorf("%d approved events for %s, want 1", n, id)
	}
	if n := countEvents(h.approvalEvents(t, schemas.ApprovalUsed), id); n != 1 {
		t.Errorf("%d used events for %s, want 1", n, id)
	}
	if got := strings.Join(notes.events(), ","); !strings.HasPrefix(got, "requested,granted,granted,approved,requested,requested,requested,requested") {
		t.Errorf("notified %s", got)
	}
}

// TestApprovalRequestRejectedAndExpired: a rejection by any reviewer ends
// a request; a request approved but not used within the TTL expires (an
// injected clock), is denied and announced as expired.
func TestApprovalRequestRejectedAndExpired(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 2)
	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	team := []string{"ml-platform"}
	reviewers := []string{"risk-reviewers"}
	deploy := func(reqID string, ctx map[string]any) schemas.Decision {
		return h.decideOne(t, principalRequest(t, "fiona", team, reqID, "model.deploy", churn, ctx))
	}
	review := func(reqID, sub, id, verdict string) schemas.Decision {
		a := h.approvalRequest(t, id)
		ctx := maps.Clone(a.Context)
		ctx[schemas.ContextApprovedAction], ctx[schemas.ContextApprovalID] = a.Action, a.ID
		if verdict != "" {
			ctx[schemas.ContextApprovalVerdict] = verdict
		}
		return h.decideOne(t, principalRequest(t, sub, reviewers, reqID, schemas.ActionApprovalGrant, a.Resource, ctx))
	}

	rejected := map[string]any{"environment": "production", "model_version": "v9"}
	id := deploy("deploy-r1", rejected).ApprovalID
	if d := review("reject-rita", "rita", id, schemas.VerdictReject); !d.Allowed() || !strings.Contains(d.Reason, "rejected approval request "+id) {
		t.Fatalf("rejection: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := review("grant-ravi", "ravi", id, ""); d.Allowed() || !strings.Contains(d.Reason, "is rejected") {
		t.Fatalf("grant after the rejection: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := deploy("deploy-r2", rejected); d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == id || !strings.Contains(d.Reason, "rejected by") {
		t.Fatalf("retry after the rejection: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if n := countEvents(h.approvalEvents(t, schemas.ApprovalRejected), id); n != 1 {
		t.Errorf("%d rejected events, want 1", n)
	}

	late := map[string]any{"environment": "production", "model_version": "v10"}
	id = deploy("deploy-e1", late).ApprovalID
	for _, r := range []string{"rita", "ravi"} {
		if d := review("grant-late-"+r, r, id, ""); !d.Allowed() {
			t.Fatalf("%s's grant: %s/%s %q", r, d.Decision, d.Code, d.Reason)
		}
	}
	h.skew.Store(int64(2 * time.Hour)) // the harness's approval TTL is 1h
	d := deploy("deploy-e2", late)
	if d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == id || !strings.Contains(d.Reason, "expired") {
		t.Fatalf("deploy after the TTL: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if got := h.approvalRequest(t, id); got.Status != schemas.StatusExpired {
		t.Fatalf("status after the TTL: %s", got.Status)
	}
	if n := countEvents(h.approvalEvents(t, schemas.ApprovalExpired), id); n != 1 {
		t.Errorf("%d expired events, want 1", n)
	}
}

// decisions returns every stored decision on action's subject by request id.
func (h *harness) decisions(t *testing.T, action string) map[string]schemas.Decision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.js.OrderedConsumer(ctx, h.topo.StreamDecisions(), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{h.topo.Subjects.Decision(action)},
	})
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]schemas.Decision{}
	for range info.NumPending {
		m, err := c.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		_, d := decodeDecision(t, m.Data())
		out[d.RequestID] = d
	}
	return out
}

// TestApprovalUsedOnceUnderConcurrency: retries of an approved request
// decided at the same time by several workers spend its single use once:
// one is allowed; the others are denied, approval_used (the first after the
// use, which opens a new approval request) or approval_required (pending on
// that new request).
func TestApprovalUsedOnceUnderConcurrency(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 4)
	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	ctx := map[string]any{"environment": "production", "model_version": "v11"}
	id := h.decideOne(t, principalRequest(t, "fiona", []string{"ml-platform"}, "deploy-c0", "model.deploy", churn, ctx)).ApprovalID
	a := h.approvalRequest(t, id)
	for _, r := range []string{"rita", "ravi"} {
		g := maps.Clone(a.Context)
		g[schemas.ContextApprovedAction], g[schemas.ContextApprovalID] = a.Action, a.ID
		if d := h.decideOne(t, principalRequest(t, r, []string{"risk-reviewers"}, "grant-c-"+r, schemas.ActionApprovalGrant, churn, g)); !d.Allowed() {
			t.Fatalf("%s's grant: %s/%s %q", r, d.Decision, d.Code, d.Reason)
		}
	}
	const retries = 4
	for i := range retries {
		v := principalRequest(t, "fiona", []string{"ml-platform"}, "deploy-c"+string(rune('1'+i)), "model.deploy", churn, ctx)
		h.publishVerified(t, v, "verified-"+v.RequestID)
	}
	h.settled += retries
	h.waitSettled(t, h.settled)
	allowed, used := 0, 0
	for i := range retries {
		d := h.decisions(t, "model.deploy")["deploy-c"+string(rune('1'+i))]
		switch {
		case d.Allowed():
			allowed++
		case d.Code == schemas.CodeApprovalUsed || d.Code == schemas.CodeApprovalRequired && d.ApprovalID != id:
			used++
		default:
			t.Errorf("retry %d: %s/%s %q", i, d.Decision, d.Code, d.Reason)
		}
	}
	if allowed != 1 || used != retries-1 {
		t.Fatalf("%d allowed and %d denied of %d concurrent retries, want 1 and %d", allowed, used, retries, retries-1)
	}
	if got := h.approvalRequest(t, id); got.Uses != 1 || got.Status != schemas.StatusUsed {
		t.Fatalf("after the retries: %d uses, %s", got.Uses, got.Status)
	}
}

// TestLapsedApprovalRequestsAreSwept: a request nobody touches again is
// marked expired by the sweep once its TTL passed, and announced.
func TestLapsedApprovalRequestsAreSwept(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2)
	notes := &recordingNotifier{}
	h.svc.notify, h.svc.sweep = notes, 20*time.Millisecond
	h.start(t)
	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	id := h.decideOne(t, principalRequest(t, "fiona", []string{"ml-platform"}, "deploy-s1", "model.deploy", churn,
		map[string]any{"environment": "production", "model_version": "v12"})).ApprovalID
	time.Sleep(100 * time.Millisecond)
	if got := h.approvalRequest(t, id); got.Status != schemas.StatusPending {
		t.Fatalf("swept before its TTL: %s", got.Status)
	}
	h.skew.Store(int64(2 * time.Hour))
	deadline := time.Now().Add(5 * time.Second)
	for h.approvalRequest(t, id).Status != schemas.StatusExpired {
		if time.Now().After(deadline) {
			t.Fatal("lapsed request not swept")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := countEvents(h.approvalEvents(t, schemas.ApprovalExpired), id); n != 1 {
		t.Errorf("%d expired events, want 1", n)
	}
	if got := strings.Join(notes.events(), ","); got != "requested,expired" {
		t.Errorf("notified %s", got)
	}
}

// TestApprovalAllowsStatedUses: a policy stating @uses("2") lets one
// approval allow the requester's same request twice, and the third try is
// denied approval_used.
func TestApprovalAllowsStatedUses(t *testing.T) {
	t.Parallel()
	h := startWithModelsEdit(t, `@uses("1")`, `@uses("2")`)
	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	ctx := map[string]any{"environment": "production", "model_version": "v13"}
	deploy := func(reqID string) schemas.Decision {
		return h.decideOne(t, principalRequest(t, "fiona", []string{"ml-platform"}, reqID, "model.deploy", churn, ctx))
	}
	id := deploy("deploy-u0").ApprovalID
	a := h.approvalRequest(t, id)
	if a.MaxUses != 2 {
		t.Fatalf("max uses %d, want 2", a.MaxUses)
	}
	for _, r := range []string{"rita", "ravi"} {
		g := maps.Clone(a.Context)
		g[schemas.ContextApprovedAction], g[schemas.ContextApprovalID] = a.Action, a.ID
		if d := h.decideOne(t, principalRequest(t, r, []string{"risk-reviewers"}, "grant-u-"+r, schemas.ActionApprovalGrant, churn, g)); !d.Allowed() {
			t.Fatalf("%s's grant: %s/%s %q", r, d.Decision, d.Code, d.Reason)
		}
	}
	for i, want := range []string{"use 1 of 2", "use 2 of 2"} {
		if d := deploy("deploy-u" + string(rune('1'+i))); !d.Allowed() || d.ApprovalID != id || !strings.Contains(d.Reason, want) {
			t.Fatalf("use %d: %s/%s %q", i+1, d.Decision, d.Code, d.Reason)
		}
	}
	if d := deploy("deploy-u3"); d.Allowed() || d.Code != schemas.CodeApprovalUsed || !strings.Contains(d.Reason, "2 of 2 uses") {
		t.Fatalf("third try: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
}

// startWithModelsEdit starts a harness whose seed is the repository's
// policies with old replaced by new in models.cedar.
func startWithModelsEdit(t *testing.T, old, new string) *harness {
	t.Helper()
	files, err := engine.ReadDir(policyDir)
	if err != nil {
		t.Fatal(err)
	}
	for i, f := range files {
		if f.Name == "models.cedar" {
			files[i].Data = bytes.ReplaceAll(f.Data, []byte(old), []byte(new))
		}
	}
	set, err := engine.Compile(files)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, 2)
	h.svc.seed = set
	h.start(t)
	return h
}

// TestApprovalRejectionsAsStated: with @rejections("2") one objection
// does not end a request. It is recorded as an event of its own, withdraws
// that reviewer's grant and bars their granting again; the second
// distinct rejection ends it, and the retry opens a new request.
func TestApprovalRejectionsAsStated(t *testing.T) {
	t.Parallel()
	h := startWithModelsEdit(t, `@uses("1")`, `@uses("1") @rejections("2")`)
	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	ctx := map[string]any{"environment": "production", "model_version": "v14"}
	deploy := func(reqID string) schemas.Decision {
		return h.decideOne(t, principalRequest(t, "fiona", []string{"ml-platform"}, reqID, "model.deploy", churn, ctx))
	}
	id := deploy("deploy-j0").ApprovalID
	if a := h.approvalRequest(t, id); a.MaxRejections != 2 {
		t.Fatalf("max rejections %d, want 2", a.MaxRejections)
	}
	review := func(reqID, sub, verdict string) schemas.Decision {
		a := h.approvalRequest(t, id)
		g := maps.Clone(a.Context)
		g[schemas.ContextApprovedAction], g[schemas.ContextApprovalID] = a.Action, a.ID
		if verdict != "" {
			g[schemas.ContextApprovalVerdict] = verdict
		}
		return h.decideOne(t, principalRequest(t, sub, []string{"risk-reviewers"}, reqID, schemas.ActionApprovalGrant, churn, g))
	}
	if d := review("grant-j-rita", "rita", ""); !d.Allowed() {
		t.Fatalf("rita's grant: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := review("reject-j-rita", "rita", schemas.VerdictReject); !d.Allowed() || !strings.Contains(d.Reason, "rejection 1 of the 2") {
		t.Fatalf("rita's rejection: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	a := h.approvalRequest(t, id)
	if a.Status != schemas.StatusPending || len(a.Grants) != 0 || len(a.Rejections) != 1 {
		t.Fatalf("after one rejection: status %s, %d grants, %d rejections; want pending, rita's grant withdrawn, 1", a.Status, len(a.Grants), len(a.Rejections))
	}
	if d := review("grant-j-rita-again", "rita", ""); d.Allowed() || !strings.Contains(d.Reason, "rejection stands") {
		t.Fatalf("rita granting after her rejection: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := review("grant-j-ravi", "ravi", ""); !d.Allowed() {
		t.Fatalf("ravi's grant: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := deploy("deploy-j1"); d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID != id {
		t.Fatalf("deploy with one grant and one rejection: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := review("reject-j-rosa", "rosa", schemas.VerdictReject); !d.Allowed() || !strings.Contains(d.Reason, "rejected approval request "+id) {
		t.Fatalf("rosa's rejection: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if a := h.approvalRequest(t, id); a.Status != schemas.StatusRejected || a.RejectedBy != schemas.PrincipalID(testIss, "rosa") {
		t.Fatalf("after two rejections: %s by %s", a.Status, a.RejectedBy)
	}
	if n := countEvents(h.approvalEvents(t, schemas.ApprovalRejected), id); n != 2 {
		t.Errorf("%d rejected events, want one per rejecting reviewer (2)", n)
	}
	if d := deploy("deploy-j2"); d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == id {
		t.Fatalf("retry after the request ended: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
}

// TestGrantNeedsARequiredTeam: a reviewer whom Cedar lets grant
// (approval.grant) but who is in none of the teams the request requires
// does not count towards its quorum: here a set that lets security grant
// production releases, which need two risk reviewers.
func TestGrantNeedsARequiredTeam(t *testing.T) {
	t.Parallel()
	files, err := engine.ReadDir(policyDir)
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, engine.File{Name: "zz-security-grants.cedar", Data: []byte(`@id("security-approves-releases")
permit (principal in Group::"security", action == Action::"approval.grant", resource is Model);`)})
	set, err := engine.Compile(files)
	if err != nil {
		t.Fatal(err)
	}
	h := newHarness(t, 2)
	h.svc.seed = set
	h.start(t)
	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	ctx := map[string]any{"environment": "production", "model_version": "v14"}
	id := h.decideOne(t, principalRequest(t, "fiona", []string{"ml-platform"}, "deploy-t0", "model.deploy", churn, ctx)).ApprovalID
	a := h.approvalRequest(t, id)
	grant := func(reqID, sub string, groups ...string) schemas.Decision {
		g := maps.Clone(a.Context)
		g[schemas.ContextApprovedAction], g[schemas.ContextApprovalID] = a.Action, a.ID
		return h.decideOne(t, principalRequest(t, sub, groups, reqID, schemas.ActionApprovalGrant, churn, g))
	}
	if d := grant("grant-sam", "sam", "security"); d.Allowed() || d.Code != schemas.CodePolicyDenied || !strings.Contains(d.Reason, "in none of the teams") {
		t.Fatalf("security's grant: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if d := grant("grant-rita", "rita", "risk-reviewers"); !d.Allowed() || !strings.Contains(d.Reason, "risk-reviewers 1/2") {
		t.Fatalf("rita's grant: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if got := h.approvalRequest(t, id); got.Status != schemas.StatusPending || len(got.Grants) != 1 {
		t.Fatalf("after security and one risk reviewer: %s with %d grants", got.Status, len(got.Grants))
	}
	if d := h.decideOne(t, principalRequest(t, "fiona", []string{"ml-platform"}, "deploy-t1", "model.deploy", churn, ctx)); d.Allowed() || d.ApprovalID != id {
		t.Fatalf("deploy with security's and one risk reviewer's grant: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
}

// TestEraseNamesThePerson: an erasure's key id must be the key id of the
// person its context names, or it is malformed and no reviewer is asked;
// a matching one opens an approval request that shows whom.
func TestEraseNamesThePerson(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 2)
	subjects := schemas.Resource{Type: schemas.DataSubjectsType, ID: schemas.DataSubjectsID}
	erase := func(reqID, sub string, keyOf string) schemas.Decision {
		ctx := map[string]any{schemas.ContextSubjectKeyID: personal.SubjectKeyID(testIss, keyOf),
			schemas.ContextSubjectIssuer: testIss, schemas.ContextSubjectSub: sub}
		return h.decideOne(t, principalRequest(t, "paula", []string{"policy-admins"}, reqID, schemas.ActionPrivacyErase, subjects, ctx))
	}
	if d := erase("erase-mismatch", "erin", "frank"); d.Allowed() || d.Code != schemas.CodeMalformedRequest || d.ApprovalID != "" || !strings.Contains(d.Reason, "is not the key id of") {
		t.Fatalf("erasure naming erin with frank's key id: %s/%s %q (approval %q)", d.Decision, d.Code, d.Reason, d.ApprovalID)
	}
	d := erase("erase-erin", "erin", "erin")
	if d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == "" {
		t.Fatalf("erasure of erin: %s/%s %q", d.Decision, d.Code, d.Reason)
	}
	if a := h.approvalRequest(t, d.ApprovalID); a.Context[schemas.ContextSubjectSub] != "erin" || a.Context[schemas.ContextSubjectIssuer] != testIss {
		t.Fatalf("the approval request does not show whom: %v", a.Context)
	}
}
