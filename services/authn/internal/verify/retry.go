package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit"
)

// MaxRetryScan bounds the decisions a retry's lookup reads: the stored
// decision of a request follows its verified event by the time policy took
// to decide it, so it is among the first decisions of its action stored
// after that event.
const MaxRetryScan = 2000

// errDecisionPending is a retry of a request policy has not decided yet:
// the retry is redelivered (with back-off) until the decision is stored.
var errDecisionPending = errors.New("the request is verified but not decided yet")

// passRetry handles a verified request resent under a new Nats-Msg-Id
// with the id of a request already sent (client.Authorize does so when the
// request stream dropped its publish as a duplicate: the first copy's
// decision never reached the caller, e.g. across a NATS restart). Its
// verified event is published at once, under the id derived from the
// request id as always: a stream that does not hold it yet takes it and
// policy decides and answers as for any request. One that holds it
// already (the request was verified before) has the verified event of
// whoever sent the id first; the retry gets the decision stored for the
// id, signed as stored, when it is the same request from the same token
// (action, resource, token fingerprint and tenant), and a deny
// request_id_reused under its own id otherwise: the first caller's
// decision goes to no one else, and the audited decision of the id stays
// the one recorded.
func (v *Verifier) passRetry(ctx context.Context, r request, retryID string) error {
	now := v.now()
	data, err := v.verified(ctx, r, now)
	if err != nil {
		return err
	}
	_, ack, err := v.pub.PublishNow(ctx, servicekit.Outgoing{
		NATSSubject: v.subjects.Verified(r.action), ID: schemas.DerivedID(r.id, schemas.KindVerified),
		Type: schemas.TypeVerified, Time: now, Data: data,
	})
	if err != nil {
		return err
	}
	if !ack.Duplicate {
		v.passed.Inc()
		return nil
	}
	first, at, err := v.storedVerified(ctx, ack)
	if err != nil {
		return err
	}
	if first.Request.Action != r.data.Action || first.Request.Resource != r.data.Resource ||
		first.TokenFingerprint != r.tokenFP || first.Tenant != r.tenant {
		v.log.Warn().Str("request_id", r.id).Str("retry_id", retryID).Str("token_fingerprint", r.tokenFP).
			Msg("retry of a request id decided for another request or token")
		return v.denyAs(ctx, r, deny(schemas.CodeRequestIDReused,
			"request id %s was already sent by another token, or for another action or resource", quoteTrunc(r.id, 140)), retryID)
	}
	stored, err := v.storedDecision(ctx, r, at, schemas.DerivedID(r.id, schemas.KindPolicyDecision))
	if err != nil {
		return err
	}
	v.log.Info().Str("request_id", r.id).Str("retry_id", retryID).Msg("retry answered with the stored decision")
	v.reply(ctx, r, stored)
	return nil
}

// storedVerified reads the verified event a duplicate ack points at, and
// when it was stored.
func (v *Verifier) storedVerified(ctx context.Context, ack *jetstream.PubAck) (schemas.Verified, time.Time, error) {
	var out schemas.Verified
	st, err := v.js.Stream(ctx, ack.Stream)
	if err != nil {
		return out, time.Time{}, fmt.Errorf("stream %s: %w", ack.Stream, err)
	}
	raw, err := st.GetMsg(ctx, ack.Sequence)
	if err != nil {
		return out, time.Time{}, fmt.Errorf("stored verified event %s/%d: %w", ack.Stream, ack.Sequence, err)
	}
	ev, err := schemas.ParseEvent(raw.Data)
	if err == nil {
		err = ev.DecodeData(&out)
	}
	if err != nil {
		return out, time.Time{}, servicekit.Permanent(fmt.Errorf("stored verified event %s/%d: %w", ack.Stream, ack.Sequence, err))
	}
	return out, raw.Time, nil
}

