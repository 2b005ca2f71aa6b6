package decide

import (
	"context"
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/servicekit"
)

// addReplica starts a second policy service on the harness's server.
func (h *harness) addReplica(t *testing.T) *Service {
	t.Helper()
	nc, js := h.srv.ConnectT(t, schemas.RolePolicy)
	svc, err := NewService(Config{Seed: seedSet(t), SeedEntities: sampleStore(t).Entities(),
		ApprovalTeams: []string{"risk-reviewers"}, ApprovalTTL: time.Hour, Workers: 4,
	}, servicekit.Deps{
		NC: nc, JS: js, Topology: h.topo,
		Log: zerolog.New(zerolog.NewTestWriter(t)), HTTP: servicekit.NewUnboundServer(),
		Signer: h.keys.Signer(schemas.RolePolicy), Trust: h.keys.Trust(),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("replica run: %v", err)
		}
	})
	return svc
}

// decideVia publishes v and waits for its decision.
func (h *harness) decideVia(t *testing.T, v schemas.Verified) schemas.Decision {
	t.Helper()
	h.publishVerified(t, v, v.RequestID)
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s, err := h.js.Stream(ctx, h.topo.StreamDecisions())
		if err == nil {
			var m *jetstream.RawStreamMsg
			if m, err = s.GetLastMsgForSubject(ctx, h.topo.Subjects.Decision(v.Request.Action)); err == nil {
				if _, d := decodeDecision(t, m.Data); d.RequestID == v.RequestID {
					cancel()
					return d
				}
			}
		}
		cancel()
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("no decision for %s", v.RequestID)
	return schemas.Decision{}
}

// governanceEvents returns the data of every event on subject.
func (h *harness) governanceEvents(t *testing.T, subject string) []json.RawMessage {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := h.js.OrderedConsumer(ctx, h.topo.StreamGovernance(), jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out []json.RawMessage
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			ev, err := schemas.ParseEvent(m.Data())
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, ev.Data)
		}
		if n == 0 {
			return out
		}
	}
}

