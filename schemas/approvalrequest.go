package schemas

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"
)

// Approval requests (issue 14): an approval is an object with a lifecycle.
// A request denied only because a policy annotated @approval needs an
// approval opens an ApprovalRequest for that requester and that exact
// request (RequestDigest); reviewers grant or reject it with approval.grant
// naming it in context.approval_id; once a quorum of distinct reviewers
// (none of them the requester, each from an allowed team) granted it, the
// same requester's retry of the same request is allowed, MaxUses times.
const (
	// TypeApprovalRequested .. TypeApprovalExpired are the lifecycle
	// events (ApprovalEvent); the use is TypeApprovalUsed (ApprovalUse
	// with ApprovalID set).
	TypeApprovalRequested = "dev.aigov.approval.requested.v1"
	TypeApprovalGranted   = "dev.aigov.approval.granted.v1"
	TypeApprovalApproved  = "dev.aigov.approval.approved.v1"
	TypeApprovalRejected  = "dev.aigov.approval.rejected.v1"
	TypeApprovalExpired   = "dev.aigov.approval.expired.v1"

	// SchemaApprovalRequest is the JSON Schema of ApprovalEvent (its
	// $defs/request is the bucket value, ApprovalRequest).
	SchemaApprovalRequest = "approval_request.json"

	// ContextApprovalID names the approval request an approval.grant
	// reviews; ContextApprovalVerdict is VerdictApprove (the default) or
	// VerdictReject.
	ContextApprovalID      = "approval_id"
	ContextApprovalVerdict = "approval_verdict"
	VerdictApprove         = "approve"
	VerdictReject          = "reject"
)

// Lifecycle event names (third subject token) and ApprovalRequest statuses.
const (
	ApprovalRequested = "requested"
	ApprovalGranted   = "granted"
	ApprovalApproved  = "approved"
	ApprovalRejected  = "rejected"
	ApprovalExpired   = "expired"

	// StatusPending, StatusApproved... are ApprovalRequest.Status values.
	StatusPending  = "pending"
	StatusApproved = "approved"
	StatusRejected = "rejected"
	StatusExpired  = "expired"
	StatusUsed     = "used"
)

// TypeOfApprovalEvent maps a lifecycle event name to its CloudEvent type.
func TypeOfApprovalEvent(name string) string {
	return "dev.aigov.approval." + name + ".v1"
}

// DerivedContextFields are the context fields aigov sets itself
// (policy/engine overwrites them); they are left out of RequestDigest.
var DerivedContextFields = []string{"scopes", "mfa", "session_age_seconds", "approvals", "hour_utc", "weekday"}

// ReviewContextFields are the approval.grant context fields that name the
// review rather than the request reviewed; left out when a grant's context
// is compared with its approval request.
var ReviewContextFields = []string{ContextApprovedAction, ContextApprovalID, ContextApprovalVerdict}

