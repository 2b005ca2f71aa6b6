// Package verify is the authn service: it takes each request event off
// JetStream, verifies its bearer token against the trusted OIDC issuers,
// checks the token's session against the revocation bucket, and publishes
// either a verified event (for policy) or an authn deny decision (for audit
// and the requester). The raw token never leaves the request stream; only
// its fingerprint does.
package verify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/personal"
	"github.com/aigov/aigov/services/servicekit/revocation"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Source is the CloudEvents source of everything authn publishes.
const Source = "aigov/authn"

// InvalidAction is the action a deny is published under when neither the
// subject nor the data names a valid one, so it is still audited.
const InvalidAction = "invalid"

// outcomeVerified labels passes in the outcomes counter; denies use their code.
const outcomeVerified = "verified"

// Verifier consumes requests and publishes verified events or denies.
type Verifier struct {
	auth     *Authenticator
	log      zerolog.Logger
	nc       *nats.Conn
	js       jetstream.JetStream
	pub      *servicekit.Publisher
	topo     topology.Topology
	subjects schemas.Subjects
	runner   *servicekit.Runner
	outcomes *prometheus.CounterVec
	passed   prometheus.Counter // outcomes{verified}, looked up once
	now      func() time.Time

	revs *revocation.Set
	// limits bound a session's age from its token (SessionLimits).
	limits sessionlimits.Limits

	kvMu    sync.Mutex
	usedIDs jetstream.KeyValue // token id bucket, opened on first use

	// encrypt turns sealing on; sealer is set by Run, before any request
	// is taken (it needs the subject keys bucket).
	encrypt  bool
	personal []string
	keyCache int
	sealer   *personal.Sealer
}

// New builds the authn service on what servicekit.Start built: the
// verifier, not ready until its revocation set is loaded (Run takes no
// request before either). It does no I/O.
func New(cfg Config, deps servicekit.Deps) ([]servicekit.Worker, error) {
	v, err := NewVerifier(cfg, deps)
	if err != nil {
		return nil, err
	}
	deps.HTTP.AddCheck("revocations", v.Ready)
	return []servicekit.Worker{v.Run}, nil
}

// NewVerifier builds a verifier; it does no I/O. deps.Signer signs every
// verified event and deny, so that policy, the audit and the requester can
// tell them from forgeries; the service's metrics go to deps.HTTP's
// registry; token lifetimes are checked against deps.Clock.
func NewVerifier(cfg Config, deps servicekit.Deps) (*Verifier, error) {
	switch {
	case deps.NC == nil:
		return nil, errors.New("authn: nil NATS connection")
	case deps.JS == nil:
		return nil, errors.New("authn: nil JetStream context")
	case deps.HTTP == nil:
		return nil, errors.New("authn: nil health and metrics server")
	}
	reg := deps.HTTP.Registry
	auth, err := NewAuthenticator(cfg, deps.Log)
	if err != nil {
		return nil, err
	}
	pub, err := servicekit.NewPublisher(deps.JS, deps.NC, deps.Signer, Source, deps.Log)
	if err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	v := &Verifier{
		auth:     auth,
		log:      deps.Log,
		nc:       deps.NC,
		js:       deps.JS,
		pub:      pub,
		topo:     deps.Topology,
		subjects: deps.Topology.Subjects,
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aigov_authn_outcomes_total",
			Help: "Requests authn decided, by outcome: verified, or the deny code.",
		}, []string{"code"}),
		now:    time.Now,
		limits: cfg.SessionLimits,

		encrypt:  cfg.Encrypt,
		personal: cfg.PersonalContextFields,
		keyCache: cfg.SubjectKeyCacheSize,
	}
	if deps.Clock != nil {
		v.now, auth.now = deps.Clock, deps.Clock
	}
	if err := reg.Register(v.outcomes); err != nil {
		return nil, fmt.Errorf("authn: register metrics: %w", err)
	}
	v.passed = v.outcomes.WithLabelValues(outcomeVerified)
	cacheEntries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "aigov_authn_cache_entries",
		Help: "Verified tokens held by the verification cache.",
	}, func() float64 { return float64(auth.cache.len()) })
	if err := reg.Register(cacheEntries); err != nil {
		return nil, fmt.Errorf("authn: register metrics: %w", err)
	}
	revsMax := cfg.RevocationsMax
	if revsMax == 0 {
		revsMax = DefaultRevocationsMax
	}
	if v.revs, err = revocation.New(revocation.Options{
		JS: deps.JS, NC: deps.NC, Bucket: deps.Topology.BucketRevocations(), Max: revsMax,
		MaxSetting: "AIGOV_AUTHN_REVOCATIONS_MAX", MetricPrefix: "aigov_authn", Log: deps.Log, Registry: reg,
	}); err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	v.runner = servicekit.NewRunner(schemas.ConsumerAuthn, deps.Log, reg, cfg.Workers)
	if err := v.runner.Pipeline(pub.PipelineOptions(cfg.SigningLinger)); err != nil {
		return nil, fmt.Errorf("authn: %w", err)
	}
	return v, nil
}

