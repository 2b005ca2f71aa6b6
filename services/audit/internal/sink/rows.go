package sink

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	gojson "github.com/goccy/go-json"
	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
)

// TypeInvalid is the events.type of a message that could not be decoded.
// Such a message is kept, raw, so nothing consumed is ever lost.
const TypeInvalid = "invalid"

// meta is what the writer needs from a JetStream message besides its body.
type meta struct {
	Subject string
	Stream  string
	Seq     uint64
	// Stored is when JetStream stored the message; stable across
	// redeliveries, so it can date an invalid message idempotently.
	Stored time.Time
	// Header carries the event's signature and Nats-Msg-Id.
	Header nats.Header
}

// eventRow is one row of the events table.
type eventRow struct {
	EventID       string
	Type          string
	Source        string
	Subject       string
	Stream        string
	Seq           uint64
	Time          time.Time
	TimeUS        uint64
	Data          string
	InvalidReason string
}

// decisionRow is one row of the decisions table.
type decisionRow struct {
	EventID          string
	RequestID        string
	Source           string
	Time             time.Time
	TimeUS           uint64
	ReceivedAt       time.Time
	Action           string
	ResourceType     string
	ResourceID       string
	PrincipalID      string
	PrincipalType    string
	Issuer           string
	Subject          string
	Email            string
	Groups           []string
	Scopes           []string
	Decision         string
	Code             string
	Reason           string
	Stage            string
	PolicyIDs        []string
	PolicyErrors     []string
	PolicyVersion    string
	SessionKey       string
	TokenFingerprint string
	Context          string
	AuthnUS          uint64
	PolicyUS         uint64
	TotalUS          uint64
	NATSSubject      string
	Seq              uint64
	SignerKeyID      string
	Signature        string
	// SubjectPseudonym is the keyed pseudonym of Issuer+Subject
	// (privacy.Pseudonymizer.Subject), set by the lane.
	SubjectPseudonym string
}

// sessionRow is one row of the session_events table.
type sessionRow struct {
	EventID          string
	Type             string
	SessionKey       string
	Issuer           string
	Subject          string
	PrincipalID      string
	SID              string
	Reason           string
	By               string
	RequestID        string
	TokenFingerprint string
	AuthTime         *time.Time
	FirstSeen        time.Time
	LastSeen         time.Time
	Time             time.Time
	TimeUS           uint64
	NATSSubject      string
	Seq              uint64
	// SubjectPseudonym is as in decisionRow.
	SubjectPseudonym string
}

// DateTime holds whole seconds from 1970 to 2105, and the driver wraps
// values outside that range silently, so every time is checked.
var (
	minTime = time.Unix(0, 0).UTC()
	maxTime = time.Date(2105, 12, 31, 23, 59, 59, 0, time.UTC)
)

func inRange(t time.Time) bool { return !t.Before(minTime) && !t.After(maxTime) }

// orEpoch keeps a secondary time that ClickHouse can store, or the epoch
// (ClickHouse's own "no value" for DateTime) when it cannot.
func orEpoch(t time.Time) time.Time {
	if inRange(t) {
		return t.UTC()
	}
	return minTime
}

func micros(t time.Time) uint64 { return uint64(t.UnixMicro()) }

func nonNegative(n int64) uint64 { return uint64(max(n, 0)) }

// parseEnvelope decodes the CloudEvent, checks the fields every event must
// have exactly as schemas.ParseEvent does (TestParseEnvelopeAsSchemas keeps
// them equal), and checks its time can be stored.
//
// It decodes with github.com/goccy/go-json rather than encoding/json:
// decoding is most of the writer's CPU, goccy/go-json is pure Go, follows
// encoding/json's rules (struct tags, case-insensitive keys, RawMessage,
// json.Unmarshaler) and decodes these events about three times faster.
func parseEnvelope(raw []byte) (schemas.Event, error) {
	var ev schemas.Event
	if err := gojson.Unmarshal(raw, &ev); err != nil {
		return schemas.Event{}, fmt.Errorf("%w: not a CloudEvent JSON document: %v", schemas.ErrInvalidEvent, err)
	}
	if err := checkEnvelope(ev, len(ev.Data) > 0 && string(ev.Data) != "null"); err != nil {
		return schemas.Event{}, err
	}
	return ev, nil
}

