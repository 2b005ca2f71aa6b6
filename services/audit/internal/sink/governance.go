package sink

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/aigov/aigov/schemas"
)

// Status values of the approvals table.
const (
	// ApprovalGranted: an allowed approval.grant decision recorded an
	// approval (schemas.Approval in the approvals bucket).
	ApprovalGranted = "granted"
	// ApprovalUsed: an approval counted towards an allowed request
	// (schemas.ApprovalUse, one row per approver).
	ApprovalUsed = "used"
	// The lifecycle of an approval request (schemas.ApprovalEvent): its
	// rows' approval_id is the request's id, and its use's rows too.
	ApprovalRequested = schemas.ApprovalRequested
	ApprovalApproved  = schemas.ApprovalApproved
	ApprovalRejected  = schemas.ApprovalRejected
	ApprovalExpired   = schemas.ApprovalExpired
)

// Kinds of the policy_changes table.
const (
	ChangePolicy = "policy"
	ChangeEntity = "entity"
	// ChangePrivacy: a data subject was erased (its version is the
	// erased subject key id).
	ChangePrivacy = "privacy"
)

// approvalUseRows maps an approval.used event (schemas.ApprovalUse) to one
// approvals row per approver. Each row's approval_id is the approvals
// bucket key of that approver's approval (schemas.ApprovalKey), the same id
// as the row of its grant, so "given" and "used" join on it.
func approvalUseRows(ev schemas.Event, raw []byte, md meta) ([]approvalRow, error) {
	var u schemas.ApprovalUse
	if err := json.Unmarshal(ev.Data, &u); err != nil {
		return nil, fmt.Errorf("%w: approval.used data: %v", schemas.ErrInvalidEvent, err)
	}
	if u.RequestID == "" || u.Digest == "" || u.Action == "" {
		return nil, fmt.Errorf("%w: approval.used needs request_id, digest and action", schemas.ErrInvalidEvent)
	}
	if u.ApprovalID != "" {
		// An approval request's use: one row, under the request's id.
		return []approvalRow{{EventID: ev.ID, Type: ev.Type, ApprovalID: u.ApprovalID, Status: ApprovalUsed,
			RequestID: u.RequestID, Action: u.Action, ResourceType: u.Resource.Type, ResourceID: u.Resource.ID,
			Approver: strings.Join(u.Approvers, ","), Requester: u.PrincipalID,
			Reason: fmt.Sprintf("use %d of %d; teams %s", u.Uses, u.MaxUses, strings.Join(u.Teams, ",")),
			Time:   ev.Time.UTC(), TimeUS: micros(ev.Time), Data: string(raw), Subject: md.Subject, Stream: md.Stream, Seq: md.Seq}}, nil
	}
	approvers := u.Approvers
	if len(approvers) == 0 {
		approvers = []string{""} // still one row: the use is audited
	}
	rows := make([]approvalRow, 0, len(approvers))
	for _, a := range approvers {
		id := u.Digest
		if a != "" {
			id = schemas.ApprovalKey(u.Digest, a)
		}
		rows = append(rows, approvalRow{EventID: ev.ID, Type: ev.Type, ApprovalID: id, Status: ApprovalUsed,
			RequestID: u.RequestID, Action: u.Action, ResourceType: u.Resource.Type, ResourceID: u.Resource.ID,
			Approver: a, Requester: u.PrincipalID, Reason: "teams " + strings.Join(u.Teams, ","),
			Time: ev.Time.UTC(), TimeUS: micros(ev.Time), Data: string(raw), Subject: md.Subject, Stream: md.Stream, Seq: md.Seq})
	}
	return rows, nil
}

// approvalEventRow maps a lifecycle event of an approval request
// (schemas.ApprovalEvent): status is the event (requested, granted,
// approved, rejected, expired), approver the reviewer, reason what the
// request needs and has.
func approvalEventRow(ev schemas.Event, raw []byte, md meta) (approvalRow, error) {
	var a schemas.ApprovalEvent
	if err := json.Unmarshal(ev.Data, &a); err != nil {
		return approvalRow{}, fmt.Errorf("%w: approval event data: %v", schemas.ErrInvalidEvent, err)
	}
	if a.ApprovalID == "" || a.Event == "" || a.Action == "" {
		return approvalRow{}, fmt.Errorf("%w: approval event needs approval_id, event and action", schemas.ErrInvalidEvent)
	}
	needs := make([]string, 0, len(a.Requirements))
	for _, r := range a.Requirements {
		needs = append(needs, fmt.Sprintf("%d of %s", r.Quorum, r.Team))
	}
	reason := fmt.Sprintf("status %s; needs %s; %d granted; %d use(s)", a.Status, strings.Join(needs, ", "), a.Grants, a.MaxUses)
	if a.Reason != "" {
		reason += "; " + a.Reason
	}
	var expires uint64
	if !a.ExpiresAt.IsZero() {
		expires = micros(a.ExpiresAt)
	}
	return approvalRow{EventID: ev.ID, Type: ev.Type, ApprovalID: a.ApprovalID, Status: a.Event,
		RequestID: a.RequestID, Action: a.Action, ResourceType: a.Resource.Type, ResourceID: a.Resource.ID,
		Approver: a.ReviewerID, Requester: a.RequesterID, Reason: truncate(reason, 4000), ExpiresUS: expires,
		Time: ev.Time.UTC(), TimeUS: micros(ev.Time), Data: string(raw), Subject: md.Subject, Stream: md.Stream, Seq: md.Seq}, nil
}