// Run binds the authn consumer and handles requests until ctx ends, then
// finishes the requests already taken. Issuers are discovered in the
// background meanwhile, so a down IdP does not delay the first request of
// the others.
func (v *Verifier) Run(ctx context.Context) error {
	cons, err := v.topo.Bind(ctx, v.js, schemas.ConsumerAuthn)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while starting: a clean stop
		}
		return err
	}
	if v.encrypt {
		kv, err := v.js.KeyValue(ctx, v.topo.BucketSubjectKeys())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("open subject keys bucket %s (has the bus been provisioned? run 'aigov bus provision'): %w", v.topo.BucketSubjectKeys(), err)
		}
		cache := personal.NewCache(kv, v.keyCache)
		v.sealer = personal.NewSealer(cache, v.personal)
		kctx, stop := context.WithCancel(ctx)
		keysDone := make(chan struct{})
		go func() {
			defer close(keysDone)
			// Rewatches by itself until kctx ends.
			_ = cache.Run(kctx, func(err error) {
				v.log.Warn().Err(err).Msg("subject key watch failed: keys uncached until it is back")
			})
		}()
		defer func() { stop(); <-keysDone }()
	}
	refresher := make(chan struct{})
	go func() {
		defer close(refresher)
		v.auth.Run(ctx)
	}()
	watcher := make(chan struct{})
	go func() {
		defer close(watcher)
		v.revs.Run(ctx)
	}()
	// No request is taken before the revocation set is loaded: a request
	// of a revoked session must never pass because the set was partial.
	select {
	case <-v.revs.Loaded():
		err = v.runner.Run(ctx, cons, v.Handle)
	case <-ctx.Done():
	}
	<-refresher // ends with ctx; a fetch in flight is bounded by the HTTP timeout
	<-watcher
	return err
}

// Ready is a readiness check: not ready until the revocation set has been
// loaded (Run takes no request before).
func (v *Verifier) Ready(context.Context) error {
	select {
	case <-v.revs.Loaded():
		return nil
	default:
		return errors.New("revocation set not loaded yet")
	}
}

// request is what Handle learned about one request message.
type request struct {
	id      string
	action  string
	source  string
	data    schemas.Request
	replyTo string
	// tenant is the tenant account the request came from ("" for the
	// aigov account), from the subject the server stored it under.
	tenant     string
	receivedAt time.Time
	started    time.Time
	tokenFP    string
	identity   *Identity
	// retryID is the Nats-Msg-Id of a retry: a request stored under
	// another de-duplication id than its request id ("" otherwise).
	retryID string
}

