package servicekit

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
)

// headerDuplicate marks, on the publisher's own copy only, an event the
// stream already held: its reply is withheld (a pipelined runner fetches
// the stored copy instead, see storedCopy).
const headerDuplicate = "Aigov-Local-Duplicate"

// PipelineOptions are what a runner needs to publish this publisher's
// events in signed batches (Runner.Pipeline).
func (p *Publisher) PipelineOptions(linger time.Duration) PipelineOptions {
	return PipelineOptions{JS: p.js, Signer: p.signer, Linger: linger}
}

// Publisher emits a service's CloudEvents on JetStream and answers
// requesters' inboxes. Every service publishes the same way: the event id is
// the Nats-Msg-Id, so a redelivered input's event is stored once.
type Publisher struct {
	js     jetstream.JetStream
	nc     *nats.Conn
	signer *signing.Signer
	source string
	log    zerolog.Logger
}

// NewPublisher returns a publisher whose events carry source and are
// signed by signer: a service never publishes an unsigned event.
func NewPublisher(js jetstream.JetStream, nc *nats.Conn, signer *signing.Signer, source string, log zerolog.Logger) (*Publisher, error) {
	if js == nil || nc == nil || signer == nil || source == "" {
		return nil, fmt.Errorf("publisher: need jetstream, nats connection, a signing key and a source")
	}
	return &Publisher{js: js, nc: nc, signer: signer, source: source, log: log}, nil
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

// Publish encodes, signs and publishes one event and waits for JetStream's
// ack; it returns the message as stored so a reply can reuse it. Called by
// the handler of a pipelined runner, it only queues the event: the runner
// signs and stores it (in a batch) before it acks the input.
func (p *Publisher) Publish(ctx context.Context, o Outgoing) (*nats.Msg, error) {
	if s := settlementOf(ctx); s != nil {
		// The same bytes as NewEvent and EventMessage, data encoded once.
		msg, err := schemas.NewEventMessage(o.NATSSubject, o.ID, p.source, o.Type, o.Subject, o.Time, o.Data)
		if err != nil {
			return nil, err
		}
		s.add(msg)
		return msg, nil
	}
	ev, err := schemas.NewEvent(o.ID, p.source, o.Type, o.Time, o.Data)
	if err != nil {
		return nil, err
	}
	ev.Subject = o.Subject
	msg, ack, err := PublishEvent(ctx, p.js, p.signer, o.NATSSubject, ev)
	if err != nil {
		return nil, err
	}
	if ack.Duplicate {
		// The stream kept the first copy, which this one may contradict
		// (a redelivered input decided again): it must not be replied.
		p.log.Debug().Str("event_id", o.ID).Str("subject", o.NATSSubject).Msg("event was already published")
		msg.Header.Set(headerDuplicate, "true")
	}
	return msg, nil
}

// PublishNow publishes one event and waits for its ack even in a pipelined
// runner's handler, for a handler whose next step depends on whether the
// stream already held the event (the ack's Duplicate and Sequence).
func (p *Publisher) PublishNow(ctx context.Context, o Outgoing) (*nats.Msg, *jetstream.PubAck, error) {
	ev, err := schemas.NewEvent(o.ID, p.source, o.Type, o.Time, o.Data)
	if err != nil {
		return nil, nil, err
	}
	ev.Subject = o.Subject
	return PublishEvent(ctx, p.js, p.signer, o.NATSSubject, ev)
}

// Reply sends a stored decision, with its signature, to the requester's
// inbox, best effort like any core NATS message: the decision itself is
// already durable. Only a literal _INBOX. subject is answered, so a
// requester cannot make a service publish on a subject of its choosing,
// and only under the inbox of the tenant the request came from ("" for
// the aigov account), so a tenant cannot have its decisions delivered into
// another tenant's account. In a pipelined runner's handler the reply
// waits until the event is stored.
func (p *Publisher) Reply(ctx context.Context, requestID, tenant, replyTo string, stored *nats.Msg) {
	p.ReplyWith(ctx, requestID, tenant, replyTo, stored, nil)
}

// ReplyWith is Reply with extra headers on the reply only (never on the
// stored event): what a requester alone may receive, such as the wrapped
// key of an allowed privacy.export.
func (p *Publisher) ReplyWith(ctx context.Context, requestID, tenant, replyTo string, stored *nats.Msg, extra nats.Header) {
	switch {
	case replyTo == "":
		return
	case !schemas.ReplyAllowed(tenant, replyTo):
		p.log.Warn().Str("request_id", requestID).Str("tenant", tenant).Str("reply_to", truncate(strings.ToValidUTF8(replyTo, "?"), 100)).
			Msg("reply subject ignored: not an _INBOX. subject of the requester's own account")
		return
	}
	if stored.Header.Get(headerDuplicate) != "" {
		p.log.Warn().Str("request_id", requestID).Msg("reply withheld: the stream holds an earlier copy of this event")
		return
	}
	s := settlementOf(ctx)
	send := func() {
		m := schemas.ReplyMessage(replyTo, stored)
		if s != nil && s.wasReplaced(stored) {
			// The reply carries the decision stored first, which this
			// handling's extras (a wrapped key) do not belong to.
			extra = nil
		}
		for k, vs := range extra {
			for _, v := range vs {
				m.Header.Add(k, v)
			}
		}
		if err := p.nc.PublishMsg(m); err != nil {
			p.log.Warn().Err(err).Str("request_id", requestID).Msg("reply failed")
		}
	}
	if s != nil {
		s.onStored(stored, send)
		return
	}
	send()
}
