package sink

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// advisory is the part of a JetStream max-deliveries or terminated
// advisory the dead-letter worker needs.
type advisory struct {
	Type       string `json:"type"`
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
	Reason     string `json:"reason"`
}

// deadLetters turns the advisories captured in the advisories stream into
// dead-letter events: it fetches the message the consumer gave up on by
// its stream sequence (it stays in the stream) and publishes it, without
// its headers, on aigov.dlq.<stream>.<consumer>. The audit then records it
// in event_log and anomalies like any audited event.
type deadLetters struct {
	js   jetstream.JetStream
	lane *streamLane // for masking and publishing
	// personal redacts the context fields authn would have sealed: the
	// original a dead letter carries was never sealed.
	personal masker
	log      zerolog.Logger
}

// Handle is the worker's servicekit.Handler.
func (d *deadLetters) Handle(ctx context.Context, m jetstream.Msg) error {
	var a advisory
	if err := json.Unmarshal(m.Data(), &a); err != nil || a.Stream == "" || a.StreamSeq == 0 {
		// Not an advisory we understand; keeping it would block nothing
		// but teach nothing either. It stays in the advisories stream.
		return servicekit.Permanent(fmt.Errorf("advisory on %s: not a consumer advisory", m.Subject()))
	}
	kind, reason := schemas.DeadLetterMaxDeliveries, fmt.Sprintf("consumer %s gave up after %d deliveries", a.Consumer, a.Deliveries)
	if strings.HasPrefix(m.Subject(), topology.AdvisoryTerminated) {
		kind, reason = schemas.DeadLetterTerminated, "terminated by consumer "+a.Consumer
		if a.Reason != "" {
			reason += ": " + a.Reason
		}
	}
	dl := schemas.DeadLetter{Kind: kind, Stream: a.Stream, Consumer: a.Consumer, StreamSeq: a.StreamSeq,
		Reason: reason, Deliveries: a.Deliveries}
	st, err := d.js.Stream(ctx, a.Stream)
	if err != nil {
		return fmt.Errorf("stream %s: %w", a.Stream, err)
	}
	orig, err := st.GetMsg(ctx, a.StreamSeq)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		dl.Reason += " (the message was gone from the stream)"
	case err != nil:
		return fmt.Errorf("fetch %s seq %d: %w", a.Stream, a.StreamSeq, err)
	default:
		dl.Subject = orig.Subject
		setBody(&dl, d.personal.event(d.lane.mask.event(orig.Data)))
	}
	if err := d.lane.publishDeadLetter(ctx, dl); err != nil {
		return err
	}
	d.log.Warn().Str("stream", a.Stream).Str("consumer", a.Consumer).Uint64("stream_seq", a.StreamSeq).Str("kind", kind).Msg("message dead-lettered")
	return nil
}
