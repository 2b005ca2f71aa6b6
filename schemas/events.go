// Package schemas is aigov's wire contract: the CloudEvents every service
// publishes, the subjects they travel on, the JetStream topology that carries
// them, the deny codes, and the ClickHouse migrations that persist them.
//
// It is deliberately light (standard library and nats.go only) so that ML
// platforms can import the client without pulling in any service.
package schemas

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// SpecVersion is the CloudEvents version every aigov event uses.
const SpecVersion = "1.0"

// CloudEvent types. The suffix is the version of the data shape.
const (
	TypeRequest          = "dev.aigov.request.v1"
	TypeVerified         = "dev.aigov.verified.v1"
	TypeDecision         = "dev.aigov.decision.v1"
	TypeSessionStarted   = "dev.aigov.session.started.v1"
	TypeSessionExpired   = "dev.aigov.session.expired.v1"
	TypeSessionRevoked   = "dev.aigov.session.revoked.v1"
	TypeSessionTokenSeen = "dev.aigov.session.token_issued.v1"
	TypeLeaseStarted     = "dev.aigov.session.lease_started.v1"
	TypeLeaseExpired     = "dev.aigov.session.lease_expired.v1"
)

// Header names carried on NATS messages next to the CloudEvent body.
const (
	// HeaderAuthorization carries "Bearer <jwt>" on requests only. It never
	// appears on any downstream subject.
	HeaderAuthorization = "Authorization"
	// HeaderReplyTo names the core NATS subject the decision is sent to. The
	// message's own reply subject is taken by the JetStream publish ack.
	HeaderReplyTo = "Aigov-Reply-To"
	// HeaderMsgID is JetStream's de-duplication header; aigov sets it to the
	// event id so a republished event is stored once.
	HeaderMsgID = "Nats-Msg-Id"
)

// ErrInvalidEvent is wrapped by every validation failure of an event, so that
// callers can tell a permanently bad payload from a transient failure.
var ErrInvalidEvent = errors.New("invalid event")

// Event is a CloudEvents 1.0 envelope in structured JSON mode.
type Event struct {
	SpecVersion     string          `json:"specversion"`
	ID              string          `json:"id"`
	Source          string          `json:"source"`
	Type            string          `json:"type"`
	Time            time.Time       `json:"time"`
	Subject         string          `json:"subject,omitempty"`
	DataContentType string          `json:"datacontenttype,omitempty"`
	Data            json.RawMessage `json:"data"`
}

// NewEvent wraps data in an envelope. An empty id gets a random UUID.
func NewEvent(id, source, typ string, at time.Time, data any) (Event, error) {
	if id == "" {
		id = NewID()
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return Event{}, fmt.Errorf("encode %s data: %w", typ, err)
	}
	return Event{
		SpecVersion:     SpecVersion,
		ID:              id,
		Source:          source,
		Type:            typ,
		Time:            at.UTC(),
		DataContentType: "application/json",
		Data:            raw,
	}, nil
}

// ParseEvent decodes an envelope and checks the fields every event must have.
func ParseEvent(b []byte) (Event, error) {
	var ev Event
	if err := json.Unmarshal(b, &ev); err != nil {
		return Event{}, fmt.Errorf("%w: not a CloudEvent JSON document: %v", ErrInvalidEvent, err)
	}
	var missing []string
	if ev.SpecVersion != SpecVersion {
		missing = append(missing, fmt.Sprintf("specversion %q (want %q)", ev.SpecVersion, SpecVersion))
	}
	if ev.ID == "" {
		missing = append(missing, "id")
	} else if len(ev.ID) > MaxIDLength {
		missing = append(missing, fmt.Sprintf("id longer than %d", MaxIDLength))
	}
	if ev.Source == "" {
		missing = append(missing, "source")
	}
	if ev.Type == "" {
		missing = append(missing, "type")
	}
	if len(ev.Data) == 0 || string(ev.Data) == "null" {
		missing = append(missing, "data")
	}
	if len(missing) > 0 {
		return Event{}, fmt.Errorf("%w: bad or missing %s", ErrInvalidEvent, strings.Join(missing, ", "))
	}
	return ev, nil
}

