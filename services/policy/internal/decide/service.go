package decide

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cedar-policy/cedar-go"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/personal"
	"github.com/aigov/aigov/services/servicekit/revocation"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// EventSource is the CloudEvents source of every decision this service
// publishes.
const EventSource = "aigov/policy"

// PolicyDecisionKind derives a policy decision's event id from its request
// id (schemas.DerivedID); it differs from authn's deny kind, so the two
// never share a de-duplication id.
const PolicyDecisionKind = schemas.KindPolicyDecision

// Service consumes verified requests and publishes a decision for each.
type Service struct {
	js        jetstream.JetStream
	pub       *servicekit.Publisher
	topo      topology.Topology
	state     *state
	seed      *engine.Set
	seedEnts  cedar.EntityMap
	teams     []string
	ttl       time.Duration
	notify    Notifier
	sweep     time.Duration
	clock     func() time.Time
	kv        buckets
	log       zerolog.Logger
	runner    *servicekit.Runner
	revs      *revocation.Set
	limits    sessionlimits.Limits
	trust     *signing.Trust
	decisions *prometheus.CounterVec
	allowed   prometheus.Counter // decisions{allow, none}
	evalTime  prometheus.Histogram
	// keys opens the sealed personal fields of verified events (set by
	// Run, before any is taken); keyCache bounds it.
	keys     *personal.Cache
	keyCache int
}

// NewService checks the configuration and the dependencies and registers
// the metrics (on d.HTTP's registry). d.Signer signs every decision and
// governance event; d.Trust holds authn's public keys: a verified event
// not signed by authn is denied bad_event_signature, never decided.
func NewService(cfg Config, d servicekit.Deps) (*Service, error) {
	switch {
	case d.NC == nil:
		return nil, errors.New("decide: nil NATS connection")
	case d.JS == nil:
		return nil, errors.New("decide: nil JetStream context")
	case cfg.ApprovalTTL <= 0:
		return nil, errors.New("decide: approval TTL must be positive")
	case d.HTTP == nil:
		return nil, errors.New("decide: nil health and metrics server")
	case d.Topology.Subjects.Prefix == "":
		return nil, errors.New("decide: topology has no subject prefix")
	case d.Trust == nil:
		return nil, errors.New("decide: no trust file: verified events cannot be checked")
	}
	reg := d.HTTP.Registry
	pub, err := servicekit.NewPublisher(d.JS, d.NC, d.Signer, EventSource, d.Log)
	if err != nil {
		return nil, fmt.Errorf("decide: %w", err)
	}
	s := &Service{
		js:       d.JS,
		pub:      pub,
		topo:     d.Topology,
		seed:     cfg.Seed,
		seedEnts: cfg.SeedEntities,
		teams:    cfg.ApprovalTeams,
		ttl:      cfg.ApprovalTTL,
		sweep:    cfg.ExpirySweep,
		clock:    d.Clock,
		trust:    d.Trust,
		limits:   cfg.SessionLimits,
		keyCache: cfg.SubjectKeyCacheSize,
		log:      d.Log.With().Str("component", "decide").Logger(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aigov_policy_decisions_total",
			Help: "Decisions published by the policy service, by decision and deny code (none for an allow).",
		}, []string{"decision", "code"}),
		evalTime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "aigov_policy_evaluation_seconds",
			Help:    "Time to build the Cedar request and evaluate it.",
			Buckets: prometheus.ExponentialBuckets(0.000002, 2, 16),
		}),
	}
	for _, c := range []prometheus.Collector{s.decisions, s.evalTime} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register policy metrics: %w", err)
		}
	}
	s.allowed = s.decisions.WithLabelValues(schemas.Allow, "none")
	if s.clock == nil {
		s.clock = time.Now
	}
	if s.sweep <= 0 {
		s.sweep = DefaultExpirySweep
	}
	s.state = newState(s.log, s.clock)
	revsMax := cfg.RevocationsMax
	if revsMax == 0 {
		revsMax = DefaultRevocationsMax
	}
	if s.revs, err = revocation.New(revocation.Options{
		JS: d.JS, NC: d.NC, Bucket: d.Topology.BucketRevocations(), Max: revsMax,
		MaxSetting: "AIGOV_POLICY_REVOCATIONS_MAX", MetricPrefix: "aigov_policy", Log: s.log, Registry: reg,
	}); err != nil {
		return nil, fmt.Errorf("decide: %w", err)
	}
	s.runner = servicekit.NewRunner(schemas.ConsumerPolicy, d.Log, reg, cfg.Workers)
	if err := s.runner.Pipeline(pub.PipelineOptions(cfg.SigningLinger)); err != nil {
		return nil, fmt.Errorf("decide: %w", err)
	}
	return s, nil
}

