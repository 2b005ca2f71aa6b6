package schemas

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas/signing"
)

// EventMessage is ev encoded as the message to publish on subject, with its
// id as the Nats-Msg-Id, not yet signed.
func EventMessage(subject string, ev Event) (*nats.Msg, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode %s event: %w", ev.Type, err)
	}
	msg := nats.NewMsg(subject)
	msg.Data = body
	msg.Header.Set(HeaderMsgID, ev.ID)
	return msg, nil
}

// ReplyMessage is the copy of a stored, signed event sent to a requester's
// inbox: the same body and signature, and the subject it was signed for.
func ReplyMessage(inbox string, stored *nats.Msg) *nats.Msg {
	m := nats.NewMsg(inbox)
	m.Data = stored.Data
	m.Header.Set(HeaderMsgID, stored.Header.Get(HeaderMsgID))
	m.Header.Set(signing.HeaderSubject, stored.Subject)
	if sig := stored.Header.Get(signing.Header); sig != "" {
		m.Header.Set(signing.Header, sig)
	}
	return m
}

// NewEventMessage is NewEvent followed by EventMessage, the same bytes, with
// data encoded once: EventMessage re-scans (compacts) an event's data while
// encoding the envelope, which on the hot path cost as much as encoding the
// data. subject is the CloudEvents subject (omitted when empty).
func NewEventMessage(natsSubject, id, source, typ, subject string, at time.Time, data any) (*nats.Msg, error) {
	if id == "" {
		id = NewID()
	}
	raw, err := json.Marshal(data)
	if err != nil {
		return nil, fmt.Errorf("encode %s data: %w", typ, err)
	}
	stamp, err := at.UTC().MarshalJSON()
	if err != nil {
		return nil, fmt.Errorf("encode %s event: json: error calling MarshalJSON for type time.Time: %w", typ, err)
	}
	// json.Marshal of data is compact and HTML-escaped already, which is
	// what encoding it as an Event's json.RawMessage would make of it.
	body := make([]byte, 0, len(raw)+len(id)+len(source)+len(typ)+len(subject)+len(stamp)+128)
	body = append(body, `{"specversion":"`+SpecVersion+`","id":`...)
	body = appendJSONString(body, id)
	body = append(body, `,"source":`...)
	body = appendJSONString(body, source)
	body = append(body, `,"type":`...)
	body = appendJSONString(body, typ)
	body = append(body, `,"time":`...)
	body = append(body, stamp...)
	if subject != "" {
		body = append(body, `,"subject":`...)
		body = appendJSONString(body, subject)
	}
	body = append(body, `,"datacontenttype":"application/json","data":`...)
	body = append(body, raw...)
	body = append(body, '}')
	msg := nats.NewMsg(natsSubject)
	msg.Data = body
	msg.Header.Set(HeaderMsgID, id)
	return msg, nil
}

// appendJSONString appends s as encoding/json encodes a string: plain
// printable ASCII as is, anything else by json.Marshal itself.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always encodes
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
