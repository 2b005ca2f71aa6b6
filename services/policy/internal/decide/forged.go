package decide

import (
	"context"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/servicekit"
)

// ForgedDecisionKind derives the event id of the deny of a verified event
// that authn did not sign. It includes the forged message's stream
// position: a forgery may reuse a real request's id, and must neither
// share that request's decision id (the stream would drop the real
// decision as a duplicate) nor collapse with another forgery.
const ForgedDecisionKind = "policy.forged"

// refuseForged records a deny bad_event_signature for a verified event
// whose signature is missing, invalid or not authn's. Nothing in it is
// believed: no policy runs, and no reply is sent, since its reply subject
// is the forger's choice too.
func (s *Service) refuseForged(ctx context.Context, m jetstream.Msg, verr error) error {
	md, err := m.Metadata()
	if err != nil {
		return servicekit.Permanent(fmt.Errorf("forged verified event on %s: no metadata: %w", m.Subject(), err))
	}
	v, derr := decodeVerified(m.Data())
	if derr != nil {
		// Not even an event: the audit keeps it raw from the verified
		// stream; there is nothing to decide or answer.
		return servicekit.Permanent(fmt.Errorf("unsigned and undecodable verified event on %s (%v): %w", m.Subject(), verr, derr))
	}
	subject, err := s.decisionSubject(v, m.Subject())
	if err != nil {
		return servicekit.Permanent(err)
	}
	now := s.clock()
	d := schemas.Decision{
		RequestID: v.RequestID,
		Action:    v.Request.Action,
		Resource:  v.Request.Resource,
		Decision:  schemas.Deny,
		Code:      schemas.CodeBadEventSignature,
		Reason:    fmt.Sprintf("the verified event is %s: %v", signing.StatusOf(verr), verr),
		Stage:     schemas.StagePolicy,
		Timings:   engine.Timings(v, now),
	}
	if snap := s.state.snapshot(); snap != nil {
		d.PolicyVersion = snap.eval.Set().Version()
	}
	id := schemas.DerivedID(v.RequestID+"@"+strconv.FormatUint(md.Sequence.Stream, 10), ForgedDecisionKind)
	if _, err := s.pub.Publish(ctx, servicekit.Outgoing{
		NATSSubject: subject, ID: id, Type: schemas.TypeDecision,
		Subject: d.Resource.String(), Time: now, Data: d,
	}); err != nil {
		return fmt.Errorf("deny of forged verified event %s: %w", v.RequestID, err)
	}
	s.decisions.WithLabelValues(d.Decision, string(d.Code)).Inc()
	s.log.Warn().Str("request_id", v.RequestID).Str("event_id", id).Str("subject", m.Subject()).
		Uint64("stream_seq", md.Sequence.Stream).Str("signature", string(signing.StatusOf(verr))).Err(verr).
		Msg("verified event not signed by authn: denied bad_event_signature")
	return nil
}