// drained waits until the policy consumer has nothing pending or unacked.
func (h *harness) drained(t *testing.T) {
	t.Helper()
	natsdev.WaitFor(t, 10*time.Second, "the policy consumer drained", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		cons, err := h.js.Consumer(ctx, h.topo.StreamVerified(), schemas.ConsumerPolicy)
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
}

func persona(t *testing.T, name, action string, res schemas.Resource, ctx map[string]any, id string, groups ...string) schemas.Verified {
	v := verified(t, "oscar", action, res.Type, res.ID, ctx)
	v.RequestID = id
	v.Principal.Subject, v.Principal.ID = name, schemas.PrincipalID(testIss, name)
	v.Principal.Groups = groups
	v.Principal.AMR = []string{"pwd", "otp"}
	return v
}

// A push is a governed request: it needs a policy admin and an approval
// request for exactly that set over the active one, approved by two risk
// reviewers, never the pusher; once allowed, both running replicas switch
// to the new set without restart, and the change is an audited event. The
// approval is used once: after a rollback it cannot activate the set
// again. A set that fails validation is rejected whole, before any
// reviewer is asked.
func TestPolicyPushAcrossReplicas(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 4)
	r2 := h.addReplica(t)
	replicas := []*Service{h.svc, r2}
	seed := seedSet(t)
	natsdev.WaitFor(t, 10*time.Second, "both replicas loaded", func() bool {
		return h.svc.state.snapshot() != nil && r2.state.snapshot() != nil
	})

	// Stage a new set: the sample plus one policy.
	files := seed.Files()
	files = append(files, engine.File{Name: "zz-extra.cedar", Data: []byte(`@id("data-scientists-deploy-staging")
permit (principal in Group::"data-scientists", action == Action::"model.deploy", resource is Model)
when { context has environment && context.environment == "staging" };`)})
	stage := func(files []engine.File) string {
		b, hash, err := engine.EncodeBundle(files)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := h.js.KeyValue(context.Background(), h.topo.BucketPolicyProposals())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Put(context.Background(), engine.HexOf(hash), b); err != nil {
			t.Fatal(err)
		}
		return hash
	}
	hash := stage(files)
	policySet := schemas.Resource{Type: schemas.PolicySetType, ID: schemas.PolicySetID}
	// paula is a policy admin who also reviews risk: she may review
	// others' requests, never her own push.
	paula := []string{"policy-admins", "risk-reviewers"}
	push := func(id, who, hash string) schemas.Decision {
		return h.decideVia(t, persona(t, who, schemas.ActionPolicyUpdate, policySet, map[string]any{schemas.ContextPolicyHash: hash}, id, paula...))
	}
	review := func(id, who, aprID string, groups ...string) schemas.Decision {
		a := h.approvalRequest(t, aprID)
		ctx := maps.Clone(a.Context)
		ctx[schemas.ContextApprovedAction], ctx[schemas.ContextApprovalID] = a.Action, a.ID
		return h.decideVia(t, persona(t, who, schemas.ActionApprovalGrant, policySet, ctx, id, groups...))
	}

	// Without the approval the push is denied, an approval request is
	// opened for it, and nothing changes.
	d := push("push-1", "paula", hash)
	if d.Decision != schemas.Deny || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == "" || !strings.Contains(d.Reason, "2 of risk-reviewers (policy-admins-update-policies)") {
		t.Fatalf("unapproved push: %s/%s %s", d.Decision, d.Code, d.Reason)
	}
	id := d.ApprovalID
	if a := h.approvalRequest(t, id); a.Action != schemas.ActionPolicyUpdate || a.Context[schemas.ContextPolicyHash] != hash || a.PolicyVersion != seed.Version() {
		t.Fatalf("approval request %+v", a)
	}
	// The pusher cannot approve her own push, though she is a risk reviewer.
	if self := review("approve-self", "paula", id, paula...); self.Allowed() || !strings.Contains(self.Reason, "self-approval refused") {
		t.Fatalf("self approval: %s/%s %s", self.Decision, self.Code, self.Reason)
	}
	// A policy admin who is no risk reviewer may not approve at all.
	if g := review("approve-paul", "paul", id, "policy-admins"); g.Allowed() || g.Code != schemas.CodePolicyDenied {
		t.Fatalf("policy admin's approval: %s/%s %s", g.Decision, g.Code, g.Reason)
	}
	if g := review("approve-rita", "rita", id, "risk-reviewers"); !g.Allowed() || !strings.Contains(g.Reason, "risk-reviewers 1/2") {
		t.Fatalf("rita's approval: %s/%s %s", g.Decision, g.Code, g.Reason)
	}
	if d := push("push-half", "paula", hash); d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID != id {
		t.Fatalf("push with one of two approvals: %s/%s %s", d.Decision, d.Code, d.Reason)
	}
	if g := review("approve-ravi", "ravi", id, "risk-reviewers"); !g.Allowed() || !strings.Contains(g.Reason, "approved") {
		t.Fatalf("ravi's approval: %s/%s %s", g.Decision, g.Code, g.Reason)
	}
	for _, r := range replicas {
		natsdev.WaitFor(t, 10*time.Second, "the approved request seen by a replica", func() bool {
			a, ok := r.state.requests.lookup(schemas.PrincipalID(testIss, "paula"), h.approvalRequest(t, id).Digest)
			return ok && a.Status == schemas.StatusApproved
		})
	}
	// Bound to the pusher and to the set: another admin's push of the same
	// set, or paula's push of another set, needs its own approval.
	if d := push("push-other-admin", "pat", hash); d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == id {
		t.Fatalf("another admin's push: %s/%s %s", d.Decision, d.Code, d.Reason)
	}
	other := stage(append(seed.Files(), engine.File{Name: "zz-other.cedar", Data: []byte(`@id("x") forbid (principal, action, resource) when { false };`)}))
	if d := push("push-other", "paula", other); d.Allowed() || d.Code != schemas.CodeApprovalRequired || d.ApprovalID == id {
		t.Fatalf("push of an unapproved set: %s/%s %s", d.Decision, d.Code, d.Reason)
	}

	push2 := persona(t, "paula", schemas.ActionPolicyUpdate, policySet, map[string]any{schemas.ContextPolicyHash: hash}, "push-2", paula...)
	d = h.decideVia(t, push2)
	if !d.Allowed() || d.PolicyVersion != seed.Version() || !slices.Equal(d.Approvals, []string{"risk-reviewers"}) || d.ApprovalID != id ||
		!strings.Contains(d.Reason, "use 1 of 1") || !strings.Contains(d.Reason, "activated policy set "+hash) {
		t.Fatalf("approved push: %s/%s %q version %s approvals %v", d.Decision, d.Code, d.Reason, d.PolicyVersion, d.Approvals)
	}
	for _, r := range replicas {
		natsdev.WaitFor(t, 10*time.Second, "replica on the new set", func() bool { return r.state.snapshot().eval.Set().Version() == hash })
	}
	var changes []schemas.PolicyChange
	for _, raw := range h.governanceEvents(t, "aigov.policy.changed") {
		var c schemas.PolicyChange
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		changes = append(changes, c)
	}
	if len(changes) != 2 || changes[0].By != EventSource || changes[1].PolicyVersion != hash ||
		changes[1].PreviousVersion != seed.Version() || changes[1].By != schemas.PrincipalID(testIss, "paula") || changes[1].RequestID != "push-2" {
		t.Fatalf("policy.changed events (seed, push) = %+v", changes)
	}
	var used schemas.ApprovalUse
	if evs := h.governanceEvents(t, "aigov.approval.used"); len(evs) != 1 || json.Unmarshal(evs[0], &used) != nil || used.ApprovalID != id ||
		!slices.Equal(used.Approvers, []string{schemas.PrincipalID(testIss, "ravi"), schemas.PrincipalID(testIss, "rita")}) || used.RequestID != "push-2" {
		t.Fatalf("approval.used events: %s", evs)
	}

	// Every replica now decides with the new policy.
	for i := range 4 {
		v := verified(t, "alice", "model.deploy", "Model", "fraud-detector", map[string]any{"environment": "staging"})
		v.RequestID = "after-" + string(rune('a'+i))
		if d := h.decideVia(t, v); !d.Allowed() || d.PolicyVersion != hash || !slices.Equal(d.PolicyIDs, []string{"data-scientists-deploy-staging"}) {
			t.Fatalf("decision under the new set: %s %q %s", d.Decision, d.PolicyIDs, d.PolicyVersion)
		}
	}

	// The push redelivered, now decided under the set it activated, is
	// answered as it was; a new push of the active set is refused, and
	// opens no approval request.
	h.publishVerified(t, push2, "redelivered-push-2")
	h.drained(t)
	for _, raw := range h.governanceEvents(t, "aigov.policy.rejected") {
		if strings.Contains(string(raw), `"push-2"`) {
			t.Fatalf("the redelivered push was rejected: %s", raw)
		}
	}
	if evs := h.governanceEvents(t, "aigov.approval.used"); len(evs) != 1 {
		t.Fatalf("approval.used events after the redelivery: %s", evs)
	}
	if a := h.approvalRequest(t, id); a.Uses != 1 || a.Status != schemas.StatusUsed {
		t.Fatalf("after the redelivery: %d uses, %s", a.Uses, a.Status)
	}
	if d := push("push-again", "paula", hash); d.Allowed() || d.Code != schemas.CodePolicyInvalid || d.ApprovalID != "" || !strings.Contains(d.Reason, "already the active set") {
		t.Fatalf("push of the active set: %s/%s %s", d.Decision, d.Code, d.Reason)
	}

	// Roll back to the seed (its own approval), then replay: the first
	// approval of "this set over the seed" was used, so it activates
	// nothing again.
	if got := stage(seed.Files()); got != seed.Version() {
		t.Fatalf("the seed staged as %s, not %s", got, seed.Version())
	}
	back := push("push-back", "paula", seed.Version())
	if back.Code != schemas.CodeApprovalRequired {
		t.Fatalf("rollback push: %s/%s %s", back.Decision, back.Code, back.Reason)
	}
	for _, r := range []string{"rita", "ravi"} {
		if g := review("approve-back-"+r, r, back.ApprovalID, "risk-reviewers"); !g.Allowed() {
			t.Fatalf("%s's approval of the rollback: %s/%s %s", r, g.Decision, g.Code, g.Reason)
		}
	}
	if d := push("push-back-2", "paula", seed.Version()); !d.Allowed() || d.ApprovalID != back.ApprovalID {
		t.Fatalf("approved rollback: %s/%s %s", d.Decision, d.Code, d.Reason)
	}
	for _, r := range replicas {
		natsdev.WaitFor(t, 10*time.Second, "replica back on the seed", func() bool { return r.state.snapshot().eval.Set().Version() == seed.Version() })
	}
	// A replay under the id of the push that used the approval (a
	// requester may reuse an id once JetStream's duplicate window passed):
	// a new verification of it is no redelivery, and rides on no use.
	// (Its decision event shares the first one's id, so inside this test's
	// duplicate window only the effects can be checked.)
	changesBefore := len(h.governanceEvents(t, "aigov.policy.changed"))
	h.publishVerified(t, persona(t, "paula", schemas.ActionPolicyUpdate, policySet, map[string]any{schemas.ContextPolicyHash: hash}, "push-2", paula...), "replayed-push-2")
	h.drained(t)
	for _, r := range replicas {
		if v := r.state.snapshot().eval.Set().Version(); v != seed.Version() {
			t.Fatalf("the replay under a used id activated %s", v)
		}
	}
	if n := len(h.governanceEvents(t, "aigov.policy.changed")); n != changesBefore {
		t.Fatalf("the replay under a used id changed the policy: %d policy.changed events, %d before", n, changesBefore)
	}
	if a := h.approvalRequest(t, id); a.Uses != 1 || len(a.UsedBy) != 1 {
		t.Fatalf("after the replay under a used id: %d uses by %v", a.Uses, a.UsedBy)
	}
	// A replay under a new id: the used approval is spent (the replay above
	// opened a new request, which this one finds pending).
	if d := push("push-replay", "paula", hash); d.Allowed() || (d.Code != schemas.CodeApprovalUsed && d.Code != schemas.CodeApprovalRequired) || d.ApprovalID == id {
		t.Fatalf("replayed approval: %s/%s %s", d.Decision, d.Code, d.Reason)
	}

	// A set that does not validate is rejected whole, and audited, and no
	// reviewer is asked to approve it.
	bad := stage(append(seed.Files(), engine.File{Name: "zz-bad.cedar", Data: []byte(`@id("typo") permit (principal, action, resource is Model) when { resource.enviroment == "staging" };`)}))
	if d := push("push-bad", "paula", bad); d.Decision != schemas.Deny || d.Code != schemas.CodePolicyInvalid || d.ApprovalID != "" || !strings.Contains(d.Reason, "enviroment") {
		t.Fatalf("invalid push: %s/%s %s", d.Decision, d.Code, d.Reason)
	}
	if d := push("push-unstaged", "paula", "sha256:"+strings.Repeat("ab", 32)); d.Code != schemas.CodePolicyInvalid || d.ApprovalID != "" || !strings.Contains(d.Reason, "no staged policy set") {
		t.Fatalf("unstaged push: %s/%s %s", d.Decision, d.Code, d.Reason)
	}
	if evs := h.governanceEvents(t, "aigov.policy.rejected"); len(evs) != 3 || !strings.Contains(string(evs[1]), "enviroment") {
		t.Fatalf("policy.rejected events (active set, bad, unstaged): %s", evs)
	}
	for _, r := range replicas {
		if v := r.state.snapshot().eval.Set().Version(); v != seed.Version() {
			t.Errorf("a replica moved to %s after a rejected push", v)
		}
	}
}

