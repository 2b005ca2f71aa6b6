package schemas

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"regexp"
	"time"
)

// Request is the data of a request event: what the platform wants to do.
// Resource attributes are never taken from here; the policy service looks
// them up in its trusted entity store.
type Request struct {
	Action   string         `json:"action"`
	Resource Resource       `json:"resource"`
	Context  map[string]any `json:"context,omitempty"`
}

// Resource names the object an action applies to.
type Resource struct {
	Type string `json:"type"`
	ID   string `json:"id"`
}

// String renders the resource as Type::"id", the way Cedar writes it.
func (r Resource) String() string { return fmt.Sprintf("%s::%q", r.Type, r.ID) }

var (
	actionPattern       = regexp.MustCompile(`^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$`)
	resourceTypePattern = regexp.MustCompile(`^[A-Z][A-Za-z0-9_]*$`)
)

// MaxContextBytes bounds a request's context once encoded.
const MaxContextBytes = 16 << 10

// Validate checks a request's data; the error wraps ErrInvalidEvent.
func (r Request) Validate() error {
	if !actionPattern.MatchString(r.Action) || len(r.Action) > 128 {
		return fmt.Errorf("%w: action %q must be dotted lower-case words such as model.retrain", ErrInvalidEvent, r.Action)
	}
	if !resourceTypePattern.MatchString(r.Resource.Type) || len(r.Resource.Type) > 64 {
		return fmt.Errorf("%w: resource.type %q must be a capitalised name such as Model", ErrInvalidEvent, r.Resource.Type)
	}
	if r.Resource.ID == "" || len(r.Resource.ID) > 256 {
		return fmt.Errorf("%w: resource.id must be 1 to 256 characters", ErrInvalidEvent)
	}
	return nil
}

// Principal is the verified identity behind a request. ID is scoped by the
// issuer, because the same `sub` at two issuers is two different people.
type Principal struct {
	ID        string     `json:"id"`
	Type      string     `json:"type"` // "User" or "Workload"
	Issuer    string     `json:"issuer"`
	Subject   string     `json:"subject"`
	Email     string     `json:"email,omitempty"`
	Name      string     `json:"name,omitempty"`
	Groups    []string   `json:"groups,omitempty"`
	Scopes    []string   `json:"scopes,omitempty"`
	AMR       []string   `json:"amr,omitempty"`
	SessionID string     `json:"sid,omitempty"`
	AuthTime  *time.Time `json:"auth_time,omitempty"`
	IssuedAt  time.Time  `json:"iat"`
	ExpiresAt time.Time  `json:"exp"`
	TokenID   string     `json:"jti,omitempty"`
	// ACR is the token's acr claim (authentication context class), if any.
	ACR string `json:"acr,omitempty"`
	// MFA is true only when the token proves a second factor: its amr
	// names one (mfa, otp, hwk) or its acr is one the issuer's
	// configuration lists as multi-factor. Absent otherwise: not proven.
	MFA bool `json:"mfa,omitempty"`
	// Attributes are further verified facts about the principal that
	// policies may use, mapped from claims by the issuer's configuration,
	// e.g. a GitHub Actions token's repository, repository_owner_id,
	// workflow, ref and environment, or a Kubernetes service account's
	// namespace, serviceaccount and pod. Keys are snake_case.
	Attributes map[string]string `json:"attributes,omitempty"`
}

// Principal types.
const (
	PrincipalUser     = "User"
	PrincipalWorkload = "Workload"
)

// PrincipalID forms the issuer-scoped principal id.
func PrincipalID(issuer, subject string) string { return issuer + "#" + subject }

// Verified is the data of a verified event: the request with the identity
// authn proved. It carries the token's fingerprint, never the token.
type Verified struct {
	RequestID        string    `json:"request_id"`
	Source           string    `json:"request_source"`
	Request          Request   `json:"request"`
	Principal        Principal `json:"principal"`
	SessionKey       string    `json:"session_key"`
	TokenFingerprint string    `json:"token_fingerprint"`
	ReplyTo          string    `json:"reply_to,omitempty"`
	// Tenant is the tenant account the request came from, "" for the
	// aigov account; replies go only to its inbox (ReplyAllowed).
	Tenant     string    `json:"tenant,omitempty"`
	ReceivedAt time.Time `json:"received_at"`
	VerifiedAt time.Time `json:"verified_at"`
}

// Decision outcomes.
const (
	Allow = "allow"
	Deny  = "deny"
)

// Stages that can decide.
const (
	StageAuthn  = "authn"
	StagePolicy = "policy"
)

// Decision is the data of a decision event and the reply the requester gets.
type Decision struct {
	RequestID        string         `json:"request_id"`
	Action           string         `json:"action"`
	Resource         Resource       `json:"resource"`
	Context          map[string]any `json:"context,omitempty"`
	Principal        *Principal     `json:"principal,omitempty"`
	Decision         string         `json:"decision"`
	Code             Code           `json:"code,omitempty"`
	Reason           string         `json:"reason,omitempty"`
	Stage            string         `json:"stage"`
	PolicyIDs        []string       `json:"policy_ids,omitempty"`
	PolicyErrors     []string       `json:"policy_errors,omitempty"`
	PolicyVersion    string         `json:"policy_version,omitempty"`
	SessionKey       string         `json:"session_key,omitempty"`
	TokenFingerprint string         `json:"token_fingerprint,omitempty"`
	Timings          Timings        `json:"timings"`
	// Lease is the job lease granted with an allowed job.start (LeaseFor);
	// absent on every other decision.
	Lease *Lease `json:"lease,omitempty"`
	// Shadow is what the policy set's @shadow policies would have decided;
	// recorded, never enforced. Absent when the set has none.
	Shadow *ShadowOutcome `json:"shadow,omitempty"`
	// Approvals are the approving teams that were in context.approvals
	// (approvals of this exact request by others than the requester).
	Approvals []string `json:"approvals,omitempty"`
	// ApprovalID names the approval request (ApprovalRequest) the decision
	// is about: the one opened or pending for an approval_required or
	// approval_used deny, the one used by the allow it unlocked.
	ApprovalID string `json:"approval_id,omitempty"`
	// WrappedSubjectKey is the reply's HeaderWrappedSubjectKey (an
	// allowed privacy.export), set by the client; never encoded, so
	// never in a stored decision.
	WrappedSubjectKey string `json:"-"`
}

