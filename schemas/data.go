package schemas

import (
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
	ReceivedAt       time.Time `json:"received_at"`
	VerifiedAt       time.Time `json:"verified_at"`
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
}

// Revocation is the value stored under a session key in the revocation
// bucket. authn denies every later request of that session.
type Revocation struct {
	SessionKey string    `json:"session_key"`
	Code       Code      `json:"code"`
	Reason     string    `json:"reason"`
	At         time.Time `json:"at"`
}