// Digest-keyed approvals (aigov approve --action ...) no longer unlock an
// action an @approval policy covers: rita's approval of "a production
// deploy of churn-predictor" is recorded, but erin's deploy still needs
// an approval request of her own (approvals_test.go drives that one).
func TestDigestApprovalsDoNotUnlockGatedActions(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 4)
	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	prod := map[string]any{"environment": "production"}
	deploy := func(id string, ctx map[string]any) schemas.Decision {
		return h.decideVia(t, persona(t, "erin", "model.deploy", churn, ctx, id, "ml-platform"))
	}
	if d := deploy("deploy-1", prod); d.Decision != schemas.Deny || d.Code != schemas.CodeApprovalRequired || !slices.Contains(d.PolicyIDs, "production-release-needs-risk-approval") {
		t.Fatalf("deploy without approval: %s/%s %q", d.Decision, d.Code, d.PolicyIDs)
	}
	// alice (no approval team) is not allowed to approve.
	if d := h.decideVia(t, persona(t, "alice", schemas.ActionApprovalGrant, churn, map[string]any{"environment": "production", schemas.ContextApprovedAction: "model.deploy"}, "alice-approves", "data-scientists")); d.Allowed() {
		t.Fatal("a data scientist approved a production deploy")
	}
	for _, id := range []string{"rita-1", "ravi-1"} {
		sub := strings.TrimSuffix(id, "-1")
		if d := h.decideVia(t, persona(t, sub, schemas.ActionApprovalGrant, churn, map[string]any{"environment": "production", schemas.ContextApprovedAction: "model.deploy"}, id, "risk-reviewers")); !d.Allowed() {
			t.Fatalf("%s's grant: %s %s", sub, d.Decision, d.Reason)
		}
	}
	digest, _ := schemas.ApprovalDigest("model.deploy", churn, prod)
	natsdev.WaitFor(t, 10*time.Second, "approvals stored", func() bool { return len(h.svc.state.lookupApprovals(digest)) == 2 })
	d := deploy("deploy-2", prod)
	if d.Allowed() || d.Code != schemas.CodeApprovalRequired || len(d.Approvals) != 0 || d.ApprovalID == "" {
		t.Fatalf("deploy with digest approvals: %s/%s %q approvals %v", d.Decision, d.Code, d.Reason, d.Approvals)
	}
	if evs := h.governanceEvents(t, "aigov.approval.used"); len(evs) != 0 {
		t.Fatalf("approval.used events: %s", evs)
	}
}