// checkEnvelope checks what every event must have; hasData says whether
// its data is present and not null.
func checkEnvelope(ev schemas.Event, hasData bool) error {
	var missing []string
	if ev.SpecVersion != schemas.SpecVersion {
		missing = append(missing, fmt.Sprintf("specversion %q (want %q)", ev.SpecVersion, schemas.SpecVersion))
	}
	if ev.ID == "" {
		missing = append(missing, "id")
	} else if len(ev.ID) > schemas.MaxIDLength {
		missing = append(missing, fmt.Sprintf("id longer than %d", schemas.MaxIDLength))
	}
	if ev.Source == "" {
		missing = append(missing, "source")
	}
	if ev.Type == "" {
		missing = append(missing, "type")
	}
	if !hasData {
		missing = append(missing, "data")
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: bad or missing %s", schemas.ErrInvalidEvent, strings.Join(missing, ", "))
	}
	if !inRange(ev.Time) {
		return fmt.Errorf("%w: time %s outside 1970..2105", schemas.ErrInvalidEvent, ev.Time.Format(time.RFC3339))
	}
	return nil
}

// decisionEvent is a decision's whole CloudEvent, decoded in one pass:
// decoding the envelope with its data kept raw and then the data again was
// half of the writer's decoding time. Data, at the outer level, hides the
// envelope's own raw data field under JSON's rules for embedded structs,
// so the envelope's fields are decoded into the embedded Event and its
// Data stays empty.
type decisionEvent struct {
	schemas.Event
	Data lastDecision `json:"data"`
}

// lastDecision holds the decision data of the last "data" key, as
// json.RawMessage does in the two-pass path: decoding a repeated key into
// one *decisionBody would merge the objects instead.
type lastDecision struct{ body *decisionBody }

func (d *lastDecision) UnmarshalJSON(b []byte) error {
	d.body = nil
	if string(b) == "null" {
		return nil
	}
	var body decisionBody
	if err := gojson.Unmarshal(b, &body); err != nil {
		return err
	}
	d.body = &body
	return nil
}

// quickDecision decodes a well-formed decision event in one pass. It
// reports false for anything else — another type, a missing field, a
// value of the wrong type — and the caller then takes the two-pass path,
// which says precisely what is wrong (TestQuickDecisionAgrees).
func quickDecision(raw []byte, md meta) (decisionRow, schemas.Event, bool) {
	var de decisionEvent
	if gojson.Unmarshal(raw, &de) != nil || de.Type != schemas.TypeDecision || de.Data.body == nil {
		return decisionRow{}, schemas.Event{}, false
	}
	ev := de.Event
	if checkEnvelope(ev, true) != nil {
		return decisionRow{}, schemas.Event{}, false
	}
	row, err := decisionRowOf(ev, de.Data.body, md)
	if err != nil {
		return decisionRow{}, schemas.Event{}, false
	}
	return row, ev, true
}

// eventOf is the events row of a decoded envelope.
func eventOf(ev schemas.Event, raw []byte, md meta) eventRow {
	return eventRow{
		EventID: ev.ID,
		Type:    ev.Type,
		Source:  ev.Source,
		Subject: md.Subject,
		Stream:  md.Stream,
		Seq:     md.Seq,
		Time:    ev.Time.UTC(),
		TimeUS:  micros(ev.Time),
		Data:    string(raw),
	}
}

// invalidEvent records a message that could not be decoded. Its id derives
// from its place in the stream, so a redelivery lands on the same row while
// two bad messages stay two rows.
func invalidEvent(raw []byte, md meta, reason error) eventRow {
	parent := md.Stream + ":" + strconv.FormatUint(md.Seq, 10)
	if md.Seq == 0 {
		sum := sha256.Sum256(append([]byte(md.Subject+"\x00"), raw...))
		parent = "sha256:" + hex.EncodeToString(sum[:])
	}
	at := md.Stored
	if !inRange(at) {
		at = minTime
	}
	return eventRow{
		EventID:       schemas.DerivedID(parent, TypeInvalid),
		Type:          TypeInvalid,
		Subject:       md.Subject,
		Stream:        md.Stream,
		Seq:           md.Seq,
		Time:          at.UTC(),
		TimeUS:        micros(at),
		Data:          string(raw),
		InvalidReason: truncate(reason.Error(), 1000),
	}
}