// Run ensures the durable consumer and decides messages until ctx ends; it
// is a servicekit.Worker.
//
// Before consuming it seeds the policy and entity buckets when they are
// empty, starts the watchers that keep this replica's policy set, entity
// store and approvals current, and waits until the set and store loaded.
// Stopped while still starting, it returns nil like any servicekit.Worker
// whose ctx ended: the start-up calls' cancellation is not a failure.
func (s *Service) Run(ctx context.Context) (err error) {
	defer func() {
		if err != nil && ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			err = nil
		}
	}()
	b, err := openBuckets(ctx, s.js, s.topo)
	if err != nil {
		return err
	}
	s.kv = b
	s.keys = personal.NewCache(b.subjectKeys, s.keyCache)
	// An erasure overwrites the key's message in the store: it needs the
	// bucket's stream, not only the KV view of it.
	keyStream, err := s.js.Stream(ctx, "KV_"+s.topo.BucketSubjectKeys())
	if err != nil {
		return fmt.Errorf("open the stream of bucket %s: %w", s.topo.BucketSubjectKeys(), err)
	}
	s.keys.Store().WithStream(keyStream)
	if seeded, err := seedPolicy(ctx, b.policy, s.seed); err != nil {
		return err
	} else if seeded {
		s.log.Info().Str("policy_version", s.seed.Version()).Msg("policy bucket seeded")
		ch := schemas.PolicyChange{PolicyVersion: s.seed.Version(), By: EventSource, PolicyIDs: s.seed.PolicyIDs(), ShadowIDs: s.seed.ShadowIDs(), At: s.clock().UTC()}
		if err := s.publishEvent(ctx, s.topo.Subjects.Governance(schemas.KindPolicy, schemas.PolicyChanged),
			schemas.DerivedID("seed-"+engine.HexOf(s.seed.Version()), "policy.changed"), schemas.TypePolicyChanged, ch); err != nil {
			return err
		}
	}
	if n, err := seedEntities(ctx, b.entities, s.seedEnts); err != nil {
		return err
	} else if n > 0 {
		s.log.Info().Int("entities", n).Msg("entity bucket seeded")
	}

	wctx, stop := context.WithCancel(ctx)
	defer stop()
	policyReady, entitiesReady := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	wg.Go(func() { errs <- s.watchPolicy(wctx, policyReady) })
	wg.Go(func() { errs <- s.watchEntities(wctx, entitiesReady) })
	wg.Go(func() { errs <- s.watchApprovals(wctx) })
	wg.Go(func() { errs <- s.watchRequests(wctx) })
	wg.Go(func() { s.sweepExpired(wctx, s.sweep) })
	wg.Go(func() { s.revs.Run(wctx) }) // rewatches by itself; lookups fail closed meanwhile
	wg.Go(func() {                     // rewatches by itself; uncached meanwhile
		_ = s.keys.Run(wctx, func(err error) {
			s.log.Warn().Err(err).Msg("subject key watch failed: keys uncached until it is back")
		})
	})
	// Stop before waiting: the watchers run until wctx ends, also when Run
	// returns early with an error.
	defer func() { stop(); wg.Wait() }()

	// No request is taken before the revocation set is loaded either: the
	// recheck must never pass a request because the set was partial.
	for _, ready := range []<-chan struct{}{policyReady, entitiesReady, s.revs.Loaded()} {
		select {
		case <-ready:
		case err := <-errs:
			return err
		case <-ctx.Done():
			return nil
		}
	}
	if s.state.snapshot() == nil {
		return errors.New("decide: no active policy set: the policy bucket is empty and no seed was given")
	}
	cons, err := s.topo.Bind(ctx, s.js, schemas.ConsumerPolicy)
	if err != nil {
		return err
	}
	runErr := make(chan error, 1)
	go func() { runErr <- s.runner.Run(wctx, cons, s.Handle) }()
	select {
	case err := <-runErr:
		return err
	case err := <-errs:
		stop()
		<-runErr
		return err
	}
}

// Ready is a readiness check: not ready until the revocation set used by
// the decision-time recheck has loaded (Run takes no request before).
func (s *Service) Ready(context.Context) error {
	select {
	case <-s.revs.Loaded():
		return nil
	default:
		return errors.New("revocation set not loaded yet")
	}
}