// Handle processes one request message. It returns nil once a verified
// event or a deny decision is durably published; any error is transient and
// the runner redelivers. Bad input never errors: it becomes a deny.
func (v *Verifier) Handle(ctx context.Context, m jetstream.Msg) error {
	r := request{started: v.now(), receivedAt: v.now()}
	var seq uint64
	if md, err := m.Metadata(); err == nil {
		r.receivedAt, seq = md.Timestamp, md.Sequence.Stream
	}
	h := m.Headers()
	if r.replyTo = h.Get(schemas.HeaderReplyTo); len(r.replyTo) > schemas.MaxReplySubject {
		// Never answered (schemas.ValidInbox): not carried on either.
		v.log.Warn().Int("bytes", len(r.replyTo)).Msg("reply subject too long: not carried")
		r.replyTo = ""
	}

	malformed := v.parse(m, seq, &r)
	if malformed == nil && v.encrypt {
		if k, ok := personal.ReservedField(r.data.Context); ok {
			// Only authn seals: a requester's "enc:v1:" value would be
			// opened by policy as if authn had sealed it.
			malformed = deny(schemas.CodeMalformedRequest, "context field %s starts with %q, which is reserved for the values aigov encrypts", quoteTrunc(k, 64), personal.CipherPrefix)
		}
	}
	if mid := h.Get(schemas.HeaderMsgID); mid != "" && mid != r.id && len(mid) <= schemas.MaxIDLength {
		// Stored under another de-duplication id than its request id: a
		// retry the SDK resent because the stream had dropped it as a
		// duplicate (see passRetry and denyRetry).
		r.retryID = mid
	}
	token, d := bearer(h.Values(schemas.HeaderAuthorization), v.auth.maxBytes)
	if token != "" {
		// Even a malformed request's deny names the token it carried, so
		// audit can tie it to the token's other uses.
		r.tokenFP = schemas.Fingerprint(token)
	}
	if malformed != nil {
		return v.deny(ctx, r, malformed)
	}
	if d != nil {
		return v.deny(ctx, r, d)
	}
	id, err := v.auth.Verify(ctx, token)
	if err != nil {
		if d, ok := IsDenial(err); ok {
			return v.deny(ctx, r, d)
		}
		return fmt.Errorf("verify token of request %s: %w", r.id, err)
	}
	r.identity = &id
	// One lookup for the session and the job lease the request names: the
	// set's freshness barrier is paid once.
	leaseKey := ""
	if lease, ok := schemas.LeaseIDOf(r.data.Context); ok {
		leaseKey = schemas.LeaseRevocationKey(lease)
	}
	recs, err := v.revs.Lookup(ctx, id.SessionKey, leaseKey)
	if err != nil {
		// Never "not revoked": the runner redelivers.
		return fmt.Errorf("revocation lookup of request %s: %w", r.id, err)
	}
	if recs[0] != nil {
		return v.deny(ctx, r, revocationDenial(recs[0]))
	}
	// Max age holds without the reaper: a session the token dates (its
	// auth_time, or the iat of a one-token session) is over at its max
	// age whether or not a reaper has written its revocation yet.
	if maxAge, over := v.limits.CheckToken(id.Principal, v.now()); over {
		return v.deny(ctx, r, deny(schemas.CodeSessionExpired, "%s", sessionlimits.MaxAgeReason(maxAge)))
	}
	if recs[1] != nil {
		return v.deny(ctx, r, leaseDenial(recs[1]))
	}
	if id.ReplayKey != "" {
		if d, err := v.replayed(ctx, id, r.id, seq); err != nil {
			return err
		} else if d != nil {
			return v.deny(ctx, r, d)
		}
	}
	if r.retryID != "" {
		return v.passRetry(ctx, r, r.retryID)
	}
	return v.pass(ctx, r)
}

// parse fills r from the message, or says why the request is malformed.
// r always ends with an id and an action to publish a deny under.
func (v *Verifier) parse(m jetstream.Msg, seq uint64, r *request) *Denial {
	tenant, subjAction, subjErr := v.subjects.RequestOf(m.Subject())
	r.tenant = tenant
	if subjErr == nil && validAction(subjAction) {
		r.action = subjAction
	}
	ev, err := schemas.ParseEvent(m.Data())
	if err == nil {
		r.id, r.source = ev.ID, ev.Source
		err = ev.DecodeData(&r.data)
	}
	if r.id == "" {
		// No usable event id: fall back to the publisher's de-duplication
		// id, else the stream position, so the deny is still auditable and
		// a redelivery derives the same decision id.
		if mid := m.Headers().Get(schemas.HeaderMsgID); mid != "" && len(mid) <= schemas.MaxIDLength {
			r.id = mid
		} else {
			r.id = "seq-" + strconv.FormatUint(seq, 10)
		}
	}
	if r.action == "" {
		if validAction(r.data.Action) {
			r.action = r.data.Action
		} else {
			r.action = InvalidAction
		}
	}
	switch {
	case err != nil:
		return deny(schemas.CodeMalformedRequest, "%s", reasonOf(err))
	case ev.Type != schemas.TypeRequest:
		return deny(schemas.CodeMalformedRequest, "event type %s is not %s", quoteTrunc(ev.Type, 80), schemas.TypeRequest)
	case subjErr != nil || !validAction(subjAction):
		return deny(schemas.CodeMalformedRequest, "subject does not name a valid action")
	case len(ev.Source) > schemas.MaxSourceLength:
		r.source = "" // not carried on
		return deny(schemas.CodeSourceTooLong, "the event source is %d bytes, more than %d", len(ev.Source), schemas.MaxSourceLength)
	}
	if err := r.data.Validate(); err != nil {
		return deny(schemas.CodeMalformedRequest, "%s", reasonOf(err))
	}
	if r.data.Action != subjAction {
		return deny(schemas.CodeMalformedRequest, "data.action %q differs from the subject's action %q", r.data.Action, subjAction)
	}
	// Only data larger than the limit can hold a context larger than it.
	if len(ev.Data) > schemas.MaxContextBytes {
		if n := contextBytes(r.data.Context); n > schemas.MaxContextBytes {
			r.data.Context = nil // the deny does not carry it on
			return deny(schemas.CodeContextTooLarge, "the request's context is %d bytes as JSON, more than %d", n, schemas.MaxContextBytes)
		}
	}
	return nil
}