// Entity changes reach the replicas and are audited.
func TestEntityStoreChanges(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 2)
	natsdev.WaitFor(t, 10*time.Second, "loaded", func() bool { return h.svc.state.snapshot() != nil })
	kv, err := h.js.KeyValue(context.Background(), h.topo.BucketEntities())
	if err != nil {
		t.Fatal(err)
	}
	ent := []byte(`{"uid":{"type":"Model","id":"new-model"},"attrs":{"environment":"staging","stage":"candidate","owner_team":{"__entity":{"type":"Group","id":"ml-platform"}}},"parents":[]}`)
	key := "Model." + strings.TrimRight(b64("new-model"), "=")
	if _, err := kv.Put(context.Background(), key, ent); err != nil {
		t.Fatal(err)
	}
	v := verified(t, "alice", "model.retrain", "Model", "new-model", map[string]any{"environment": "staging"})
	natsdev.WaitFor(t, 10*time.Second, "entity loaded", func() bool { return h.svc.state.snapshot().eval.Decide(v).Allowed() })
	if err := kv.Delete(context.Background(), key); err != nil {
		t.Fatal(err)
	}
	natsdev.WaitFor(t, 10*time.Second, "entity deleted", func() bool { return h.svc.state.snapshot().eval.Decide(v).Code == schemas.CodeUnknownResource })
	natsdev.WaitFor(t, 10*time.Second, "entity events", func() bool { return len(h.governanceEvents(t, "aigov.entity.changed")) == 2 })
}
