// Package leases bounds long-running AI jobs. An allowed job.start
// decision carries a lease (schemas.LeaseFor); the reaper reads decisions,
// records the lease, moves its deadline on each allowed job.heartbeat up to
// a maximum, and ends it when a heartbeat is missed or the maximum is
// reached: a tombstone authn checks (code lease_expired) and an
// aigov.session.lease_expired event platforms subscribe to.
package leases

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/reaper/internal/kvttl"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// maxUpdateAttempts bounds compare-and-set retries of one heartbeat.
const maxUpdateAttempts = 8

// MinHeartbeatTTL is the least AIGOV_LEASE_HEARTBEAT_TTL, from the
// environment or in code: the server's per-message TTL counts in seconds.
const MinHeartbeatTTL = time.Second

// passTimeout bounds one expiry pass.
const passTimeout = time.Minute

// Config bounds leases.
type Config struct {
	// HeartbeatTTL is how far a heartbeat moves the deadline
	// (AIGOV_LEASE_HEARTBEAT_TTL).
	HeartbeatTTL time.Duration
	// MaxDuration bounds a lease from its start whatever the heartbeats
	// (AIGOV_LEASE_MAX_DURATION).
	MaxDuration time.Duration
	// Interval is how often leases are checked (AIGOV_REAPER_INTERVAL).
	Interval time.Duration
	// TTLGrace is added to a lease's maximum for its record's per-key TTL.
	TTLGrace time.Duration
	// MaxScan bounds the leases examined per pass.
	MaxScan int
}

// Deps are what Leases works with; every field is required.
type Deps struct {
	JS       jetstream.JetStream
	Topology topology.Topology
	Switch   *killswitch.Switch
	Log      zerolog.Logger
	Now      func() time.Time
}

// Leases records, extends and ends job leases. Several replicas may run:
// writes are compare-and-set, ends are gated by the tombstone's creation
// and events de-duplicated by derived ids.
type Leases struct {
	cfg      Config
	js       jetstream.JetStream
	subjects schemas.Subjects
	leases   jetstream.KeyValue
	revs     jetstream.KeyValue
	sw       *killswitch.Switch
	log      zerolog.Logger
	now      func() time.Time
}

// New opens the leases and revocation buckets.
func New(ctx context.Context, cfg Config, d Deps) (*Leases, error) {
	switch {
	case d.JS == nil:
		return nil, errors.New("leases: nil jetstream")
	case d.Switch == nil:
		return nil, errors.New("leases: nil kill switch")
	case d.Now == nil:
		return nil, errors.New("leases: nil clock")
	case cfg.HeartbeatTTL < MinHeartbeatTTL || cfg.MaxDuration < cfg.HeartbeatTTL || cfg.Interval <= 0 || cfg.TTLGrace < time.Second || cfg.MaxScan < 1:
		return nil, fmt.Errorf("leases: invalid config %+v", cfg)
	}
	kv, err := d.JS.KeyValue(ctx, d.Topology.BucketLeases())
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", d.Topology.BucketLeases(), err)
	}
	revs, err := d.JS.KeyValue(ctx, d.Topology.BucketRevocations())
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", d.Topology.BucketRevocations(), err)
	}
	return &Leases{cfg: cfg, js: d.JS, subjects: d.Topology.Subjects, leases: kv, revs: revs, sw: d.Switch,
		log: d.Log.With().Str("component", "leases").Logger(), now: d.Now}, nil
}

// Handle is the servicekit.Handler of the reaper-leases consumer on the
// decisions stream. Only allowed job.start and job.heartbeat decisions
// matter; everything else is acked untouched.
func (l *Leases) Handle(ctx context.Context, m jetstream.Msg) error {
	ev, err := schemas.ParseEvent(m.Data())
	if err != nil {
		return servicekit.Permanent(fmt.Errorf("decode decision: %w", err))
	}
	if ev.Type != schemas.TypeDecision {
		return servicekit.Permanent(fmt.Errorf("decode decision %s: type %q", ev.ID, ev.Type))
	}
	var d schemas.Decision
	if err := ev.DecodeData(&d); err != nil {
		return servicekit.Permanent(fmt.Errorf("decode decision %s: %w", ev.ID, err))
	}
	if !d.Allowed() || d.Principal == nil {
		return nil
	}
	switch {
	case d.Action == schemas.ActionJobStart && d.Lease != nil:
		return l.start(ctx, d)
	case d.Action == schemas.ActionJobHeartbeat:
		return l.heartbeat(ctx, d)
	}
	return nil
}

