package decide

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/policy/engine"
)

// addReplica starts a second policy service on the harness's server.
func (h *harness) addReplica(t *testing.T) *Service {
	t.Helper()
	nc, js := h.srv.ConnectT(t, schemas.RolePolicy)
	svc, err := NewService(Deps{
		NC: nc, JS: js, Topology: h.topo, Seed: seedSet(t), SeedEntities: sampleStore(t).Entities(),
		ApprovalTeams: []string{"risk-reviewers"}, ApprovalTTL: time.Hour,
		Log: zerolog.New(zerolog.NewTestWriter(t)), Registry: prometheus.NewRegistry(), Workers: 4,
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

func persona(t *testing.T, name, action string, res schemas.Resource, ctx map[string]any, id string, groups ...string) schemas.Verified {
	v := verified(t, "oscar", action, res.Type, res.ID, ctx)
	v.RequestID = id
	v.Principal.Subject, v.Principal.ID = name, schemas.PrincipalID(testIss, name)
	v.Principal.Groups = groups
	v.Principal.AMR = []string{"pwd", "otp"}
	return v
}

// A push is a governed request: it needs a policy admin and the risk
// reviewers' approval of exactly that set; once allowed, both running
// replicas switch to the new set without restart, and the change is an
// audited event. A set that fails validation is rejected whole.
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
	push := func(id, hash string) schemas.Decision {
		return h.decideVia(t, persona(t, "paula", schemas.ActionPolicyUpdate, policySet, map[string]any{schemas.ContextPolicyHash: hash}, id, "policy-admins"))
	}

	// Without the approval the push is denied and nothing changes.
	if d := push("push-1", hash); d.Decision != schemas.Deny || d.Code != schemas.CodePolicyDenied {
		t.Fatalf("unapproved push: %s/%s %s", d.Decision, d.Code, d.Reason)
	}
	// The pusher cannot approve her own push; a risk reviewer can.
	self := h.decideVia(t, persona(t, "paula", schemas.ActionApprovalGrant, policySet,
		map[string]any{schemas.ContextApprovedAction: schemas.ActionPolicyUpdate, schemas.ContextPolicyHash: hash}, "approve-self", "policy-admins", "risk-reviewers"))
	if !self.Allowed() {
		t.Fatalf("self approval grant: %s/%s %s", self.Decision, self.Code, self.Reason)
	}
	grant := h.decideVia(t, persona(t, "rita", schemas.ActionApprovalGrant, policySet,
		map[string]any{schemas.ContextApprovedAction: schemas.ActionPolicyUpdate, schemas.ContextPolicyHash: hash}, "approve-1", "risk-reviewers"))
	if !grant.Allowed() || !strings.Contains(grant.Reason, "risk-reviewers") {
		t.Fatalf("approval grant: %s/%s %s", grant.Decision, grant.Code, grant.Reason)
	}
	digest, _ := schemas.ApprovalDigest(schemas.ActionPolicyUpdate, policySet, map[string]any{schemas.ContextPolicyHash: hash})
	for _, r := range replicas {
		natsdev.WaitFor(t, 10*time.Second, "approvals seen by a replica", func() bool { return len(r.state.lookupApprovals(digest)) == 2 })
	}
	// A push of another set is not covered by this approval.
	other := stage(append(seed.Files(), engine.File{Name: "zz-other.cedar", Data: []byte(`@id("x") forbid (principal, action, resource) when { false };`)}))
	if d := push("push-other", other); d.Decision != schemas.Deny {
		t.Fatalf("push of an unapproved set: %s", d.Decision)
	}

	d := push("push-2", hash)
	if !d.Allowed() || d.PolicyVersion != seed.Version() || !slices.Equal(d.Approvals, []string{"risk-reviewers"}) {
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
	if evs := h.governanceEvents(t, "aigov.approval.used"); len(evs) != 1 || json.Unmarshal(evs[0], &used) != nil ||
		!slices.Equal(used.Approvers, []string{schemas.PrincipalID(testIss, "rita")}) || used.RequestID != "push-2" {
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

	// A set that does not validate is rejected whole, and audited.
	bad := stage(append(seed.Files(), engine.File{Name: "zz-bad.cedar", Data: []byte(`@id("typo") permit (principal, action, resource is Model) when { resource.enviroment == "staging" };`)}))
	for _, id := range []string{"approve-bad"} {
		h.decideVia(t, persona(t, "rita", schemas.ActionApprovalGrant, policySet,
			map[string]any{schemas.ContextApprovedAction: schemas.ActionPolicyUpdate, schemas.ContextPolicyHash: bad}, id, "risk-reviewers"))
	}
	badDigest, _ := schemas.ApprovalDigest(schemas.ActionPolicyUpdate, policySet, map[string]any{schemas.ContextPolicyHash: bad})
	for _, r := range replicas {
		natsdev.WaitFor(t, 10*time.Second, "approval of the bad set", func() bool { return len(r.state.lookupApprovals(badDigest)) == 1 })
	}
	if d := push("push-bad", bad); d.Decision != schemas.Deny || d.Code != schemas.CodePolicyInvalid || !strings.Contains(d.Reason, "enviroment") {
		t.Fatalf("invalid push: %s/%s %s", d.Decision, d.Code, d.Reason)
	}
	if evs := h.governanceEvents(t, "aigov.policy.rejected"); len(evs) != 1 || !strings.Contains(string(evs[0]), "enviroment") {
		t.Fatalf("policy.rejected events: %s", evs)
	}
	for _, r := range replicas {
		if v := r.state.snapshot().eval.Set().Version(); v != hash {
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
