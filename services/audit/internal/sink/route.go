package sink

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/audit/chain"
)

// approvalRow is one row of the approvals table.
type approvalRow struct {
	EventID, Type, ApprovalID, Status, RequestID, Action, ResourceType, ResourceID string
	Approver, Requester, Reason                                                    string
	ExpiresUS                                                                      uint64
	Time                                                                           time.Time
	TimeUS                                                                         uint64
	Data, Subject, Stream                                                          string
	Seq                                                                            uint64
}

// changeRow is one row of the policy_changes table.
type changeRow struct {
	EventID, Type, Kind, Version, Previous, ChangedBy, EntityType, EntityID, Summary string
	Time                                                                             time.Time
	TimeUS                                                                           uint64
	Data, Subject, Stream                                                            string
	Seq                                                                              uint64
}

// anomalyRow is one row of the anomalies table.
type anomalyRow struct {
	EventID, Kind, Stream, Consumer string
	Seq                             uint64
	Subject, Reason                 string
	Deliveries                      uint64
	Data                            string
	Time                            time.Time
	TimeUS                          uint64
	DLQSeq                          uint64
}

// decoded is what one stream position becomes: its event_log row, at most
// one typed row, and a dead letter to publish when it is poison.
type decoded struct {
	log      logRow
	decision *decisionRow
	session  *sessionRow
	approval *approvalRow
	change   *changeRow
	anomaly  *anomalyRow
	dead     *schemas.DeadLetter
}

// logRow is one row of event_log.
type logRow struct {
	chain.Row
	Time time.Time
}

func logOf(ev schemas.Event, raw []byte, md meta) logRow {
	return logRow{Row: chain.Row{Stream: md.Stream, Seq: md.Seq, EventID: ev.ID, Type: ev.Type, Source: ev.Source,
		Subject: md.Subject, TimeUS: micros(ev.Time), Data: string(raw)}, Time: ev.Time.UTC()}
}

func invalidLog(raw []byte, md meta, reason error) logRow {
	e := invalidEvent(raw, md, reason)
	return logRow{Row: chain.Row{Stream: md.Stream, Seq: md.Seq, EventID: e.EventID, Type: TypeInvalid,
		Subject: md.Subject, TimeUS: e.TimeUS, Data: e.Data, InvalidReason: e.InvalidReason}, Time: e.Time}
}

// decode routes one (already masked) message by its CloudEvent type. A
// message that is not a valid event, or whose typed data does not decode,
// is poison: it is kept raw in event_log as type invalid and dead-lettered
// (or, on the dead-letter stream itself, recorded as an anomaly directly).
func decode(raw []byte, md meta, consumer string, deadLetterStream bool) decoded {
	var out decoded
	ev, err := parseEnvelope(raw)
	if err == nil {
		err = out.typed(ev, raw, md)
	}
	if err == nil {
		out.log = logOf(ev, raw, md)
		return out
	}
	out = decoded{log: invalidLog(raw, md, err)}
	if deadLetterStream {
		out.anomaly = &anomalyRow{EventID: out.log.EventID, Kind: schemas.DeadLetterPoison, Stream: md.Stream, Consumer: consumer,
			Seq: md.Seq, Subject: md.Subject, Reason: out.log.InvalidReason, Data: string(raw), Time: out.log.Time,
			TimeUS: out.log.TimeUS, DLQSeq: md.Seq}
		return out
	}
	out.dead = &schemas.DeadLetter{Kind: schemas.DeadLetterPoison, Stream: md.Stream, Consumer: consumer, StreamSeq: md.Seq,
		Subject: md.Subject, Reason: out.log.InvalidReason}
	setBody(out.dead, raw)
	return out
}

// setBody stores a message body in a dead letter, as text when it can.
func setBody(d *schemas.DeadLetter, raw []byte) {
	if utf8.Valid(raw) {
		d.Data = string(raw)
	} else {
		d.DataBase64 = base64.StdEncoding.EncodeToString(raw)
	}
}