// start records the lease an allowed job.start granted. Its deadline is
// the decision's, so the requester and the reaper agree; its maximum is
// MaxDuration from the decision.
func (l *Leases) start(ctx context.Context, d schemas.Decision) error {
	key := schemas.LeaseRevocationKey(d.Lease.ID)
	if ended, err := l.ended(ctx, key); err != nil || ended {
		return err // a redelivered start of a lease already over
	}
	decided := d.Timings.DecidedAt
	if decided.IsZero() {
		decided = l.now()
	}
	maxDeadline := decided.Add(l.cfg.MaxDuration).UTC()
	rec := killswitch.Lease{
		LeaseID: d.Lease.ID, SessionKey: d.SessionKey, RequestID: d.RequestID, PrincipalID: d.Principal.ID,
		Issuer: d.Principal.Issuer, Subject: d.Principal.Subject, Resource: d.Resource,
		StartedAt: decided.UTC(), Deadline: minTime(d.Lease.Deadline.UTC(), maxDeadline), MaxDeadline: maxDeadline,
	}
	now := l.now().UTC()
	deadline := rec.Deadline
	ev := schemas.SessionEvent{
		SessionKey: rec.SessionKey, Issuer: rec.Issuer, Subject: rec.Subject, PrincipalID: rec.PrincipalID,
		FirstSeen: rec.StartedAt, LastSeen: rec.StartedAt, RequestID: rec.RequestID, LeaseID: rec.LeaseID, LeaseDeadline: &deadline,
	}
	if err := l.sw.Publish(ctx, schemas.SessionLeaseStarted, schemas.TypeLeaseStarted, schemas.DerivedID(rec.LeaseID, "lease_started"), ev, now); err != nil {
		return err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode lease %s: %w", rec.LeaseID, err)
	}
	_, err = l.leases.Create(ctx, key, b, jetstream.KeyTTL(kvttl.Clamp(maxDeadline.Sub(now)+l.cfg.TTLGrace)))
	if err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("create lease %s: %w", rec.LeaseID, err)
	}
	l.log.Info().Str("lease_id", rec.LeaseID).Str("session_key", rec.SessionKey).Str("principal_id", rec.PrincipalID).
		Time("deadline", rec.Deadline).Time("max_deadline", maxDeadline).Msg("job lease started")
	return nil
}

// heartbeat moves a live lease's deadline to now+HeartbeatTTL, never past
// its maximum. A heartbeat for an unknown or ended lease, from another
// principal, or after the deadline changes nothing: the lease stays bound
// to its holder and an end is final.
func (l *Leases) heartbeat(ctx context.Context, d schemas.Decision) error {
	id, ok := schemas.LeaseIDOf(d.Context)
	if !ok {
		l.log.Warn().Str("request_id", d.RequestID).Msg("heartbeat names no lease")
		return nil
	}
	key := schemas.LeaseRevocationKey(id)
	for range maxUpdateAttempts {
		e, err := l.leases.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			l.log.Warn().Str("lease_id", id).Str("request_id", d.RequestID).Msg("heartbeat for an unknown or ended lease")
			return nil
		}
		if err != nil {
			return fmt.Errorf("load lease %s: %w", id, err)
		}
		var rec killswitch.Lease
		if err := json.Unmarshal(e.Value(), &rec); err != nil {
			return servicekit.Permanent(fmt.Errorf("decode lease %s: %w", id, err))
		}
		now := l.now().UTC()
		switch {
		case rec.PrincipalID != d.Principal.ID:
			l.log.Warn().Str("lease_id", id).Str("principal_id", d.Principal.ID).Msg("heartbeat by another principal ignored")
			return nil
		case rec.LastHeartbeat == d.RequestID:
			return nil // redelivered
		case !now.Before(rec.Deadline):
			return nil // missed: the next pass ends it
		}
		rec.Deadline = minTime(now.Add(l.cfg.HeartbeatTTL), rec.MaxDeadline)
		rec.Heartbeats++
		rec.LastHeartbeat = d.RequestID
		b, err := json.Marshal(rec)
		if err != nil {
			return fmt.Errorf("encode lease %s: %w", id, err)
		}
		_, err = kvttl.Update(ctx, l.js, l.leases, key, b, e.Revision(), rec.MaxDeadline.Sub(now)+l.cfg.TTLGrace)
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			continue
		}
		if err != nil {
			return err
		}
		l.log.Debug().Str("lease_id", id).Time("deadline", rec.Deadline).Msg("job lease extended")
		return nil
	}
	return fmt.Errorf("extend lease %s: still conflicting after %d attempts", id, maxUpdateAttempts)
}