// Handle decides one verified event. It returns nil only once the decision
// is stored in the decisions stream; the reply is best effort after that,
// since the stored decision is the record and the requester may retry.
func (s *Service) Handle(ctx context.Context, m jetstream.Msg) error {
	if _, err := s.trust.VerifyMsg(m.Subject(), m.Headers(), m.Data(), schemas.RoleAuthn); err != nil {
		return s.refuseForged(ctx, m, err)
	}
	v, err := decodeVerified(m.Data())
	if err != nil {
		// authn wrote this event, so retrying cannot fix it: it is a bug to
		// look at, and the runner logs it as terminated.
		return servicekit.Permanent(fmt.Errorf("decode verified event on %s: %w", m.Subject(), err))
	}
	subject, err := s.decisionSubject(v, m.Subject())
	if err != nil {
		return servicekit.Permanent(err)
	}

	snap := s.state.snapshot()
	if snap == nil {
		return errors.New("no policy set loaded yet")
	}
	var d schemas.Decision
	var replyHdr nats.Header // an allowed privacy.export's wrapped key, for the reply only
	if denied, err := s.recheck(ctx, v, snap); err != nil {
		return err
	} else if denied != nil {
		d = *denied
	} else if clear, denied, err := s.open(ctx, v, snap); err != nil {
		return err
	} else if denied != nil {
		d = *denied
	} else {
		start := time.Now()
		res := snap.eval.Evaluate(clear)
		s.evalTime.Observe(time.Since(start).Seconds())
		d = res.Decision
		// Cedar saw the clear values; what is published, stored and
		// answered keeps authn's sealed ones.
		sealed := v.Principal
		d.Principal, d.Context = &sealed, v.Request.Context
		// Cedar's error messages may quote a value (an ip() or decimal()
		// that does not parse): none of an opened one may leave in clear.
		scrubOpened(&d, v, clear)
		switch {
		case d.Allowed():
			if err := s.effects(ctx, v, &d, res, snap); err != nil {
				return err
			}
			if d.Allowed() && v.Request.Action == schemas.ActionPrivacyExport {
				if replyHdr, err = s.exportKey(ctx, v, &d); err != nil {
					return err
				}
			}
		case d.Code == schemas.CodeApprovalRequired && len(res.Need) > 0:
			handled := false
			if v.Request.Action == schemas.ActionPrivacyErase || v.Request.Action == schemas.ActionPrivacyExport {
				// Reviewers are never asked about an erasure or export
				// that names another person than its key id.
				why := eraseRequestError(v)
				if v.Request.Action == schemas.ActionPrivacyExport {
					why = exportRequestError(v)
				}
				if why != "" {
					d.Code, d.Reason, handled = schemas.CodeMalformedRequest, why, true
				}
			}
			if v.Request.Action == schemas.ActionPolicyUpdate {
				if handled, err = s.pushNeedsApproval(ctx, v, &d, snap); err != nil {
					return err
				}
			}
			if !handled {
				if err := s.requireApproval(ctx, v, &d, res); err != nil {
					return err
				}
			}
		}
	}

	// Not DerivedID(RequestID, "decision"): authn stores its denies under
	// that id, and the requester chooses the request id, so a request denied
	// by authn and a later one with the same id that policy allows would
	// share it, and the stream would drop the allow as a duplicate while
	// the reply still carried it: an allow with no audit record.
	eventID := schemas.DerivedID(v.RequestID, PolicyDecisionKind)
	resource := d.Resource.String()
	stored, err := s.pub.Publish(ctx, servicekit.Outgoing{
		NATSSubject: subject, ID: eventID, Type: schemas.TypeDecision,
		Subject: resource, Time: d.Timings.DecidedAt, Data: d,
	})
	if err != nil {
		return fmt.Errorf("decision for request %s: %w", v.RequestID, err)
	}
	s.pub.ReplyWith(ctx, v.RequestID, v.Tenant, v.ReplyTo, stored, replyHdr)

	if d.Code == "" && d.Decision == schemas.Allow {
		s.allowed.Inc() // the common case, without a label lookup
	} else {
		code := string(d.Code)
		if code == "" {
			code = "none"
		}
		s.decisions.WithLabelValues(d.Decision, code).Inc()
	}
	log := s.log.Debug()
	if d.Code == schemas.CodePolicyError {
		// A policy that errors is an operator's problem, not a requester's.
		log = s.log.Warn().Strs("policy_errors", d.PolicyErrors)
	}
	if log == nil {
		return nil // debug logging is off: build no fields
	}
	log.Str("request_id", v.RequestID).
		Str("event_id", eventID).
		Str("action", d.Action).
		Str("resource", resource).
		Str("principal_id", v.Principal.ID).
		Str("token_fingerprint", v.TokenFingerprint).
		Str("decision", d.Decision).
		Str("code", string(d.Code)).
		Strs("policy_ids", d.PolicyIDs).
		Str("policy_version", d.PolicyVersion).
		Msg("decision published")
	return nil
}

