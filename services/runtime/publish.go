package runtime

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
)

// Publisher emits a service's CloudEvents on JetStream and answers
// requesters' inboxes. Every service publishes the same way: the event id is
// the Nats-Msg-Id, so a redelivered input's event is stored once.
type Publisher struct {
	js     jetstream.JetStream
	nc     *nats.Conn
	source string
	log    zerolog.Logger
}

// NewPublisher returns a publisher whose events carry source.
func NewPublisher(js jetstream.JetStream, nc *nats.Conn, source string, log zerolog.Logger) (*Publisher, error) {
	if js == nil || nc == nil || source == "" {
		return nil, fmt.Errorf("publisher: need jetstream, nats connection and a source")
	}
	return &Publisher{js: js, nc: nc, source: source, log: log}, nil
}

// Outgoing is one event to publish.
type Outgoing struct {
	// NATSSubject is where it goes.
	NATSSubject string
	// ID is the event id and de-duplication key.
	ID string
	// Type is the CloudEvents type.
	Type string
	// Subject is the optional CloudEvents subject (what the event is about).
	Subject string
	// Time is the event time.
	Time time.Time
	// Data is the event's data.
	Data any
}

// Publish encodes and publishes one event and waits for JetStream's ack; it
// returns the encoded event so a reply can reuse it.
func (p *Publisher) Publish(ctx context.Context, o Outgoing) ([]byte, error) {
	ev, err := schemas.NewEvent(o.ID, p.source, o.Type, o.Time, o.Data)
	if err != nil {
		return nil, err
	}
	ev.Subject = o.Subject
	body, ack, err := schemas.PublishEvent(ctx, p.js, o.NATSSubject, ev)
	if err != nil {
		return nil, err
	}
	if ack.Duplicate {
		p.log.Debug().Str("event_id", o.ID).Str("subject", o.NATSSubject).Msg("event was already published")
	}
	return body, nil
}

// Reply sends a decision to the requester's inbox, best effort like any core
// NATS message: the decision itself is already durable. Only a literal
// _INBOX. subject is answered, so a requester cannot make a service publish
// on a subject of its choosing, and only under the inbox of the tenant the
// request came from ("" for the aigov account), so a tenant cannot have
// its decisions delivered into another tenant's account.
func (p *Publisher) Reply(requestID, tenant, replyTo string, body []byte) {
	switch {
	case replyTo == "":
		return
	case !schemas.ReplyAllowed(tenant, replyTo):
		p.log.Warn().Str("request_id", requestID).Str("tenant", tenant).Str("reply_to", truncate(strings.ToValidUTF8(replyTo, "?"), 100)).
			Msg("reply subject ignored: not an _INBOX. subject of the requester's own account")
		return
	}
	if err := p.nc.Publish(replyTo, body); err != nil {
		p.log.Warn().Err(err).Str("request_id", requestID).Msg("reply failed")
	}
}