// approvalGrantRow is the approvals row of an allowed approval.grant
// decision: the policy service stored a schemas.Approval of the request
// made of context.approved_action on the decision's resource, under the key
// schemas.ApprovalKey(digest, approver). The digest is recomputed here
// from the decision's context exactly as the policy service computes it.
func approvalGrantRow(d decisionRow, ev schemas.Event, raw []byte, md meta) (approvalRow, bool) {
	if d.Action != schemas.ActionApprovalGrant || d.Decision != schemas.Allow {
		return approvalRow{}, false
	}
	// The row's context is the decision's, compacted and masked as the
	// stored event is.
	var context map[string]any
	if err := json.Unmarshal([]byte(d.Context), &context); err != nil {
		return approvalRow{}, false
	}
	action, _ := context[schemas.ContextApprovedAction].(string)
	if _, review := context[schemas.ContextApprovalID]; action == "" || review {
		// A review of an approval request is recorded by its own granted
		// or rejected event.
		return approvalRow{}, false
	}
	digest, err := schemas.ApprovalDigest(action, schemas.Resource{Type: d.ResourceType, ID: d.ResourceID}, context)
	if err != nil {
		return approvalRow{}, false
	}
	return approvalRow{EventID: ev.ID, Type: ev.Type, ApprovalID: schemas.ApprovalKey(digest, d.PrincipalID), Status: ApprovalGranted,
		RequestID: d.RequestID, Action: action, ResourceType: d.ResourceType, ResourceID: d.ResourceID,
		Approver: d.PrincipalID, Reason: d.Reason, Time: d.Time, TimeUS: d.TimeUS, Data: string(raw),
		Subject: md.Subject, Stream: md.Stream, Seq: md.Seq}, true
}

// policyChangeRow maps a policy.changed or policy.rejected event
// (schemas.PolicyChange).
func policyChangeRow(ev schemas.Event, raw []byte, md meta) (changeRow, error) {
	var c schemas.PolicyChange
	if err := json.Unmarshal(ev.Data, &c); err != nil {
		return changeRow{}, fmt.Errorf("%w: policy change data: %v", schemas.ErrInvalidEvent, err)
	}
	if c.PolicyVersion == "" {
		return changeRow{}, fmt.Errorf("%w: policy change without policy_version", schemas.ErrInvalidEvent)
	}
	by := c.By
	if c.Email != "" {
		by += " <" + c.Email + ">"
	}
	summary := "activated; policies " + strings.Join(c.PolicyIDs, ",")
	if len(c.ShadowIDs) > 0 {
		summary += "; shadow " + strings.Join(c.ShadowIDs, ",")
	}
	if ev.Type == schemas.TypePolicyRejected {
		summary = "rejected: " + strings.Join(c.Errors, "; ")
	}
	if c.RequestID != "" {
		summary += "; request " + c.RequestID
	}
	return changeRow{EventID: ev.ID, Type: ev.Type, Kind: ChangePolicy, Version: c.PolicyVersion, Previous: c.PreviousVersion,
		ChangedBy: by, Summary: truncate(summary, 4000), Time: ev.Time.UTC(), TimeUS: micros(ev.Time), Data: string(raw),
		Subject: md.Subject, Stream: md.Stream, Seq: md.Seq}, nil
}

// entityChangeRow maps an entity.changed event (schemas.EntityChange). The
// event names no author: entities are written to the bucket directly, so
// changed_by is empty and version is the bucket revision.
func entityChangeRow(ev schemas.Event, raw []byte, md meta) (changeRow, error) {
	var c schemas.EntityChange
	if err := json.Unmarshal(ev.Data, &c); err != nil {
		return changeRow{}, fmt.Errorf("%w: entity change data: %v", schemas.ErrInvalidEvent, err)
	}
	if (c.Op != "put" && c.Op != "delete") || c.Entity.Type == "" {
		return changeRow{}, fmt.Errorf("%w: entity change needs op put or delete and an entity", schemas.ErrInvalidEvent)
	}
	summary := c.Op
	if c.ValueSHA256 != "" {
		summary += " sha256:" + c.ValueSHA256
	}
	return changeRow{EventID: ev.ID, Type: ev.Type, Kind: ChangeEntity, Version: strconv.FormatInt(c.Revision, 10),
		EntityType: c.Entity.Type, EntityID: c.Entity.ID, Summary: summary, Time: ev.Time.UTC(), TimeUS: micros(ev.Time),
		Data: string(raw), Subject: md.Subject, Stream: md.Stream, Seq: md.Seq}, nil
}

// erasureRow maps a subject_erased event (schemas.SubjectErasure): kind
// privacy, version the erased subject key id, changed_by who asked.
func erasureRow(ev schemas.Event, raw []byte, md meta) (changeRow, error) {
	var e schemas.SubjectErasure
	if err := json.Unmarshal(ev.Data, &e); err != nil {
		return changeRow{}, fmt.Errorf("%w: subject erasure data: %v", schemas.ErrInvalidEvent, err)
	}
	if e.SubjectKeyID == "" || e.RequestID == "" {
		return changeRow{}, fmt.Errorf("%w: subject erasure needs subject_key_id and request_id", schemas.ErrInvalidEvent)
	}
	summary := "subject erased (key destroyed); request " + e.RequestID
	if e.ApprovalID != "" {
		summary += "; approval " + e.ApprovalID + " by " + strings.Join(e.Approvals, ",")
	}
	return changeRow{EventID: ev.ID, Type: ev.Type, Kind: ChangePrivacy, Version: e.SubjectKeyID,
		ChangedBy: e.By, EntityType: schemas.DataSubjectsType, EntityID: schemas.DataSubjectsID, Summary: truncate(summary, 4000),
		Time: ev.Time.UTC(), TimeUS: micros(ev.Time), Data: string(raw), Subject: md.Subject, Stream: md.Stream, Seq: md.Seq}, nil
}
