package schemas

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"
)

// Governance events: what the policy service publishes about its own state
// (policy sets, the entity store, approvals), on aigov.policy.>,
// aigov.entity.> and aigov.approval.>, all in the governance stream.
const (
	// KindPolicy, KindEntity and KindApproval are the second subject token
	// of governance events.
	KindPolicy   = "policy"
	KindEntity   = "entity"
	KindApproval = "approval"

	// TypePolicyChanged: a new policy set became active (PolicyChange).
	TypePolicyChanged = "dev.aigov.policy.changed.v1"
	// TypePolicyRejected: a pushed set failed to parse or validate and the
	// previous set stayed active (PolicyChange with Errors).
	TypePolicyRejected = "dev.aigov.policy.rejected.v1"
	// TypeEntityChanged: an entity of the trusted store was put or deleted.
	TypeEntityChanged = "dev.aigov.entity.changed.v1"
	// TypeApprovalUsed: approvals counted towards an allowed request.
	TypeApprovalUsed = "dev.aigov.approval.used.v1"

	// SchemaPolicy, SchemaEntity and SchemaApproval are the JSON Schemas of
	// the governance events' data (approval.json also has the KV value).
	SchemaPolicy   = "policy.json"
	SchemaEntity   = "entity.json"
	SchemaApproval = "approval.json"
)

// Governance event names: the third subject token.
const (
	PolicyChanged  = "changed"
	PolicyRejected = "rejected"
	EntityChanged  = "changed"
	ApprovalUsed   = "used"
)

// Governance actions: requests that change aigov itself, decided by Cedar
// like any other.
const (
	// ActionPolicyUpdate asks to activate the policy set whose hash is in
	// context.policy_hash (staged in the policy proposals bucket).
	ActionPolicyUpdate = "policy.update"
	// ActionApprovalGrant approves the request made of context.approved_action
	// on the same resource with the same ApprovalDigestFields.
	ActionApprovalGrant = "approval.grant"
	// ContextPolicyHash and ContextApprovedAction are their context fields.
	ContextPolicyHash     = "policy_hash"
	ContextApprovedAction = "approved_action"
	// PolicySetResource is the resource of a policy.update: PolicySet::"active".
	PolicySetType = "PolicySet"
	PolicySetID   = "active"
)

// Governance publishes a governance event of kind (KindPolicy...) named
// event (PolicyChanged...), e.g. aigov.policy.changed.
func (s Subjects) Governance(kind, event string) string { return s.join(kind, event) }

// ApprovalDigestFields are the request context fields an approval is bound
// to, besides the action and the resource: an approval of a production
// deploy does not approve a staging one, nor another dataset. Fields
// absent from the context are absent from the digest.
var ApprovalDigestFields = []string{"environment", "dataset", "hyperparameters", "model_version", "artifact_digest", ContextPolicyHash}