func (out *decoded) typed(ev schemas.Event, raw []byte, md meta) error {
	t := ev.Type
	switch {
	case t == schemas.TypeDecision:
		d, _, err := decodeDecision(raw, md)
		if err != nil {
			return err
		}
		out.decision = &d
	case strings.HasPrefix(t, "dev.aigov.session."):
		s, _, err := decodeSession(raw, md)
		if err != nil {
			return err
		}
		out.session = &s
	case t == schemas.TypeDeadLetter:
		var d schemas.DeadLetter
		if err := json.Unmarshal(ev.Data, &d); err != nil {
			return fmt.Errorf("%w: dead letter data: %v", schemas.ErrInvalidEvent, err)
		}
		body := d.Data
		if body == "" && d.DataBase64 != "" {
			body = "base64:" + d.DataBase64
		}
		out.anomaly = &anomalyRow{EventID: ev.ID, Kind: d.Kind, Stream: d.Stream, Consumer: d.Consumer, Seq: d.StreamSeq,
			Subject: d.Subject, Reason: d.Reason, Deliveries: d.Deliveries, Data: body, Time: ev.Time.UTC(),
			TimeUS: micros(ev.Time), DLQSeq: md.Seq}
	case strings.Contains(t, "approval"):
		f, err := fieldsOf(ev.Data)
		if err != nil {
			return err
		}
		status := f.str("status", "decision", "state")
		if status == "" {
			status = eventVerb(t)
		}
		res := f.obj("resource")
		out.approval = &approvalRow{EventID: ev.ID, Type: t, ApprovalID: f.str("approval_id", "id"), Status: status,
			RequestID: f.str("request_id"), Action: f.str("action"), ResourceType: firstOf(res.str("type"), f.str("resource_type")),
			ResourceID: firstOf(res.str("id"), f.str("resource_id")), Approver: f.who("approver", "approved_by", "by"),
			Requester: f.who("requester", "requested_by", "principal_id", "principal"), Reason: f.str("reason", "comment"),
			ExpiresUS: f.timeUS("expires_at", "not_after"), Time: ev.Time.UTC(), TimeUS: micros(ev.Time), Data: string(raw),
			Subject: md.Subject, Stream: md.Stream, Seq: md.Seq}
		if out.approval.ApprovalID == "" {
			out.approval.ApprovalID = ev.ID
		}
	case strings.Contains(t, ".policy") || strings.Contains(t, ".entit"):
		f, err := fieldsOf(ev.Data)
		if err != nil {
			return err
		}
		kind := "policy"
		if strings.Contains(t, ".entit") {
			kind = "entity"
		}
		ent := f.obj("entity")
		if len(ent) == 0 {
			ent = f.obj("uid")
		}
		out.change = &changeRow{EventID: ev.ID, Type: t, Kind: kind,
			Version:  f.str("version", "policy_version", "new_version", "entities_version"),
			Previous: f.str("previous", "previous_version", "old_version"), ChangedBy: f.who("changed_by", "by", "author", "actor"),
			EntityType: firstOf(ent.str("type"), f.str("entity_type")), EntityID: firstOf(ent.str("id"), f.str("entity_id")),
			Summary: f.str("summary", "reason", "message", "change"), Time: ev.Time.UTC(), TimeUS: micros(ev.Time),
			Data: string(raw), Subject: md.Subject, Stream: md.Stream, Seq: md.Seq}
	}
	return nil
}

// fields reads loosely shaped event data: producers of approvals and
// change events name a field in one of a few ways.
type fields map[string]json.RawMessage

func fieldsOf(data json.RawMessage) (fields, error) {
	var f fields
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: data is not a JSON object: %v", schemas.ErrInvalidEvent, err)
	}
	return f, nil
}

func (f fields) str(names ...string) string {
	for _, n := range names {
		var s string
		if v, ok := f[n]; ok && json.Unmarshal(v, &s) == nil && s != "" {
			return s
		}
	}
	return ""
}

func (f fields) obj(name string) fields {
	var o fields
	_ = json.Unmarshal(f[name], &o)
	return o
}

// who reads a principal given as a string or as an object with an id or
// email.
func (f fields) who(names ...string) string {
	if s := f.str(names...); s != "" {
		return s
	}
	for _, n := range names {
		if o := f.obj(n); len(o) > 0 {
			if s := o.str("id", "email", "subject"); s != "" {
				return s
			}
		}
	}
	return ""
}

func (f fields) timeUS(names ...string) uint64 {
	for _, n := range names {
		var t time.Time
		if v, ok := f[n]; ok && json.Unmarshal(v, &t) == nil && inRange(t) {
			return micros(t)
		}
	}
	return 0
}

func firstOf(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

// eventVerb is "granted" of dev.aigov.approval.granted.v1.
func eventVerb(t string) string {
	parts := strings.Split(t, ".")
	if len(parts) >= 2 && strings.HasPrefix(parts[len(parts)-1], "v") {
		return parts[len(parts)-2]
	}
	return parts[len(parts)-1]
}