// contextBytes is the size of a context encoded compactly and without
// HTML escaping, so that the limit counts what the requester wrote, not
// how an encoder chose to escape it (Go's writes '<' as six bytes).
func contextBytes(c map[string]any) int {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if enc.Encode(c) != nil {
		return 0
	}
	return buf.Len() - 1 // Encode's newline
}

// reasonOf bounds an error's text for use as a reason.
func reasonOf(err error) string {
	s := err.Error()
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// validAction reports whether a is a well-formed action name. It reuses
// Request.Validate so that the rule lives in one place (schemas).
func validAction(a string) bool {
	return schemas.Request{Action: a, Resource: schemas.Resource{Type: "Resource", ID: "-"}}.Validate() == nil
}

// revocationDenial returns the deny for a session key's revocation record.
func revocationDenial(rec *revocation.Record) *Denial {
	code, reason := rec.SessionDenial()
	return &Denial{Code: code, Reason: reason}
}

// replayed records the token's jti as used by this request, until the
// token expires. A jti already recorded for another request is a replay;
// recorded for this same request, it is a redelivery (a publish that
// failed after the record), which must pass again. "This same request" is
// the same stream message (its sequence), or the same request id within
// the duplicate window, where the verified event's id (derived from the
// request id) makes any second copy a duplicate the stream drops. Past the
// window a copy under the same id would be stored and decided again, so
// the request id alone, which the requester chooses, must not let a used
// jti pass.
func (v *Verifier) replayed(ctx context.Context, id Identity, requestID string, seq uint64) (*Denial, error) {
	kv, err := v.tokenIDs(ctx)
	if err != nil {
		return nil, err
	}
	// KeyTTL has a one-second floor; the token expired at least skew ago
	// when its key lapses, so the record outlives the token.
	ttl := max(time.Second, time.Until(id.Principal.ExpiresAt)+time.Second)
	seqText := strconv.FormatUint(seq, 10)
	_, err = kv.Create(ctx, id.ReplayKey, []byte(requestID+"\x00"+seqText), jetstream.KeyTTL(ttl))
	if err == nil {
		return nil, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return nil, fmt.Errorf("record token id of request %s: %w", requestID, err)
	}
	e, err := kv.Get(ctx, id.ReplayKey)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		// Lapsed between Create and Get: the token has expired meanwhile.
		return deny(schemas.CodeTokenReplayed, "the token's jti was already used"), nil
	case err != nil:
		return nil, fmt.Errorf("look up token id of request %s: %w", requestID, err)
	}
	storedID, storedSeq, _ := strings.Cut(string(e.Value()), "\x00")
	if storedID == requestID && ((seq != 0 && storedSeq == seqText) || v.now().Sub(e.Created()) < v.topo.DuplicateWindow) {
		return nil, nil
	}
	return deny(schemas.CodeTokenReplayed, "the token's jti was already used by another request"), nil
}

// tokenIDs opens the token id bucket once; a failure is retried by the
// next request.
func (v *Verifier) tokenIDs(ctx context.Context) (jetstream.KeyValue, error) {
	v.kvMu.Lock()
	defer v.kvMu.Unlock()
	if v.usedIDs == nil {
		kv, err := v.js.KeyValue(ctx, v.topo.BucketTokenIDs())
		if err != nil {
			return nil, fmt.Errorf("open token id bucket %s: %w", v.topo.BucketTokenIDs(), err)
		}
		v.usedIDs = kv
	}
	return v.usedIDs, nil
}