// RequestDigest is the "sha256:<hex>" digest of a request's whole canonical
// content: its action, resource, its context minus DerivedContextFields, and
// the policy set version that decided it. An approval request is bound to
// it: any other field, another value, or another policy set is another
// request. Numbers are normalised through float64 so that 20 and 20.0 agree;
// encoding/json writes map keys sorted, so the encoding is canonical.
func RequestDigest(action string, r Resource, ctx map[string]any, policyVersion string) (string, error) {
	norm, err := CanonicalContext(ctx)
	if err != nil {
		return "", fmt.Errorf("request digest: %w", err)
	}
	b, err := json.Marshal(struct {
		Action        string         `json:"action"`
		Resource      Resource       `json:"resource"`
		Context       map[string]any `json:"context"`
		PolicyVersion string         `json:"policy_version"`
	}{action, r, norm, policyVersion})
	if err != nil {
		return "", fmt.Errorf("request digest: %w", err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// CanonicalContext is ctx without DerivedContextFields, the named fields
// and null values, normalised through JSON (numbers become float64).
func CanonicalContext(ctx map[string]any, without ...string) (map[string]any, error) {
	fields := make(map[string]any, len(ctx))
	for k, v := range ctx {
		if v == nil || slices.Contains(DerivedContextFields, k) || slices.Contains(without, k) {
			continue
		}
		fields[k] = v
	}
	raw, err := json.Marshal(fields)
	if err != nil {
		return nil, err
	}
	var norm map[string]any
	if err := json.Unmarshal(raw, &norm); err != nil {
		return nil, err
	}
	return norm, nil
}

// SameReview reports whether an approval.grant's context reviews exactly
// the context of approval request a: equal once ReviewContextFields and
// DerivedContextFields are left out of both.
func (a ApprovalRequest) SameReview(grantCtx map[string]any) (bool, error) {
	g, err := CanonicalContext(grantCtx, ReviewContextFields...)
	if err != nil {
		return false, err
	}
	r, err := CanonicalContext(a.Context, ReviewContextFields...)
	if err != nil {
		return false, err
	}
	gb, _ := json.Marshal(g)
	rb, _ := json.Marshal(r)
	return string(gb) == string(rb), nil
}

// ApprovalRequestID derives an approval request's id from the requester,
// the denied request that opened it and its digest, so a redelivery of that
// request opens the same one.
func ApprovalRequestID(requester, requestID, digest string) string {
	h := sha256.Sum256([]byte(requester + "\x00" + requestID + "\x00" + digest))
	return "apr-" + hex.EncodeToString(h[:12])
}

// ApprovalRequirement is one @approval annotation of a policy: Quorum
// distinct reviewers from Team.
type ApprovalRequirement struct {
	Team   string `json:"team"`
	Quorum int    `json:"quorum"`
	// PolicyID is the policy whose annotation states it.
	PolicyID string `json:"policy_id"`
}

// ApprovalGrant is one reviewer's grant of an approval request.
type ApprovalGrant struct {
	ReviewerID string `json:"reviewer_id"`
	// Teams are the reviewer's groups among the request's required teams.
	Teams []string `json:"teams"`
	// RequestID is the approval.grant request.
	RequestID string    `json:"request_id"`
	At        time.Time `json:"at"`
}

// ApprovalRequest is the value of one approval request in the approval
// requests bucket, under its ID.
type ApprovalRequest struct {
	ID string `json:"id"`
	// Status is StatusPending, StatusApproved, StatusRejected,
	// StatusExpired or StatusUsed.
	Status string `json:"status"`
	// RequesterID is the principal id of the requester: only their retry
	// can use the approval, and they can never review it.
	RequesterID string `json:"requester_id"`
	// Digest is RequestDigest of the request approved.
	Digest   string   `json:"digest"`
	Action   string   `json:"action"`
	Resource Resource `json:"resource"`
	// Context is the request's context minus DerivedContextFields: what
	// the reviewers approve, and what their approval.grant carries.
	Context map[string]any `json:"context,omitempty"`
	// PolicyVersion is the policy set the digest binds.
	PolicyVersion string `json:"policy_version"`
	// Requirements are the @approval annotations of the policies that
	// denied; every one must be met.
	Requirements []ApprovalRequirement `json:"requirements"`
	// Grants are the reviewers' grants, in order, one per reviewer.
	Grants []ApprovalGrant `json:"grants,omitempty"`
	// MaxUses is how many allowed retries the approval unlocks (@uses,
	// default 1); Uses counts them and UsedBy lists their request ids.
	MaxUses int      `json:"max_uses"`
	Uses    int      `json:"uses"`
	UsedBy  []string `json:"used_by,omitempty"`
	// UsedAt is, for each use in UsedBy, when authn verified the request
	// that spent it: a redelivery of that verified event carries the same
	// time, a new request under a reused id (after JetStream's duplicate
	// window) another one, and must not ride on the old use.
	UsedAt []time.Time `json:"used_at,omitempty"`
	// MaxRejections is how many distinct reviewers' rejections end the
	// request (@rejections; 0, from before it existed, counts as 1).
	// Rejections are the rejections so far, one per reviewer.
	MaxRejections int             `json:"max_rejections,omitempty"`
	Rejections    []ApprovalGrant `json:"rejections,omitempty"`
	// RejectedBy and Reason record the rejection that ended it (or an
	// expiry's reason).
	RejectedBy string `json:"rejected_by,omitempty"`
	Reason     string `json:"reason,omitempty"`
	// RequestID is the denied request that opened it.
	RequestID string    `json:"request_id"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// Teams are the required teams, sorted: what an approved request puts in
// context.approvals.
func (a ApprovalRequest) Teams() []string {
	out := make([]string, 0, len(a.Requirements))
	for _, r := range a.Requirements {
		out = append(out, r.Team)
	}
	return sortedCopy(out)
}

// Count is how many distinct grants are from members of team.
func (a ApprovalRequest) Count(team string) int {
	n := 0
	for _, g := range a.Grants {
		if slices.Contains(g.Teams, team) {
			n++
		}
	}
	return n
}

// Quorate reports whether every requirement has its quorum.
func (a ApprovalRequest) Quorate() bool {
	for _, r := range a.Requirements {
		if a.Count(r.Team) < r.Quorum {
			return false
		}
	}
	return len(a.Requirements) > 0
}

// Progress says how far each requirement is, e.g. "risk-reviewers 1/2".
func (a ApprovalRequest) Progress() string {
	parts := make([]string, 0, len(a.Requirements))
	for _, r := range a.Requirements {
		parts = append(parts, fmt.Sprintf("%s %d/%d", r.Team, min(a.Count(r.Team), r.Quorum), r.Quorum))
	}
	return strings.Join(parts, ", ")
}

// UsedByDelivery reports whether the verified request requestID,
// verified at verifiedAt, is the one that spent a use: the same delivery
// again, not a replay of its id.
func (a ApprovalRequest) UsedByDelivery(requestID string, verifiedAt time.Time) bool {
	for i, id := range a.UsedBy {
		if id == requestID && i < len(a.UsedAt) && a.UsedAt[i].Equal(verifiedAt) {
			return true
		}
	}
	return false
}

// Live reports whether the request can still be granted or used at now.
func (a ApprovalRequest) Live(now time.Time) bool {
	return (a.Status == StatusPending || a.Status == StatusApproved) && now.Before(a.ExpiresAt)
}

// ApprovalEvent is the data of the requested, granted, approved, rejected
// and expired events of an approval request.
type ApprovalEvent struct {
	ApprovalID string `json:"approval_id"`
	// Event is the lifecycle event (ApprovalRequested...); Status the
	// request's status after it.
	Event        string                `json:"event"`
	Status       string                `json:"status"`
	RequesterID  string                `json:"requester_id"`
	Digest       string                `json:"digest"`
	Action       string                `json:"action"`
	Resource     Resource              `json:"resource"`
	Requirements []ApprovalRequirement `json:"requirements"`
	// ReviewerID and ReviewerTeams: who granted or rejected (granted,
	// rejected).
	ReviewerID    string   `json:"reviewer_id,omitempty"`
	ReviewerTeams []string `json:"reviewer_teams,omitempty"`
	// Grants is how many distinct reviewers granted so far.
	Grants  int `json:"grants"`
	MaxUses int `json:"max_uses"`
	// RequestID is the request that caused the event: the denied request
	// (requested, expired), the approval.grant (granted, approved,
	// rejected).
	RequestID     string    `json:"request_id,omitempty"`
	Reason        string    `json:"reason,omitempty"`
	PolicyVersion string    `json:"policy_version"`
	ExpiresAt     time.Time `json:"expires_at"`
	At            time.Time `json:"at"`
}

// EventOf is the lifecycle event named event of a at now.
func (a ApprovalRequest) EventOf(event, requestID, reviewer string, reviewerTeams []string, now time.Time) ApprovalEvent {
	return ApprovalEvent{
		ApprovalID: a.ID, Event: event, Status: a.Status, RequesterID: a.RequesterID, Digest: a.Digest,
		Action: a.Action, Resource: a.Resource, Requirements: a.Requirements, ReviewerID: reviewer, ReviewerTeams: reviewerTeams,
		Grants: len(a.Grants), MaxUses: a.MaxUses, RequestID: requestID, Reason: a.Reason,
		PolicyVersion: a.PolicyVersion, ExpiresAt: a.ExpiresAt, At: now.UTC(),
	}
}