// decodeDecision turns a message of the decisions stream into its rows.
// Decoding is lenient about unknown fields, so a newer producer's event is
// still written, and strict about what the tables cannot hold.
func decodeDecision(raw []byte, md meta) (decisionRow, eventRow, error) {
	if row, ev, ok := quickDecision(raw, md); ok {
		return row, eventOf(ev, raw, md), nil
	}
	ev, err := parseEnvelope(raw)
	if err != nil {
		return decisionRow{}, eventRow{}, err
	}
	row, err := decisionOf(ev, md)
	if err != nil {
		return decisionRow{}, eventRow{}, err
	}
	return row, eventOf(ev, raw, md), nil
}

// decisionBody is schemas.Decision as the writer decodes it: every field
// with its schemas type, so a value of the wrong type is still poison,
// except the context, kept raw: decoding it into a map only to re-encode
// it is most of the cost of the writer's path. TestDecisionBodyMatches
// keeps it equal to schemas.Decision.
type decisionBody struct {
	RequestID        string                 `json:"request_id"`
	Action           string                 `json:"action"`
	Resource         schemas.Resource       `json:"resource"`
	Context          json.RawMessage        `json:"context,omitempty"`
	Principal        *schemas.Principal     `json:"principal,omitempty"`
	Decision         string                 `json:"decision"`
	Code             schemas.Code           `json:"code,omitempty"`
	Reason           string                 `json:"reason,omitempty"`
	Stage            string                 `json:"stage"`
	PolicyIDs        []string               `json:"policy_ids,omitempty"`
	PolicyErrors     []string               `json:"policy_errors,omitempty"`
	PolicyVersion    string                 `json:"policy_version,omitempty"`
	SessionKey       string                 `json:"session_key,omitempty"`
	TokenFingerprint string                 `json:"token_fingerprint,omitempty"`
	Timings          schemas.Timings        `json:"timings"`
	Lease            *schemas.Lease         `json:"lease,omitempty"`
	Shadow           *schemas.ShadowOutcome `json:"shadow,omitempty"`
	Approvals        []string               `json:"approvals,omitempty"`
	ApprovalID       string                 `json:"approval_id,omitempty"`
}

// decisionOf is the decisions row of a parsed envelope. The data is
// decoded once, its context kept raw: decoding it into a map only to
// re-encode it is most of the cost of the writer's path.
func decisionOf(ev schemas.Event, md meta) (decisionRow, error) {
	if ev.Type != schemas.TypeDecision {
		return decisionRow{}, fmt.Errorf("%w: type %q on the decisions stream, want %q", schemas.ErrInvalidEvent, ev.Type, schemas.TypeDecision)
	}
	var body decisionBody
	if err := gojson.Unmarshal(ev.Data, &body); err != nil {
		return decisionRow{}, fmt.Errorf("%w: decision data: %v", schemas.ErrInvalidEvent, err)
	}
	return decisionRowOf(ev, &body, md)
}