func (l *Leases) ended(ctx context.Context, key string) (bool, error) {
	_, err := l.revs.Get(ctx, key)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("check tombstone %s: %w", key, err)
	}
}

// SweepResult summarises one pass.
type SweepResult struct {
	// Scanned, Ended and Failed count leases examined, ended, and whose
	// end failed (retried next pass).
	Scanned, Ended, Failed int
}

// Sweep ends every live lease past its deadline: reason max_duration when
// the deadline was the maximum, else missed_heartbeat.
func (l *Leases) Sweep(ctx context.Context) (SweepResult, error) {
	var res SweepResult
	now := l.now().UTC()
	all, err := l.sw.Leases(ctx, l.cfg.MaxScan)
	if err != nil {
		return res, err
	}
	for _, rec := range all {
		res.Scanned++
		if now.Before(rec.Deadline) {
			continue
		}
		// Reload: another replica may have ended it, or a heartbeat moved it.
		e, err := l.leases.Get(ctx, schemas.LeaseRevocationKey(rec.LeaseID))
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err == nil {
			err = json.Unmarshal(e.Value(), &rec)
		}
		if err != nil {
			res.Failed++
			l.log.Error().Err(err).Str("lease_id", rec.LeaseID).Msg("lease not ended; retrying next pass")
			continue
		}
		if now.Before(rec.Deadline) {
			continue
		}
		reason := schemas.ReasonMissedHeartbeat
		if !rec.Deadline.Before(rec.MaxDeadline) {
			reason = schemas.ReasonMaxDuration
		}
		mine, err := l.sw.EndLease(ctx, rec, reason, now)
		if err != nil {
			res.Failed++
			l.log.Error().Err(err).Str("lease_id", rec.LeaseID).Msg("lease not ended; retrying next pass")
			continue
		}
		if mine {
			res.Ended++
			l.log.Info().Str("lease_id", rec.LeaseID).Str("session_key", rec.SessionKey).Str("reason", reason).Msg("job lease ended")
		}
	}
	return res, nil
}

// Run sweeps every Interval until ctx ends (a servicekit.Worker).
func (l *Leases) Run(ctx context.Context) error {
	tick := time.NewTicker(l.cfg.Interval)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, passTimeout)
		_, err := l.Sweep(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			l.log.Error().Err(err).Msg("lease pass failed")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

// Defaults of the lease settings.
const (
	DefaultHeartbeatTTL = schemas.DefaultLeaseTTL
	DefaultMaxDuration  = 24 * time.Hour
)

// LoadConfig reads the lease variables; interval, grace and scan bound are
// the session reaper's.
func LoadConfig(e *servicekit.Env, interval, grace time.Duration, maxScan int) Config {
	c := Config{
		HeartbeatTTL: e.Duration("AIGOV_LEASE_HEARTBEAT_TTL"),
		MaxDuration:  e.Duration("AIGOV_LEASE_MAX_DURATION"),
		Interval:     interval, TTLGrace: grace, MaxScan: maxScan,
	}
	if c.MaxDuration < c.HeartbeatTTL {
		e.Fail("AIGOV_LEASE_MAX_DURATION=%s must be at least AIGOV_LEASE_HEARTBEAT_TTL=%s", c.MaxDuration, c.HeartbeatTTL)
	}
	return c
}
