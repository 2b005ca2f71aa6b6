package schemas

import "time"

// Erasure of a data subject (docs/privacy.md): the governed request
// privacy.erase on DataSubjects::"all" with context.subject_key_id, which
// policy executes once Cedar allows it (with its approvals) by purging the
// subject's key from BucketSubjectKeys, then publishes a subject_erased
// governance event. The request names the subject by key id only
// (personal.SubjectKeyID), so the erasure's own record names nobody.
const (
	// ActionPrivacyErase erases the subject whose key id is
	// context.subject_key_id.
	ActionPrivacyErase = "privacy.erase"
	// ActionPrivacyExport is a subject access export of the person
	// context.subject_issuer and context.subject_sub name (with their
	// context.subject_key_id, checked like an erasure's): once allowed,
	// policy answers with the subject's key wrapped to
	// context.export_public_key (personal.WrapKey), in the reply's
	// HeaderWrappedSubjectKey only, never in the stored decision.
	ActionPrivacyExport = "privacy.export"
	// ContextExportPublicKey is the exporter's ephemeral X25519 public
	// key, base64 (standard, padded) of its 32 bytes.
	ContextExportPublicKey = "export_public_key"
	// HeaderWrappedSubjectKey carries, on the reply to an allowed
	// privacy.export only, the subject's key wrapped to the exporter's
	// ephemeral key, or WrappedKeyErased. It is not covered by the
	// decision's signature and is not stored anywhere: the wrap itself
	// (AES-GCM under an X25519 shared secret, bound to the request id
	// and key id) is what makes it unreadable to anyone else on the
	// inbox and tamper-evident.
	HeaderWrappedSubjectKey = "Aigov-Wrapped-Subject-Key"
	// WrappedKeyErased is HeaderWrappedSubjectKey when the subject's key
	// is erased: there is nothing to open.
	WrappedKeyErased = "erased"
	// ContextSubjectKeyID is its context field.
	ContextSubjectKeyID = "subject_key_id"
	// ContextSubjectIssuer and ContextSubjectSub name the person the key
	// id is of (the IdP's issuer and sub, as principal ids do, never the
	// email): reviewers approve a person, not a hash, and policy refuses
	// a key id that is not theirs.
	ContextSubjectIssuer = "subject_issuer"
	ContextSubjectSub    = "subject_sub"
	// DataSubjectsType and DataSubjectsID are its resource:
	// DataSubjects::"all", in the entity store like PolicySet::"active".
	DataSubjectsType = "DataSubjects"
	DataSubjectsID   = "all"

	// KindPrivacy is the second subject token of privacy governance
	// events (aigov.privacy.subject_erased), in the governance stream.
	KindPrivacy = "privacy"
	// SubjectErasedEvent is the third token.
	SubjectErasedEvent = "subject_erased"
	// TypeSubjectErased: a subject's key was destroyed (SubjectErasure).
	TypeSubjectErased = "dev.aigov.privacy.subject_erased.v1"
	// SchemaPrivacy is the JSON Schema of its data.
	SchemaPrivacy = "privacy.json"
)

// SubjectErasure is the data of a subject_erased event.
type SubjectErasure struct {
	// SubjectKeyID names the erased subject's key (personal.SubjectKeyID).
	SubjectKeyID string `json:"subject_key_id"`
	// RequestID is the allowed privacy.erase request.
	RequestID string `json:"request_id"`
	// By is the principal id of who asked for the erasure.
	By string `json:"by"`
	// ApprovalID is the approval request its reviewers approved, if any.
	ApprovalID string `json:"approval_id,omitempty"`
	// Approvals are the approving teams.
	Approvals []string `json:"approvals,omitempty"`
	// PolicyIDs are the policies that allowed it; PolicyVersion their set.
	PolicyIDs     []string `json:"policy_ids,omitempty"`
	PolicyVersion string   `json:"policy_version"`
	// At is when the key was purged.
	At time.Time `json:"at"`
}