// ApprovalDigest is the "sha256:<hex>" digest of the request an approval
// approves: its action, its resource and its ApprovalDigestFields. The CLI,
// the SDK and the policy service compute it the same way; numbers are
// normalised through float64 so that 20 and 20.0 agree.
func ApprovalDigest(action string, r Resource, ctx map[string]any) (string, error) {
	fields := map[string]any{}
	for _, k := range ApprovalDigestFields {
		if v, ok := ctx[k]; ok && v != nil {
			fields[k] = v
		}
	}
	raw, err := json.Marshal(fields)
	if err != nil {
		return "", fmt.Errorf("approval digest: %w", err)
	}
	var norm any
	if err := json.Unmarshal(raw, &norm); err != nil {
		return "", fmt.Errorf("approval digest: %w", err)
	}
	// encoding/json writes map keys sorted, so this is canonical.
	b, err := json.Marshal(struct {
		Action   string   `json:"action"`
		Resource Resource `json:"resource"`
		Context  any      `json:"context"`
	}{action, r, norm})
	if err != nil {
		return "", fmt.Errorf("approval digest: %w", err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Approval is the value stored in the approvals bucket for one approver of
// one digest, under ApprovalKey. It expires with the key's TTL.
type Approval struct {
	// Digest is ApprovalDigest of the approved request.
	Digest string `json:"digest"`
	// Action and Resource are what is approved, for people reading it.
	Action   string   `json:"action"`
	Resource Resource `json:"resource"`
	// ApproverID is the approver's principal id; approvals by the
	// requester themself never count.
	ApproverID string `json:"approver_id"`
	// Teams are the approver's groups that are configured approval teams.
	Teams []string `json:"teams"`
	// RequestID is the approval.grant request that granted it.
	RequestID string    `json:"request_id"`
	GrantedAt time.Time `json:"granted_at"`
	ExpiresAt time.Time `json:"expires_at"`
}

// ApprovalKey is the approvals bucket key of one approver's approval of a
// digest: one key per approver, so an approval counts once per approver.
func ApprovalKey(digest, approverID string) string {
	a := sha256.Sum256([]byte(approverID))
	return hexOf(digest) + "." + hex.EncodeToString(a[:16])
}

// ApprovalKeyPrefix is the key prefix of every approval of a digest.
func ApprovalKeyPrefix(digest string) string { return hexOf(digest) + "." }

func hexOf(digest string) string {
	if len(digest) > 7 && digest[:7] == "sha256:" {
		return digest[7:]
	}
	return digest
}

// PolicyChange is the data of a policy.changed or policy.rejected event.
type PolicyChange struct {
	// PolicyVersion is the hash of the set activated (or rejected).
	PolicyVersion string `json:"policy_version"`
	// PreviousVersion is the hash of the set active before; empty for the
	// very first (seeded) set.
	PreviousVersion string `json:"previous_version,omitempty"`
	// By is the principal id that pushed it, or "aigov/policy" for a seed.
	By string `json:"by"`
	// Email of the pusher, when the token had one.
	Email string `json:"email,omitempty"`
	// RequestID is the policy.update request; empty for a seed.
	RequestID string `json:"request_id,omitempty"`
	// PolicyIDs and ShadowIDs list the new set's enforced and shadow policies.
	PolicyIDs []string `json:"policy_ids,omitempty"`
	ShadowIDs []string `json:"shadow_ids,omitempty"`
	// Errors say why a set was rejected; empty for a change.
	Errors []string `json:"errors,omitempty"`
	// At is when the policy service activated or rejected the set.
	At time.Time `json:"at"`
}

// EntityChange is the data of an entity.changed event.
type EntityChange struct {
	// Op is "put" or "delete".
	Op string `json:"op"`
	// Entity names the entity changed.
	Entity Resource `json:"entity"`
	// Revision is the entity bucket's revision of the change.
	Revision int64 `json:"revision"`
	// ValueSHA256 is the hex SHA-256 of the stored entity JSON; empty on delete.
	ValueSHA256 string    `json:"value_sha256,omitempty"`
	At          time.Time `json:"at"`
}

// ApprovalUse is the data of an approval.used event: the approvals that
// counted for an allowed request.
type ApprovalUse struct {
	// ApprovalID is the approval request used; empty for approvals of the
	// digest-keyed kind (Approval).
	ApprovalID    string   `json:"approval_id,omitempty"`
	RequestID     string   `json:"request_id"`
	Digest        string   `json:"digest"`
	Action        string   `json:"action"`
	Resource      Resource `json:"resource"`
	PrincipalID   string   `json:"principal_id"`
	Approvers     []string `json:"approvers"`
	Teams         []string `json:"teams"`
	PolicyIDs     []string `json:"policy_ids,omitempty"`
	PolicyVersion string   `json:"policy_version"`
	// Uses and MaxUses count the approval request's uses, this one included.
	Uses    int       `json:"uses,omitempty"`
	MaxUses int       `json:"max_uses,omitempty"`
	At      time.Time `json:"at"`
}

// ShadowOutcome is what the shadow policies (@shadow) would have decided:
// the set's decision had they been enforced. Not enforced.
type ShadowOutcome struct {
	// Decision is allow or deny with the shadow policies enforced.
	Decision string `json:"decision"`
	// PolicyIDs are the determining policies of that evaluation.
	PolicyIDs []string `json:"policy_ids,omitempty"`
	// Matched are the shadow policies that matched the request.
	Matched []string `json:"matched,omitempty"`
	// Errors are the shadow policies' evaluation errors.
	Errors []string `json:"errors,omitempty"`
}

// sortedCopy is used by callers that need deterministic team lists.
func sortedCopy(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return slices.Compact(out)
}

// SortedTeams returns the distinct teams of approvals, sorted.
func SortedTeams(approvals []Approval) []string {
	var teams []string
	for _, a := range approvals {
		teams = append(teams, a.Teams...)
	}
	return sortedCopy(teams)
}
