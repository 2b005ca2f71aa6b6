package schemas

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the first token of every aigov subject.
const DefaultPrefix = "aigov"

// Subjects builds subject names under one configurable prefix.
type Subjects struct {
	Prefix string
}

// NewSubjects returns Subjects for prefix, or for DefaultPrefix when empty.
func NewSubjects(prefix string) Subjects {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return Subjects{Prefix: prefix}
}

// Kinds of subject: the second token.
const (
	KindRequest  = "request"
	KindVerified = "verified"
	KindDecision = "decision"
	KindSession  = "session"
)

// KindPolicyDecision derives the event id of policy's decision from its
// request id (DerivedID); authn's denies use KindDecision, so the two never
// share a de-duplication id.
const KindPolicyDecision = "policy.decision"

// Session event names: the third token of aigov.session.*.
const (
	SessionStarted     = "started"
	SessionExpired     = "expired"
	SessionRevoked     = "revoked"
	SessionTokenIssued = "token_issued"
	// SessionLeaseStarted and SessionLeaseExpired announce a job lease
	// granted and ended; platforms subscribe to the latter to stop the job.
	SessionLeaseStarted = "lease_started"
	SessionLeaseExpired = "lease_expired"
)

// Request is the subject a platform publishes an action's request on.
func (s Subjects) Request(action string) string { return s.join(KindRequest, action) }

// Verified is the subject authn publishes a verified request on.
func (s Subjects) Verified(action string) string { return s.join(KindVerified, action) }

// Decision is the subject a decision is published on.
func (s Subjects) Decision(action string) string { return s.join(KindDecision, action) }

// Session is the subject of a session event.
func (s Subjects) Session(event string) string { return s.join(KindSession, event) }

// All is the wildcard for one kind of subject, e.g. aigov.request.>.
func (s Subjects) All(kind string) string { return s.join(kind, ">") }

func (s Subjects) join(kind, rest string) string { return s.Prefix + "." + kind + "." + rest }

// ActionOf returns the action encoded in a subject of the given kind.
func (s Subjects) ActionOf(kind, subject string) (string, error) {
	p := s.Prefix + "." + kind + "."
	if !strings.HasPrefix(subject, p) || len(subject) == len(p) {
		return "", fmt.Errorf("%w: subject %q is not under %s>", ErrInvalidEvent, subject, p)
	}
	return subject[len(p):], nil
}

// KindDeadLetter is the kind of aigov.dlq.<stream>.<consumer>: events a
// consumer gave up on, and events the audit could not decode.
const KindDeadLetter = "dlq"

// DeadLetter is the subject of a dead letter from consumer on stream.
func (s Subjects) DeadLetter(stream, consumer string) string {
	return s.join(KindDeadLetter, stream+"."+consumer)
}

// KindAudit is the kind of the audit's own subjects:
// aigov.audit.checkpoints.<stream> carries the signed checkpoints of the
// hash chain of one audited stream.
const KindAudit = "audit"

// Checkpoint is the subject of the signed checkpoints of an audited stream.
func (s Subjects) Checkpoint(stream string) string { return s.join(KindAudit, "checkpoints."+stream) }

// Checkpoints is the wildcard of every stream's checkpoints.
func (s Subjects) Checkpoints() string { return s.join(KindAudit, "checkpoints.>") }

// CheckpointStream returns the audited stream a checkpoint subject names.
func (s Subjects) CheckpointStream(subject string) (string, bool) {
	rest, ok := strings.CutPrefix(subject, s.join(KindAudit, "checkpoints."))
	return rest, ok && rest != "" && !strings.Contains(rest, ".")
}

// MaxReplySubject bounds a reply subject taken from a request header.
const MaxReplySubject = 256

// ValidInbox reports whether a reply subject is a literal subject under
// _INBOX. (no wildcards, empty tokens or white space): the only kind of
// subject aigov answers.
func ValidInbox(subject string) bool {
	if !strings.HasPrefix(subject, "_INBOX.") || len(subject) > MaxReplySubject {
		return false
	}
	for tok := range strings.SplitSeq(subject, ".") {
		if tok == "" || tok == "*" || tok == ">" || strings.ContainsAny(tok, " \t\r\n") {
			return false
		}
	}
	return true
}