// decisionSubject is the request's action's decision subject; for a request
// whose action is malformed, the action token of the verified subject is
// used, which the broker already accepted as a subject.
func (s *Service) decisionSubject(v schemas.Verified, verifiedSubject string) (string, error) {
	if v.Request.Validate() == nil {
		return s.topo.Subjects.Decision(v.Request.Action), nil
	}
	action, err := s.topo.Subjects.ActionOf(schemas.KindVerified, verifiedSubject)
	if err != nil {
		return "", fmt.Errorf("no decision subject for request %s: %w", v.RequestID, err)
	}
	return s.topo.Subjects.Decision(action), nil
}

// decodeVerified parses a verified event. Numbers are kept as json.Number
// so that integers in the context convert to Cedar Longs exactly.
func decodeVerified(b []byte) (schemas.Verified, error) {
	ev, err := schemas.ParseEvent(b)
	if err != nil {
		return schemas.Verified{}, err
	}
	if ev.Type != schemas.TypeVerified {
		return schemas.Verified{}, fmt.Errorf("%w: type %q, want %q", schemas.ErrInvalidEvent, ev.Type, schemas.TypeVerified)
	}
	dec := json.NewDecoder(bytes.NewReader(ev.Data))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	var v schemas.Verified
	if err := dec.Decode(&v); err != nil {
		return schemas.Verified{}, fmt.Errorf("%w: verified data: %v", schemas.ErrInvalidEvent, err)
	}
	if v.RequestID == "" || len(v.RequestID) > schemas.MaxIDLength {
		return schemas.Verified{}, fmt.Errorf("%w: request_id must be 1 to %d characters", schemas.ErrInvalidEvent, schemas.MaxIDLength)
	}
	return v, nil
}

// open returns v with its sealed personal fields opened (the principal's
// email and name, sealed context fields) for Cedar to evaluate. A value
// that cannot be opened is a subject_erased deny, decided on nothing
// unreadable; a key store that cannot be reached is an error (redelivery).
func (s *Service) open(ctx context.Context, v schemas.Verified, snap *snapshot) (schemas.Verified, *schemas.Decision, error) {
	if !personal.Sealed(v.Principal, v.Request.Context) {
		return v, nil, nil
	}
	if s.keys == nil {
		return v, nil, errors.New("subject keys not open yet")
	}
	clear := v
	c, err := personal.Open(ctx, s.keys, &clear.Principal, v.Request.Context)
	switch {
	case errors.Is(err, personal.ErrErased), errors.Is(err, personal.ErrWrongSubject), errors.Is(err, personal.ErrUnreadable):
		p := v.Principal
		return v, &schemas.Decision{
			RequestID: v.RequestID, Action: v.Request.Action, Resource: v.Request.Resource, Context: v.Request.Context,
			Principal: &p, Decision: schemas.Deny, Code: schemas.CodeSubjectErased,
			Reason: "the request's personal fields cannot be opened: " + err.Error(), Stage: schemas.StagePolicy,
			PolicyVersion: snap.eval.Set().Version(), SessionKey: v.SessionKey, TokenFingerprint: v.TokenFingerprint,
			Timings: engine.Timings(v, s.clock()),
		}, nil
	case err != nil:
		return v, nil, fmt.Errorf("open personal fields of request %s: %w", v.RequestID, err)
	}
	clear.Request.Context = c
	return clear, nil, nil
}

// scrubOpened replaces, in what Cedar wrote of the decision (policy
// errors, shadow errors, the reason), every value policy opened for it —
// the clear counterpart of a sealed field of v — with "[sealed]".
func scrubOpened(d *schemas.Decision, v, clear schemas.Verified) {
	var opened []string
	add := func(sealed, open string) {
		if open != "" && open != sealed {
			opened = append(opened, open)
		}
	}
	add(v.Principal.Email, clear.Principal.Email)
	add(v.Principal.Name, clear.Principal.Name)
	for k, sv := range v.Request.Context {
		if ss, ok := sv.(string); ok {
			if cs, ok := clear.Request.Context[k].(string); ok {
				add(ss, cs)
			}
		}
	}
	if len(opened) == 0 {
		return
	}
	scrub := func(s string) string {
		for _, o := range opened {
			s = strings.ReplaceAll(s, o, "[sealed]")
		}
		return s
	}
	for i := range d.PolicyErrors {
		d.PolicyErrors[i] = scrub(d.PolicyErrors[i])
	}
	if d.Shadow != nil {
		for i := range d.Shadow.Errors {
			d.Shadow.Errors[i] = scrub(d.Shadow.Errors[i])
		}
	}
	d.Reason = scrub(d.Reason)
}