// Allowed reports whether the decision is an allow.
func (d Decision) Allowed() bool { return d.Decision == Allow }

// Timings say where a request spent its time. Micros are derived from the
// timestamps so that a reader need not subtract.
type Timings struct {
	ReceivedAt   time.Time  `json:"received_at"`
	VerifiedAt   *time.Time `json:"verified_at,omitempty"`
	DecidedAt    time.Time  `json:"decided_at"`
	AuthnMicros  int64      `json:"authn_us"`
	PolicyMicros int64      `json:"policy_us"`
	TotalMicros  int64      `json:"total_us"`
}

// Session event reasons.
const (
	ReasonMaxAge = "max_age"
	ReasonIdle   = "idle"
	// ReasonMissedHeartbeat and ReasonMaxDuration say why a job lease ended.
	ReasonMissedHeartbeat = "missed_heartbeat"
	ReasonMaxDuration     = "max_duration"
	// ReasonSessionEnded ends a lease whose session was revoked.
	ReasonSessionEnded = "session_ended"
)

// Who ended a session, in SessionEvent.By and Revocation.By.
const (
	ByReaper = "aigov/reaper"
	ByLogout = "oidc-backchannel-logout"
)

// SessionEvent is the data of every aigov.session.* event.
type SessionEvent struct {
	SessionKey       string     `json:"session_key"`
	Issuer           string     `json:"issuer"`
	Subject          string     `json:"subject"`
	PrincipalID      string     `json:"principal_id"`
	SessionID        string     `json:"sid,omitempty"`
	AuthTime         *time.Time `json:"auth_time,omitempty"`
	FirstSeen        time.Time  `json:"first_seen"`
	LastSeen         time.Time  `json:"last_seen"`
	Reason           string     `json:"reason,omitempty"`
	By               string     `json:"by,omitempty"`
	RequestID        string     `json:"request_id,omitempty"`
	TokenFingerprint string     `json:"token_fingerprint,omitempty"`
	// LeaseID and LeaseDeadline are set on lease events only.
	LeaseID       string     `json:"lease_id,omitempty"`
	LeaseDeadline *time.Time `json:"lease_deadline,omitempty"`
}

// Revocation is the value stored under a session key in the revocation
// bucket. authn denies every later request of that session.
type Revocation struct {
	SessionKey string    `json:"session_key"`
	Code       Code      `json:"code"`
	Reason     string    `json:"reason"`
	At         time.Time `json:"at"`
	// By says who ended it: ByReaper, ByLogout, or an operator's name.
	By string `json:"by,omitempty"`
}

// Job lease actions and the context field that names a lease.
const (
	// ActionJobStart starts a long-running job; an allow carries a Lease.
	ActionJobStart = "job.start"
	// ActionJobHeartbeat extends the lease named in context.lease_id.
	ActionJobHeartbeat = "job.heartbeat"
	// ContextLeaseID is the request context field naming a job lease.
	ContextLeaseID = "lease_id"
)

// DefaultLeaseTTL is the first deadline of a job lease, counted from the
// job.start decision; each heartbeat moves it again (reaper config).
const DefaultLeaseTTL = 5 * time.Minute

// Lease is a job lease as the requester sees it in the job.start allow.
type Lease struct {
	// ID names the lease; send it as context.lease_id on the job's later
	// requests and heartbeats.
	ID string `json:"id"`
	// Deadline is when the lease ends unless a heartbeat extends it.
	Deadline time.Time `json:"deadline"`
}

// LeaseFor returns the lease an allowed request of action grants, or nil
// when the action is not ActionJobStart. It is pure, so the policy service
// (which puts it in the decision) and the reaper (which enforces it) agree
// on the id without talking to each other: a redelivered decision yields the
// same lease.
func LeaseFor(action, requestID string, decidedAt time.Time, ttl time.Duration) *Lease {
	if action != ActionJobStart || requestID == "" {
		return nil
	}
	return &Lease{ID: DerivedID(requestID, "lease"), Deadline: decidedAt.Add(ttl).UTC()}
}

// LeaseRevocationKey is the key under which an ended lease's tombstone is
// stored in the revocation bucket. It is hashed (in its own domain, so it
// never equals a SessionKey) because the lease id comes from requesters.
func LeaseRevocationKey(leaseID string) string {
	sum := sha256.Sum256([]byte("lease\x00" + leaseID))
	return hex.EncodeToString(sum[:16])
}

// LeaseIDOf returns the lease id a request context names, if it names one
// as a non-empty string of at most MaxIDLength bytes.
func LeaseIDOf(ctx map[string]any) (string, bool) {
	id, ok := ctx[ContextLeaseID].(string)
	if !ok || id == "" || len(id) > MaxIDLength {
		return "", false
	}
	return id, true
}

// AMRProvesMFA reports whether authentication method references (RFC 8176)
// include a second factor: "mfa", "otp" or "hwk". authn derives
// Principal.MFA with it; policy applies it again to principals that only
// carry amr.
func AMRProvesMFA(amr []string) bool {
	for _, a := range amr {
		switch a {
		case "mfa", "otp", "hwk":
			return true
		}
	}
	return false
}
