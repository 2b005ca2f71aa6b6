package sink

import (
	"context"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
)

// TestGovernanceEventsMapExactly publishes the events the policy service
// publishes, built from the schemas types themselves, and checks every
// column of their approvals and policy_changes rows.
func TestGovernanceEventsMapExactly(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{batchSize: 64})
	at := time.Date(2026, 11, 25, 10, 0, 0, 123456000, time.UTC)
	model := schemas.Resource{Type: "Model", ID: "fraud-detector"}
	deployCtx := map[string]any{"environment": "production", "model_version": "7"}

	// An approval given: an allowed approval.grant decision.
	grantCtx := map[string]any{"environment": "production", "model_version": "7", schemas.ContextApprovedAction: "model.deploy"}
	grant := schemas.Decision{RequestID: "req-grant", Action: schemas.ActionApprovalGrant, Resource: model, Context: grantCtx,
		Principal: &schemas.Principal{ID: "https://idp.example#rita", Subject: "rita", Email: "rita@aigov.example"},
		Decision:  schemas.Allow, Stage: schemas.StagePolicy, PolicyVersion: "sha256:aa",
		Timings: schemas.Timings{DecidedAt: at}}
	grantID := h.publishDecision(grant)
	digest, err := schemas.ApprovalDigest("model.deploy", model, deployCtx)
	if err != nil {
		t.Fatal(err)
	}
	if d2, _ := schemas.ApprovalDigest("model.deploy", model, grantCtx); d2 != digest {
		t.Fatal("approved_action must not be part of the digest")
	}
	// ...and a denied grant gives no approval row.
	denied := grant
	denied.RequestID, denied.Decision, denied.Code = "req-grant-denied", schemas.Deny, schemas.CodePolicyDenied
	h.publishDecision(denied)

	// An approval used by two approvers.
	use := schemas.ApprovalUse{RequestID: "req-deploy", Digest: digest, Action: "model.deploy", Resource: model,
		PrincipalID: "https://idp.example#carol", Approvers: []string{"https://idp.example#rita", "https://idp.example#sam"},
		Teams: []string{"ml-leads", "risk"}, PolicyIDs: []string{"deploy-needs-approvals"}, PolicyVersion: "sha256:aa", At: at}
	useID := schemas.DerivedID(use.RequestID, "approval.used")
	useSubject := h.subjects.Governance(schemas.KindApproval, schemas.ApprovalUsed)
	h.publish(useSubject, encode(t, useID, schemas.TypeApprovalUsed, at, use), useID)

	// A policy set activated, one rejected, an entity put and deleted.
	changed := schemas.PolicyChange{PolicyVersion: "sha256:bb", PreviousVersion: "sha256:aa", By: "https://idp.example#pat",
		Email: "pat@aigov.example", RequestID: "req-push", PolicyIDs: []string{"p1", "p2"}, ShadowIDs: []string{"s1"}, At: at}
	rejected := schemas.PolicyChange{PolicyVersion: "sha256:cc", PreviousVersion: "sha256:bb", By: "https://idp.example#pat",
		RequestID: "req-push-2", Errors: []string{"line 3: unknown entity type"}, At: at}
	put := schemas.EntityChange{Op: "put", Entity: schemas.Resource{Type: "Dataset", ID: "transactions"}, Revision: 42, ValueSHA256: "ab12", At: at}
	del := schemas.EntityChange{Op: "delete", Entity: schemas.Resource{Type: "Dataset", ID: "old"}, Revision: 43, At: at}
	erasedKey := strings.Repeat("ab", 32)
	erased := schemas.SubjectErasure{SubjectKeyID: erasedKey, RequestID: "req-erase", By: "https://idp.example#paula", ApprovalID: "apr-1",
		Approvals: []string{"risk-reviewers"}, PolicyIDs: []string{"policy-admins-erase-subjects"}, PolicyVersion: "sha256:bb", At: at}
	pub := []struct {
		subject, id, typ string
		data             any
	}{
		{h.subjects.Governance(schemas.KindPolicy, schemas.PolicyChanged), "ev-changed", schemas.TypePolicyChanged, changed},
		{h.subjects.Governance(schemas.KindPolicy, schemas.PolicyRejected), "ev-rejected", schemas.TypePolicyRejected, rejected},
		{h.subjects.Governance(schemas.KindEntity, schemas.EntityChanged), "ev-put", schemas.TypeEntityChanged, put},
		{h.subjects.Governance(schemas.KindEntity, schemas.EntityChanged), "ev-del", schemas.TypeEntityChanged, del},
		{h.subjects.Governance(schemas.KindPrivacy, schemas.SubjectErasedEvent), "ev-erased", schemas.TypeSubjectErased, erased},
	}
	for _, p := range pub {
		h.publish(p.subject, encode(t, p.id, p.typ, at, p.data), p.id)
	}

	h.waitCount(3, 20*time.Second, "SELECT count() FROM "+h.db+".approvals FINAL")
	h.waitCount(5, 20*time.Second, "SELECT count() FROM "+h.db+".policy_changes FINAL")

	type appr struct{ EventID, ApprovalID, Status, RequestID, Action, RType, RID, Approver, Requester, Reason string }
	rows, err := h.ch.Query(context.Background(), "SELECT event_id, approval_id, status, request_id, action, resource_type, resource_id, "+
		"approver, requester, reason FROM "+h.db+".approvals FINAL ORDER BY status, approver")
	if err != nil {
		t.Fatal(err)
	}
	var got []appr
	for rows.Next() {
		var a appr
		if err := rows.Scan(&a.EventID, &a.ApprovalID, &a.Status, &a.RequestID, &a.Action, &a.RType, &a.RID, &a.Approver, &a.Requester, &a.Reason); err != nil {
			t.Fatal(err)
		}
		got = append(got, a)
	}
	rows.Close()
	rita, sam := "https://idp.example#rita", "https://idp.example#sam"
	want := []appr{
		{grantID, schemas.ApprovalKey(digest, rita), ApprovalGranted, "req-grant", "model.deploy", "Model", "fraud-detector", rita, "", ""},
		{useID, schemas.ApprovalKey(digest, rita), ApprovalUsed, "req-deploy", "model.deploy", "Model", "fraud-detector", rita, "https://idp.example#carol", "teams ml-leads,risk"},
		{useID, schemas.ApprovalKey(digest, sam), ApprovalUsed, "req-deploy", "model.deploy", "Model", "fraud-detector", sam, "https://idp.example#carol", "teams ml-leads,risk"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("approvals rows:\n got %+v\nwant %+v", got, want)
	}
	// approvals_used: the decision's two approvers, who asked, the teams.
	if n := h.count("SELECT count() FROM " + h.db + ".approvals_used WHERE request_id = 'req-deploy' AND principal_id = 'https://idp.example#carol' " +
		"AND approver IN ('" + rita + "', '" + sam + "') AND teams = 'teams ml-leads,risk' AND action = 'model.deploy' AND resource_id = 'fraud-detector'"); n != 2 {
		t.Fatalf("approvals_used holds %d rows for the approved deploy, want 2", n)
	}
	// Given and used join on approval_id.
	if n := h.count("SELECT count() FROM (SELECT approval_id FROM " + h.db + ".approvals_final WHERE status = 'granted') " +
		"ANY INNER JOIN (SELECT approval_id, request_id FROM " + h.db + ".approvals_final WHERE status = 'used') USING approval_id"); n != 1 {
		t.Fatalf("%d granted approvals joined to their use, want 1", n)
	}

	type chg struct{ EventID, Type, Kind, Version, Previous, ChangedBy, EType, EID, Summary string }
	rows, err = h.ch.Query(context.Background(), "SELECT event_id, type, kind, version, previous, changed_by, entity_type, entity_id, summary FROM "+
		h.db+".policy_changes_final ORDER BY kind, version")
	if err != nil {
		t.Fatal(err)
	}
	var gotC []chg
	for rows.Next() {
		var c chg
		if err := rows.Scan(&c.EventID, &c.Type, &c.Kind, &c.Version, &c.Previous, &c.ChangedBy, &c.EType, &c.EID, &c.Summary); err != nil {
			t.Fatal(err)
		}
		gotC = append(gotC, c)
	}
	rows.Close()
	wantC := []chg{
		{"ev-put", schemas.TypeEntityChanged, ChangeEntity, "42", "", "", "Dataset", "transactions", "put sha256:ab12"},
		{"ev-del", schemas.TypeEntityChanged, ChangeEntity, "43", "", "", "Dataset", "old", "delete"},
		{"ev-changed", schemas.TypePolicyChanged, ChangePolicy, "sha256:bb", "sha256:aa", "https://idp.example#pat <pat@aigov.example>", "", "",
			"activated; policies p1,p2; shadow s1; request req-push"},
		{"ev-rejected", schemas.TypePolicyRejected, ChangePolicy, "sha256:cc", "sha256:bb", "https://idp.example#pat", "", "",
			"rejected: line 3: unknown entity type; request req-push-2"},
		{"ev-erased", schemas.TypeSubjectErased, ChangePrivacy, erasedKey, "", "https://idp.example#paula", schemas.DataSubjectsType, schemas.DataSubjectsID,
			"subject erased (key destroyed); request req-erase; approval apr-1 by risk-reviewers"},
	}
	if !reflect.DeepEqual(gotC, wantC) {
		t.Fatalf("policy_changes rows:\n got %+v\nwant %+v", gotC, wantC)
	}

	// A governance event that does not match its type is poison, not a
	// row with empty columns.
	h.publish(h.subjects.Governance(schemas.KindEntity, schemas.EntityChanged),
		encode(t, "ev-bad", schemas.TypeEntityChanged, at, map[string]any{"op": "rename"}), "ev-bad")
	h.waitCount(1, 20*time.Second, "SELECT count() FROM "+h.db+".anomalies_final WHERE kind = 'poison'")
	if n := h.count("SELECT count() FROM " + h.db + ".policy_changes FINAL"); n != 5 {
		t.Fatalf("%d policy_changes rows after a poison entity change, want 5", n)
	}
}