// pass publishes the verified event.
func (v *Verifier) pass(ctx context.Context, r request) error {
	now := v.now()
	data, err := v.verified(ctx, r, now)
	if err != nil {
		return err
	}
	id := schemas.DerivedID(r.id, schemas.KindVerified)
	if _, err := v.publish(ctx, v.subjects.Verified(r.action), id, schemas.TypeVerified, now, data); err != nil {
		return err
	}
	v.passed.Inc()
	v.log.Debug().Str("request_id", r.id).Str("action", r.action).Str("principal", r.identity.Principal.ID).
		Str("session_key", r.identity.SessionKey).Str("token_fingerprint", r.tokenFP).Msg("request verified")
	return nil
}

// verified is the verified event's data for r, its personal fields
// sealed under the subject's key.
func (v *Verifier) verified(ctx context.Context, r request, now time.Time) (schemas.Verified, error) {
	data := schemas.Verified{
		RequestID:        r.id,
		Source:           r.source,
		Request:          r.data,
		Principal:        r.identity.Principal,
		SessionKey:       r.identity.SessionKey,
		TokenFingerprint: r.tokenFP,
		ReplyTo:          r.replyTo,
		Tenant:           r.tenant,
		ReceivedAt:       r.receivedAt.UTC(),
		VerifiedAt:       now.UTC(),
	}
	if v.sealer != nil {
		c, err := v.sealer.Seal(ctx, &data.Principal, data.Request.Context)
		if err != nil {
			return schemas.Verified{}, fmt.Errorf("seal request %s: %w", r.id, err)
		}
		data.Request.Context = c
	}
	return data, nil
}

// deny publishes an authn deny decision, then replies to the requester.
func (v *Verifier) deny(ctx context.Context, r request, d *Denial) error {
	if r.retryID != "" {
		if done, err := v.denyRetry(ctx, r, d); done || err != nil {
			return err
		}
	}
	return v.denyAs(ctx, r, d, r.id)
}

// denyAs is deny for a decision under requestID, which is r.id but for
// a reused request id (passRetry).
func (v *Verifier) denyAs(ctx context.Context, r request, d *Denial, requestID string) error {
	r.id = requestID
	now := v.now()
	data := schemas.Decision{
		RequestID:        r.id,
		Action:           r.action,
		Resource:         r.data.Resource,
		Context:          r.data.Context,
		Decision:         schemas.Deny,
		Code:             d.Code,
		Reason:           d.Reason,
		Stage:            schemas.StageAuthn,
		TokenFingerprint: r.tokenFP,
		Timings: schemas.Timings{
			ReceivedAt:  r.receivedAt.UTC(),
			DecidedAt:   now.UTC(),
			AuthnMicros: now.Sub(r.started).Microseconds(),
			TotalMicros: max(0, now.Sub(r.receivedAt).Microseconds()),
		},
	}
	if r.identity != nil {
		p := r.identity.Principal
		data.Principal, data.SessionKey = &p, r.identity.SessionKey
	}
	if v.sealer != nil {
		if data.Principal != nil {
			c, err := v.sealer.Seal(ctx, data.Principal, data.Context)
			if err != nil {
				return fmt.Errorf("seal deny of request %s: %w", r.id, err)
			}
			data.Context = c
		} else {
			// No verified subject, no key to seal for: not kept at all.
			data.Context = v.sealer.Redact(data.Context)
		}
	}
	id := schemas.DerivedID(r.id, schemas.KindDecision)
	body, err := v.publish(ctx, v.subjects.Decision(r.action), id, schemas.TypeDecision, now, data)
	if err != nil {
		return err
	}
	v.outcomes.WithLabelValues(string(d.Code)).Inc()
	v.log.Info().Str("request_id", r.id).Str("action", r.action).Str("code", string(d.Code)).
		Str("reason", d.Reason).Str("token_fingerprint", r.tokenFP).Msg("request denied")
	v.reply(ctx, r, body)
	return nil
}

// publish sends one event to JetStream and waits for its ack. The msg id
// makes a redelivered request's event a duplicate the stream drops.
func (v *Verifier) publish(ctx context.Context, subject, id, typ string, at time.Time, data any) (*nats.Msg, error) {
	return v.pub.Publish(ctx, servicekit.Outgoing{NATSSubject: subject, ID: id, Type: typ, Time: at, Data: data})
}

// reply sends a decision to the requester's inbox, best effort: the
// decision itself is already durable.
func (v *Verifier) reply(ctx context.Context, r request, stored *nats.Msg) {
	v.pub.Reply(ctx, r.id, r.tenant, r.replyTo, stored)
}
