package servicekit

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
)

// PublishEvent encodes ev, signs it with signer (nil publishes it unsigned,
// which every verifier flags), publishes it on subject with its id as the
// Nats-Msg-Id and waits for JetStream's ack. It returns the message as
// stored (a reply reuses its body and signature) and the ack (Duplicate
// tells a repeat, which the stream stored once). Every aigov event is
// published this way, so that a redelivered input's event is never stored
// twice.
func PublishEvent(ctx context.Context, js jetstream.JetStream, signer *signing.Signer, subject string, ev schemas.Event) (*nats.Msg, *jetstream.PubAck, error) {
	msg, err := schemas.EventMessage(subject, ev)
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