// TestApprovalRequestEventsInClickHouse: an approval request's lifecycle
// (requested, granted per reviewer, approved, used, and a rejected and an
// expired one) becomes one approvals row per event under the request's id,
// and a review decision adds no digest-keyed row of its own.
func TestApprovalRequestEventsInClickHouse(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{batchSize: 64})
	at := time.Date(2026, 11, 25, 10, 0, 0, 123456000, time.UTC)
	riley, rita, ravi := "https://idp.example#riley", "https://idp.example#rita", "https://idp.example#ravi"
	a := schemas.ApprovalRequest{
		ID: "apr-1", Status: schemas.StatusPending, RequesterID: riley, Digest: "sha256:ab", Action: "model.deploy",
		Resource: schemas.Resource{Type: "Model", ID: "churn-predictor"}, PolicyVersion: "sha256:aa",
		Requirements: []schemas.ApprovalRequirement{{Team: "risk-reviewers", Quorum: 2, PolicyID: "p"}},
		MaxUses:      1, RequestID: "deploy-1", CreatedAt: at, UpdatedAt: at, ExpiresAt: at.Add(time.Hour),
	}
	publish := func(event, requestID, reviewer string) {
		id := schemas.DerivedID(a.ID+"/"+reviewer, "approval."+event)
		h.publish(h.subjects.Governance(schemas.KindApproval, event),
			encode(t, id, schemas.TypeOfApprovalEvent(event), at, a.EventOf(event, requestID, reviewer, []string{"risk-reviewers"}, at)), id)
	}
	publish(schemas.ApprovalRequested, "deploy-1", "")
	a.Grants = append(a.Grants, schemas.ApprovalGrant{ReviewerID: rita, Teams: []string{"risk-reviewers"}, RequestID: "grant-rita", At: at})
	publish(schemas.ApprovalGranted, "grant-rita", rita)
	a.Grants = append(a.Grants, schemas.ApprovalGrant{ReviewerID: ravi, Teams: []string{"risk-reviewers"}, RequestID: "grant-ravi", At: at})
	a.Status = schemas.StatusApproved
	publish(schemas.ApprovalGranted, "grant-ravi", ravi)
	publish(schemas.ApprovalApproved, "grant-ravi", ravi)
	use := schemas.ApprovalUse{ApprovalID: a.ID, RequestID: "deploy-2", Digest: a.Digest, Action: a.Action, Resource: a.Resource,
		PrincipalID: riley, Approvers: []string{ravi, rita}, Teams: []string{"risk-reviewers"}, PolicyVersion: "sha256:aa", Uses: 1, MaxUses: 1, At: at}
	useID := schemas.DerivedID(use.RequestID, "approval.used")
	h.publish(h.subjects.Governance(schemas.KindApproval, schemas.ApprovalUsed), encode(t, useID, schemas.TypeApprovalUsed, at, use), useID)
	// A review decision: recorded by its granted event, not as a digest approval.
	grantCtx := map[string]any{"environment": "production", schemas.ContextApprovedAction: "model.deploy", schemas.ContextApprovalID: a.ID}
	h.publishDecision(schemas.Decision{RequestID: "grant-rita", Action: schemas.ActionApprovalGrant, Resource: a.Resource, Context: grantCtx,
		Principal: &schemas.Principal{ID: rita, Subject: "rita"}, Decision: schemas.Allow, Stage: schemas.StagePolicy, PolicyVersion: "sha256:aa",
		Timings: schemas.Timings{DecidedAt: at}})
	a2 := a
	a2.ID, a2.Status, a2.Grants, a2.RejectedBy, a2.Reason = "apr-2", schemas.StatusRejected, nil, rita, "rejected by "+rita
	a = a2
	publish(schemas.ApprovalRejected, "reject-rita", rita)
	a.ID, a.Status, a.RejectedBy, a.Reason = "apr-3", schemas.StatusExpired, "", "expired before it was approved"
	publish(schemas.ApprovalExpired, "deploy-9", "")

	h.waitCount(7, 20*time.Second, "SELECT count() FROM "+h.db+".approvals FINAL")
	type appr struct{ ApprovalID, Status, RequestID, Approver, Requester string }
	rows, err := h.ch.Query(context.Background(), "SELECT approval_id, status, request_id, approver, requester FROM "+h.db+
		".approvals FINAL ORDER BY approval_id, event_time_us, status, approver")
	if err != nil {
		t.Fatal(err)
	}
	var got []appr
	for rows.Next() {
		var r appr
		if err := rows.Scan(&r.ApprovalID, &r.Status, &r.RequestID, &r.Approver, &r.Requester); err != nil {
			t.Fatal(err)
		}
		got = append(got, r)
	}
	rows.Close()
	want := []appr{
		{"apr-1", ApprovalApproved, "grant-ravi", ravi, riley},
		{"apr-1", ApprovalGranted, "grant-ravi", ravi, riley},
		{"apr-1", ApprovalGranted, "grant-rita", rita, riley},
		{"apr-1", ApprovalRequested, "deploy-1", "", riley},
		{"apr-1", ApprovalUsed, "deploy-2", ravi + "," + rita, riley},
		{"apr-2", ApprovalRejected, "reject-rita", rita, riley},
		{"apr-3", ApprovalExpired, "deploy-9", "", riley},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("approvals rows:\n got %+v\nwant %+v", got, want)
	}
	if n := h.count("SELECT count() FROM " + h.db + ".approvals FINAL WHERE approval_id = 'apr-1' AND status = 'requested' AND expires_at_us > 0 AND reason LIKE '%needs 2 of risk-reviewers%'"); n != 1 {
		t.Fatalf("requested row without its expiry and requirement (%d)", n)
	}
}
