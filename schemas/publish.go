package schemas

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas/signing"
)

// PublishEvent encodes ev, signs it with signer (nil publishes it unsigned,
// which every verifier flags), publishes it on subject with its id as the
// Nats-Msg-Id and waits for JetStream's ack. It returns the message as
// stored (a reply reuses its body and signature) and the ack (Duplicate
// tells a repeat, which the stream stored once). Every aigov event is
// published this way, so that a redelivered input's event is never stored
// twice.
func PublishEvent(ctx context.Context, js jetstream.JetStream, signer *signing.Signer, subject string, ev Event) (*nats.Msg, *jetstream.PubAck, error) {
	msg, err := EventMessage(subject, ev)
	if err != nil {
		return nil, nil, err
	}
	if signer != nil {
		msg.Header.Set(signing.Header, signer.Sign(subject, ev.ID, msg.Data))
	}
	ack, err := js.PublishMsg(ctx, msg)
	if err != nil {
		return nil, nil, fmt.Errorf("publish %s event %s on %s: %w", ev.Type, ev.ID, subject, err)
	}
	return msg, ack, nil
}

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