// DecodeData decodes the event's data into v, rejecting unknown fields so
// that a typo in a request is an error rather than a silently ignored field.
func (e Event) DecodeData(v any) error {
	dec := json.NewDecoder(bytes.NewReader(e.Data)) // no copy of the data
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %s data: %v", ErrInvalidEvent, e.Type, err)
	}
	return nil
}

// MaxSourceLength bounds a request event's source: it is carried into the
// verified event and the audit, and a platform names itself in a few
// dozen bytes.
const MaxSourceLength = 256

// MaxIDLength bounds event and request ids; they become NATS header values,
// KV keys and ClickHouse keys.
const MaxIDLength = 128

// NewID returns a random RFC 4122 version 4 UUID.
func NewID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		// crypto/rand never fails on Linux; if it does, nothing is safe.
		panic(fmt.Sprintf("crypto/rand: %v", err))
	}
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return formatUUID(b)
}

// DerivedID returns a stable UUID-shaped id for the event of kind that a
// service emits because of parent. Redelivery of parent yields the same id,
// so JetStream de-duplication and the audit tables absorb the repeat.
func DerivedID(parent, kind string) string {
	sum := sha256.Sum256([]byte(kind + "\x00" + parent))
	var b [16]byte
	copy(b[:], sum[:16])
	b[6] = (b[6] & 0x0f) | 0x50
	b[8] = (b[8] & 0x3f) | 0x80
	return formatUUID(b)
}

func formatUUID(b [16]byte) string {
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// Fingerprint is the SHA-256 of a raw token, hex encoded. It is the only
// form in which a token leaves the request stream.
func Fingerprint(token string) string {
	sum := sha256.Sum256([]byte(token))
	return hex.EncodeToString(sum[:])
}

// SessionKey identifies the session a token belongs to, across services.
// It is the one place the rule lives (docs/sessions.md has it per IdP):
//
//   - the issuer with the token's `sid`: every token of one IdP login
//     session (Keycloak, Entra, Okta) is one aigov session;
//   - without `sid`, the subject with its `auth_time`: a refreshed token
//     keeps the login's auth_time and continues the session, a new login
//     changes it and starts a new one;
//   - with neither (Dex, Google), the subject with the token's `iat`: the
//     IdP gives no way to tell a refresh from a new login, so each issued
//     token is its own session. Ending it ends that token, never the person:
//     their next token is a new session;
//   - a token with none of these (no `iat` either) is keyed by its `exp`,
//     again one session per issued token.
//
// It is hashed so it is a valid KV key whatever the IdP puts in those
// claims. Each scope has its own prefix, so a sid can never collide with a
// subject.
func SessionKey(p Principal) string {
	var scope string
	switch {
	case p.SessionID != "":
		scope = "sid:" + p.SessionID
	case p.AuthTime != nil && !p.AuthTime.IsZero():
		scope = "sub:" + p.Subject + "@" + strconv.FormatInt(p.AuthTime.Unix(), 10)
	case !p.IssuedAt.IsZero():
		scope = "tok:" + p.Subject + "@iat:" + strconv.FormatInt(p.IssuedAt.Unix(), 10)
	default:
		scope = "tok:" + p.Subject + "@exp:" + strconv.FormatInt(p.ExpiresAt.Unix(), 10)
	}
	sum := sha256.Sum256([]byte(p.Issuer + "\x00" + scope))
	return hex.EncodeToString(sum[:16])
}

// SessionStart is when the session of a token began, as far as the token
// itself tells: its `auth_time`; for a session of one token (no `sid`, no
// `auth_time`: see SessionKey) its `iat`. It reports false for a `sid`
// session without `auth_time` (Entra's usual tokens): its start is the
// first request the reaper saw, which only the reaper knows.
func SessionStart(p Principal) (time.Time, bool) {
	switch {
	case p.AuthTime != nil && !p.AuthTime.IsZero():
		return *p.AuthTime, true
	case p.SessionID == "" && !p.IssuedAt.IsZero():
		return p.IssuedAt, true
	default:
		return time.Time{}, false
	}
}
