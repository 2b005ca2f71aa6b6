package schemas

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// PublishEvent encodes ev, publishes it on subject with its id as the
// Nats-Msg-Id and waits for JetStream's ack. It returns the encoded event
// (a reply can reuse it) and the ack (Duplicate tells a repeat, which the
// stream stored once). Every aigov event is published this way, so that a
// redelivered input's event is never stored twice.
func PublishEvent(ctx context.Context, js jetstream.JetStream, subject string, ev Event) ([]byte, *jetstream.PubAck, error) {
	body, err := json.Marshal(ev)
	if err != nil {
		return nil, nil, fmt.Errorf("encode %s event: %w", ev.Type, err)
	}
	ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: body}, jetstream.WithMsgID(ev.ID))
	if err != nil {
		return nil, nil, fmt.Errorf("publish %s event %s on %s: %w", ev.Type, ev.ID, subject, err)
	}
	return body, ack, nil
}