// denyRetry handles a retry authn denies (its token expired meanwhile,
// say): a request id already decided within the duplicate window keeps
// its decision. The same request from the same token gets the stored
// decision; another token, action or resource a deny request_id_reused
// under its retry id. Deciding it again under the request id would give
// the caller another answer than the one recorded first, and replace that
// one in the decisions table (keyed by request id). done is false when no
// decision of the id is stored (among MaxRetryScan of its action's): the
// retry is denied as any request.
func (v *Verifier) denyRetry(ctx context.Context, r request, d *Denial) (done bool, err error) {
	since := v.now().Add(-v.topo.DuplicateWindow - time.Minute)
	stored, err := v.storedDecision(ctx, r, since,
		schemas.DerivedID(r.id, schemas.KindPolicyDecision), schemas.DerivedID(r.id, schemas.KindDecision))
	if errors.Is(err, errDecisionPending) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	ev, err := schemas.ParseEvent(stored.Data)
	var first schemas.Decision
	if err == nil {
		err = json.Unmarshal(ev.Data, &first)
	}
	if err != nil {
		return false, servicekit.Permanent(fmt.Errorf("stored decision of request %s: %w", r.id, err))
	}
	if first.Action != r.action || first.Resource != r.data.Resource || first.TokenFingerprint != r.tokenFP {
		v.log.Warn().Str("request_id", r.id).Str("retry_id", r.retryID).Str("token_fingerprint", r.tokenFP).
			Str("code", string(d.Code)).Msg("retry of a request id decided for another request or token")
		return true, v.denyAs(ctx, r, deny(schemas.CodeRequestIDReused,
			"request id %s was already sent by another token, or for another action or resource", quoteTrunc(r.id, 140)), r.retryID)
	}
	v.log.Info().Str("request_id", r.id).Str("retry_id", r.retryID).Str("code", string(d.Code)).
		Msg("retry answered with the stored decision, not decided again")
	v.reply(ctx, r, stored)
	return true, nil
}

// storedDecision finds the decision of r's request id, stored under one
// of the event ids want, among the decisions of its action stored since
// from, reading at most MaxRetryScan of them.
func (v *Verifier) storedDecision(ctx context.Context, r request, from time.Time, want ...string) (*nats.Msg, error) {
	name := v.topo.StreamDecisions()
	subject := v.subjects.Decision(r.action)
	st, err := v.js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	seq, err := v.firstSeqSince(ctx, name, subject, from)
	if err != nil {
		return nil, err
	}
	for range MaxRetryScan {
		if seq == 0 {
			break
		}
		raw, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("decisions of %s from %d: %w", subject, seq, err)
		}
		if slices.Contains(want, raw.Header.Get(schemas.HeaderMsgID)) {
			return &nats.Msg{Subject: raw.Subject, Header: raw.Header, Data: raw.Data}, nil
		}
		seq = raw.Sequence + 1
	}
	return nil, fmt.Errorf("retry of request %s: %w", r.id, errDecisionPending)
}

// firstSeqSince is the sequence of the first message on subject stored at
// or after from (0 when there is none yet). JetStream's message get takes
// a start time, which the Go client does not expose: the request is sent
// as the API documents it.
func (v *Verifier) firstSeqSince(ctx context.Context, stream, subject string, from time.Time) (uint64, error) {
	req, err := json.Marshal(struct {
		NextFor   string    `json:"next_by_subj"`
		StartTime time.Time `json:"start_time"`
	}{subject, from.UTC()})
	if err != nil {
		return 0, fmt.Errorf("encode message get: %w", err)
	}
	resp, err := v.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.GET."+stream, req)
	if err != nil {
		return 0, fmt.Errorf("first decision of %s since %s: %w", subject, from.Format(time.RFC3339Nano), err)
	}
	var out struct {
		Message *struct {
			Sequence uint64 `json:"seq"`
		} `json:"message"`
		Error *struct {
			Code    int    `json:"code"`
			ErrCode int    `json:"err_code"`
			Desc    string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(resp.Data, &out); err != nil {
		return 0, fmt.Errorf("first decision of %s: decode: %w", subject, err)
	}
	switch {
	case out.Error != nil && out.Error.Code == 404:
		return 0, nil
	case out.Error != nil:
		return 0, fmt.Errorf("first decision of %s: %s (%d)", subject, out.Error.Desc, out.Error.ErrCode)
	case out.Message == nil:
		return 0, fmt.Errorf("first decision of %s: empty answer", subject)
	}
	return out.Message.Sequence, nil
}
