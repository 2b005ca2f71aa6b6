package sink

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
	"unsafe"

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
	// approvals: an approval.used event has one row per approver, and an
	// allowed approval.grant decision one row as well.
	approvals []approvalRow
	change    *changeRow
	anomaly   *anomalyRow
	dead      *schemas.DeadLetter
	// logged: the position's event_log row is written already; only its
	// typed rows are written (again).
	logged bool
}

// logRow is one row of event_log.
type logRow struct {
	chain.Row
	Time time.Time
}

// logOf is the event_log row of a decoded event. Its data is raw itself,
// not a copy: a message body is never written to after it is received (the
// masker returns a new slice when it changes one), and copying every
// event's kilobyte was the writer's largest allocation.
func logOf(ev schemas.Event, raw []byte, md meta) logRow {
	return logRow{Row: chain.Row{Stream: md.Stream, Seq: md.Seq, EventID: ev.ID, Type: ev.Type, Source: ev.Source,
		Subject: md.Subject, TimeUS: micros(ev.Time), Data: unsafe.String(unsafe.SliceData(raw), len(raw))}, Time: ev.Time.UTC()}
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
	// Only what came on a decision subject is tried as a decision in one
	// pass: on anything else that decode would be thrown away.
	if actionFromSubject(md.Subject) != "" {
		if d, ev, ok := quickDecision(raw, md); ok {
			return decisionDecoded(d, ev, raw, md)
		}
	}
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

func decisionDecoded(d decisionRow, ev schemas.Event, raw []byte, md meta) decoded {
	out := decoded{decision: &d, log: logOf(ev, raw, md)}
	if a, ok := approvalGrantRow(d, ev, raw, md); ok {
		out.approvals = []approvalRow{a}
	}
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
		d, err := decisionOf(ev, md)
		if err != nil {
			return err
		}
		out.decision = &d
		if a, ok := approvalGrantRow(d, ev, raw, md); ok {
			out.approvals = []approvalRow{a}
		}
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
	case t == schemas.TypeApprovalUsed:
		rows, err := approvalUseRows(ev, raw, md)
		if err != nil {
			return err
		}
		out.approvals = rows
	case t == schemas.TypeApprovalRequested || t == schemas.TypeApprovalGranted || t == schemas.TypeApprovalApproved ||
		t == schemas.TypeApprovalRejected || t == schemas.TypeApprovalExpired:
		row, err := approvalEventRow(ev, raw, md)
		if err != nil {
			return err
		}
		out.approvals = []approvalRow{row}
	case t == schemas.TypePolicyChanged || t == schemas.TypePolicyRejected:
		c, err := policyChangeRow(ev, raw, md)
		if err != nil {
			return err
		}
		out.change = &c
	case t == schemas.TypeSubjectErased:
		c, err := erasureRow(ev, raw, md)
		if err != nil {
			return err
		}
		out.change = &c
	case t == schemas.TypeEntityChanged:
		c, err := entityChangeRow(ev, raw, md)
		if err != nil {
			return err
		}
		out.change = &c
	}
	return nil
}