// decisionRowOf checks a decoded decision and flattens it into its row;
// ev supplies the envelope's fields (its data is not read).
func decisionRowOf(ev schemas.Event, d *decisionBody, md meta) (decisionRow, error) {
	switch {
	case d.RequestID == "" || len(d.RequestID) > schemas.MaxIDLength:
		return decisionRow{}, fmt.Errorf("%w: request_id must be 1 to %d characters", schemas.ErrInvalidEvent, schemas.MaxIDLength)
	case d.Decision != schemas.Allow && d.Decision != schemas.Deny:
		// The column is an Enum8: one bad value would fail the whole batch.
		return decisionRow{}, fmt.Errorf("%w: decision %q is neither allow nor deny", schemas.ErrInvalidEvent, d.Decision)
	}
	decided := d.Timings.DecidedAt
	if !inRange(decided) {
		decided = ev.Time // the envelope's time is when the decider emitted it
	}
	// The context is kept as the JSON text it arrived as (compacted), not
	// re-encoded from a map, which would round large integers.
	ctxJSON := "{}"
	if c := bytes.TrimSpace(d.Context); len(c) > 0 && string(c) != "null" {
		var buf bytes.Buffer
		if err := json.Compact(&buf, c); err == nil {
			ctxJSON = buf.String()
		}
	}
	row := decisionRow{
		EventID:          ev.ID,
		RequestID:        d.RequestID,
		Source:           ev.Source,
		Time:             decided.UTC(),
		TimeUS:           micros(decided),
		ReceivedAt:       orEpoch(d.Timings.ReceivedAt),
		Action:           d.Action,
		ResourceType:     d.Resource.Type,
		ResourceID:       d.Resource.ID,
		Decision:         d.Decision,
		Code:             string(d.Code),
		Reason:           d.Reason,
		Stage:            d.Stage,
		PolicyIDs:        nonNil(d.PolicyIDs),
		PolicyErrors:     nonNil(d.PolicyErrors),
		PolicyVersion:    d.PolicyVersion,
		SessionKey:       d.SessionKey,
		TokenFingerprint: d.TokenFingerprint,
		Context:          ctxJSON,
		AuthnUS:          nonNegative(d.Timings.AuthnMicros),
		PolicyUS:         nonNegative(d.Timings.PolicyMicros),
		TotalUS:          nonNegative(d.Timings.TotalMicros),
		NATSSubject:      md.Subject,
		Seq:              md.Seq,
		Groups:           []string{},
		Scopes:           []string{},
	}
	if row.Action == "" {
		// A deny for a malformed request may not know the action from the
		// data; the subject always carries it.
		row.Action = actionFromSubject(md.Subject)
	}
	if p := d.Principal; p != nil {
		row.PrincipalID = p.ID
		row.PrincipalType = p.Type
		row.Issuer = p.Issuer
		row.Subject = p.Subject
		row.Email = p.Email
		row.Groups = nonNil(p.Groups)
		row.Scopes = nonNil(p.Scopes)
	}
	return row, nil
}

// decodeSession turns a message of the sessions stream into its rows. The
// session event's kind is the subject's last token.
func decodeSession(raw []byte, md meta) (sessionRow, eventRow, error) {
	ev, err := parseEnvelope(raw)
	if err != nil {
		return sessionRow{}, eventRow{}, err
	}
	if !strings.HasPrefix(ev.Type, "dev.aigov.session.") {
		return sessionRow{}, eventRow{}, fmt.Errorf("%w: type %q on the sessions stream is not a session event", schemas.ErrInvalidEvent, ev.Type)
	}
	kind := md.Subject[strings.LastIndexByte(md.Subject, '.')+1:]
	if kind == "" {
		return sessionRow{}, eventRow{}, fmt.Errorf("%w: subject %q names no session event", schemas.ErrInvalidEvent, md.Subject)
	}
	var s schemas.SessionEvent
	if err := gojson.Unmarshal(ev.Data, &s); err != nil {
		return sessionRow{}, eventRow{}, fmt.Errorf("%w: session data: %v", schemas.ErrInvalidEvent, err)
	}
	if s.SessionKey == "" {
		return sessionRow{}, eventRow{}, fmt.Errorf("%w: session_key is missing", schemas.ErrInvalidEvent)
	}
	row := sessionRow{
		EventID:          ev.ID,
		Type:             kind,
		SessionKey:       s.SessionKey,
		Issuer:           s.Issuer,
		Subject:          s.Subject,
		PrincipalID:      s.PrincipalID,
		SID:              s.SessionID,
		Reason:           s.Reason,
		By:               s.By,
		RequestID:        s.RequestID,
		TokenFingerprint: s.TokenFingerprint,
		FirstSeen:        orEpoch(s.FirstSeen),
		LastSeen:         orEpoch(s.LastSeen),
		Time:             ev.Time.UTC(),
		TimeUS:           micros(ev.Time),
		NATSSubject:      md.Subject,
		Seq:              md.Seq,
	}
	if s.AuthTime != nil && inRange(*s.AuthTime) {
		t := s.AuthTime.UTC()
		row.AuthTime = &t
	}
	return row, eventOf(ev, raw, md), nil
}

// actionFromSubject returns what follows <prefix>.decision. in a subject.
func actionFromSubject(subject string) string {
	_, rest, ok := strings.Cut(subject, "."+schemas.KindDecision+".")
	if !ok {
		return ""
	}
	return rest
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
