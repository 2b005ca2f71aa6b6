// Package killswitch ends aigov sessions and job leases on purpose, and
// lists the live ones. The reaper's back-channel logout endpoint and the
// `aigov sessions` / `aigov leases` commands use it; the reaper's own
// expiry uses EndLease for leases, so every end takes the same path.
//
// An end is written in an order where a crash at any step is repaired by
// running it again: the revocation (or lease tombstone) first, so authn
// denies at once; then the event, whose id is derived from the session or
// lease so a repeat is stored once; then the live record is deleted.
package killswitch

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Source is the CloudEvents source of the events published here; the
// reaper uses the same one, since they are one logical producer.
const Source = "aigov/reaper"

// MaxList bounds how many records one listing reads.
const MaxList = 100000

// watchTimeout bounds draining a stopped watcher.
const watchTimeout = 5 * time.Second

// ErrNoSelector is returned by Revoke when the selector names nothing.
var ErrNoSelector = errors.New("killswitch: revoke needs a session key, a subject or an issuer")

// Session is a live session as the reaper keeps it: JSON under its session
// key in the sessions bucket, written by the reaper, read by the kill switch.
// It is deleted when the session ends.
type Session struct {
	// SessionKey is schemas.SessionKey of the session, also the KV key.
	SessionKey string `json:"session_key"`
	// Issuer and Subject identify the principal at its IdP.
	Issuer  string `json:"issuer"`
	Subject string `json:"subject"`
	// PrincipalID is the issuer-scoped principal id (schemas.PrincipalID).
	PrincipalID string `json:"principal_id"`
	// PrincipalType and Groups select the session's limits (the reaper's limits).
	PrincipalType string   `json:"principal_type,omitempty"`
	Groups        []string `json:"groups,omitempty"`
	// SessionID is the IdP's `sid`, when it sends one.
	SessionID string `json:"sid,omitempty"`
	// AuthTime is the token's auth_time, when it has one; max age is
	// measured from it.
	AuthTime *time.Time `json:"auth_time,omitempty"`
	// IssuedAt is the token's iat when the session is that one token's
	// (no sid, no auth_time: schemas.SessionKey); max age is measured from
	// it then, as authn and policy measure it.
	IssuedAt *time.Time `json:"iat,omitempty"`
	// FirstSeen is when the reaper first saw the session; max age is
	// measured from it when the token does not tell the session's start.
	FirstSeen time.Time `json:"first_seen"`
	// LastSeen is when the reaper last saw a request of the session; the
	// idle timeout is measured from it.
	LastSeen time.Time `json:"last_seen"`
	// LastTokenFingerprint is schemas.Fingerprint of the latest token.
	LastTokenFingerprint string `json:"last_token_fingerprint"`
	// LastRequestID is the latest request counted, so that a redelivered
	// verified event is not counted twice.
	LastRequestID string `json:"last_request_id"`
	// TokenCount is how many verified requests of this session were
	// written; requests coalesced by the reaper's touch granularity are not
	// counted. A redelivered event is not counted again when it follows its
	// first delivery directly (LastRequestID), which covers a crash between
	// the write and the ack.
	TokenCount int64 `json:"token_count"`
	// TokenFingerprints are the distinct tokens seen, newest last, at most
	// maxTokens: the session's issuance and refresh footprint.
	TokenFingerprints []string `json:"token_fingerprints,omitempty"`
}

// Start is when the session began: its auth_time, else the iat of its one
// token, else when the reaper first saw it.
func (r Session) Start() time.Time {
	switch {
	case r.AuthTime != nil:
		return *r.AuthTime
	case r.IssuedAt != nil:
		return *r.IssuedAt
	default:
		return r.FirstSeen
	}
}

// Expired reports whether the session is over at now, and why: max age
// (schemas.ReasonMaxAge) wins over the idle timeout (schemas.ReasonIdle).
func (r Session) Expired(now time.Time, maxAge, idle time.Duration) (string, bool) {
	switch {
	case sessionlimits.MaxAgeExceeded(r.Start(), now, maxAge):
		return schemas.ReasonMaxAge, true
	case now.Sub(r.LastSeen) >= idle:
		return schemas.ReasonIdle, true
	default:
		return "", false
	}
}

// Event is the session event describing the session.
func (r Session) Event(reason, requestID string) schemas.SessionEvent {
	return schemas.SessionEvent{
		SessionKey:       r.SessionKey,
		Issuer:           r.Issuer,
		Subject:          r.Subject,
		PrincipalID:      r.PrincipalID,
		SessionID:        r.SessionID,
		AuthTime:         r.AuthTime,
		FirstSeen:        r.FirstSeen,
		LastSeen:         r.LastSeen,
		Reason:           reason,
		RequestID:        requestID,
		TokenFingerprint: r.LastTokenFingerprint,
	}
}

// Lease is a live job lease: the JSON value under its id in the leases
// bucket. The reaper writes it; it is deleted when the lease ends.
type Lease struct {
	LeaseID     string           `json:"lease_id"`
	SessionKey  string           `json:"session_key"`
	RequestID   string           `json:"request_id"`
	PrincipalID string           `json:"principal_id"`
	Issuer      string           `json:"issuer"`
	Subject     string           `json:"subject"`
	Resource    schemas.Resource `json:"resource"`
	StartedAt   time.Time        `json:"started_at"`
	// Deadline is when the lease ends unless a heartbeat moves it.
	Deadline time.Time `json:"deadline"`
	// MaxDeadline is the latest a heartbeat may move Deadline to.
	MaxDeadline time.Time `json:"max_deadline"`
	// Heartbeats counts the extensions; LastHeartbeat is the request id of
	// the latest, so a redelivered heartbeat is not counted twice.
	Heartbeats    int64  `json:"heartbeats"`
	LastHeartbeat string `json:"last_heartbeat,omitempty"`
}

// Selector names the sessions to revoke. SessionKey alone names one;
// Issuer with SessionID names the IdP session (as a logout token's sid
// does); Subject names every live session of that subject (at Issuer, when
// set); Issuer alone names every live session of the issuer.
type Selector struct {
	SessionKey string
	Issuer     string
	Subject    string
	SessionID  string
}

// Switch reads and ends sessions and leases.
type Switch struct {
	js          jetstream.JetStream
	subjects    schemas.Subjects
	sessions    jetstream.KeyValue
	revocations jetstream.KeyValue
	leases      jetstream.KeyValue
	signer      *signing.Signer
	now         func() time.Time
}

// New opens the buckets, which must exist (the provisioning step made
// them). Session events are signed by signer (the reaper's key, or the
// operator's for the CLI); nil publishes them unsigned, which the audit
// flags.
func New(ctx context.Context, js jetstream.JetStream, topo topology.Topology, signer *signing.Signer, now func() time.Time) (*Switch, error) {
	if js == nil {
		return nil, errors.New("killswitch: nil jetstream")
	}
	if now == nil {
		return nil, errors.New("killswitch: nil clock")
	}
	s := &Switch{js: js, subjects: topo.Subjects, signer: signer, now: now}
	for _, b := range []struct {
		name string
		kv   *jetstream.KeyValue
	}{{topo.BucketSessions(), &s.sessions}, {topo.BucketRevocations(), &s.revocations}, {topo.BucketLeases(), &s.leases}} {
		kv, err := js.KeyValue(ctx, b.name)
		if err != nil {
			return nil, fmt.Errorf("open bucket %s: %w", b.name, err)
		}
		*b.kv = kv
	}
	return s, nil
}

// Sessions lists up to limit live sessions (at most MaxList).
func (s *Switch) Sessions(ctx context.Context, limit int) ([]Session, error) {
	var out []Session
	err := list(ctx, s.sessions, limit, func(key string, b []byte) {
		var r Session
		if json.Unmarshal(b, &r) == nil && r.SessionKey == key {
			out = append(out, r)
		}
	})
	return out, err
}

// Leases lists up to limit live job leases (at most MaxList).
func (s *Switch) Leases(ctx context.Context, limit int) ([]Lease, error) {
	var out []Lease
	err := list(ctx, s.leases, limit, func(key string, b []byte) {
		var l Lease
		if json.Unmarshal(b, &l) == nil && schemas.LeaseRevocationKey(l.LeaseID) == key {
			out = append(out, l)
		}
	})
	return out, err
}

// list feeds fn every live key's value, up to limit.
func list(ctx context.Context, kv jetstream.KeyValue, limit int, fn func(key string, value []byte)) error {
	if limit <= 0 || limit > MaxList {
		limit = MaxList
	}
	w, err := kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return fmt.Errorf("list %s: %w", kv.Bucket(), err)
	}
	defer StopWatcher(w)
	for n := 0; n < limit; {
		select {
		case <-ctx.Done():
			return fmt.Errorf("list %s: %w", kv.Bucket(), ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("list %s: watch closed early", kv.Bucket())
			}
			if e == nil {
				return nil
			}
			fn(e.Key(), e.Value())
			n++
		}
	}
	return nil
}

// StopWatcher stops a KV watcher and drains it (for at most watchTimeout),
// so its delivery goroutine, which blocks on a full channel, can end.
func StopWatcher(w jetstream.KeyWatcher) {
	_ = w.Stop()
	t := time.NewTimer(watchTimeout)
	defer t.Stop()
	for {
		select {
		case _, ok := <-w.Updates():
			if !ok {
				return
			}
		case <-t.C:
			return
		}
	}
}

// Result says what Revoke did.
type Result struct {
	// Revoked are the session keys this call revoked (or finished
	// revoking after an interrupted earlier call).
	Revoked []string
	// AlreadyEnded are matching sessions that had already ended otherwise
	// (an expiry), left as they were.
	AlreadyEnded []string
	// Leases are the job leases ended because their session was.
	Leases []string
}

// Revoke ends the sessions sel names: each gets a session_revoked
// revocation (authn denies its next request), a session.revoked event
// saying by whom and why, and its job leases end. by and reason must not
// be empty.
func (s *Switch) Revoke(ctx context.Context, sel Selector, by, reason string) (Result, error) {
	var res Result
	if by == "" || reason == "" {
		return res, errors.New("killswitch: revoke needs who (by) and why (reason)")
	}
	targets, err := s.match(ctx, sel)
	if err != nil {
		return res, err
	}
	for _, t := range targets {
		ended, err := s.revokeOne(ctx, t, by, reason)
		if err != nil {
			return res, err
		}
		if ended {
			res.Revoked = append(res.Revoked, t.key)
		} else {
			res.AlreadyEnded = append(res.AlreadyEnded, t.key)
		}
	}
	if len(targets) == 0 {
		return res, nil
	}
	keys := make(map[string]bool, len(targets))
	for _, t := range targets {
		keys[t.key] = true
	}
	leases, err := s.Leases(ctx, MaxList)
	if err != nil {
		return res, err
	}
	for _, l := range leases {
		if !keys[l.SessionKey] {
			continue
		}
		if _, err := s.EndLease(ctx, l, schemas.ReasonSessionEnded, s.now()); err != nil {
			return res, err
		}
		res.Leases = append(res.Leases, l.LeaseID)
	}
	return res, nil
}

// target is one session to revoke; rec is nil when it has no live record.
type target struct {
	key      string
	rec      *Session
	revision uint64
}

func (s *Switch) match(ctx context.Context, sel Selector) ([]target, error) {
	key := sel.SessionKey
	if key == "" && sel.Issuer != "" && sel.SessionID != "" {
		key = schemas.SessionKey(schemas.Principal{Issuer: sel.Issuer, SessionID: sel.SessionID})
	}
	if key != "" {
		e, err := s.sessions.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			// Revoke even a session not seen yet (a logout can arrive
			// before its first request): its later requests are denied.
			return []target{{key: key}}, nil
		case errors.Is(err, jetstream.ErrInvalidKey):
			return nil, fmt.Errorf("killswitch: %q is not a session key", key)
		case err != nil:
			return nil, fmt.Errorf("load session %s: %w", key, err)
		}
		var r Session
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			return []target{{key: key}}, nil
		}
		return []target{{key: key, rec: &r, revision: e.Revision()}}, nil
	}
	if sel.Subject == "" && sel.Issuer == "" {
		return nil, ErrNoSelector
	}
	all, err := s.Sessions(ctx, MaxList)
	if err != nil {
		return nil, err
	}
	var out []target
	for i := range all {
		r := all[i]
		if sel.Issuer != "" && r.Issuer != sel.Issuer {
			continue
		}
		if sel.Subject != "" && r.Subject != sel.Subject {
			continue
		}
		out = append(out, target{key: r.SessionKey, rec: &r})
	}
	return out, nil
}

// revokeOne ends one session. It reports false when the session had
// already ended by expiry (whose event announced it).
func (s *Switch) revokeOne(ctx context.Context, t target, by, reason string) (bool, error) {
	now := s.now().UTC()
	b, err := json.Marshal(schemas.Revocation{SessionKey: t.key, Code: schemas.CodeSessionRevoked, Reason: reason, At: now, By: by})
	if err != nil {
		return false, fmt.Errorf("encode revocation of session %s: %w", t.key, err)
	}
	if _, err := s.revocations.Create(ctx, t.key, b); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return false, fmt.Errorf("revoke session %s: %w", t.key, err)
		}
		e, err := s.revocations.Get(ctx, t.key)
		if err != nil {
			return false, fmt.Errorf("load revocation of session %s: %w", t.key, err)
		}
		var existing schemas.Revocation
		if json.Unmarshal(e.Value(), &existing) == nil && existing.Code == schemas.CodeSessionExpired {
			return false, nil
		}
		// Revoked before: finish what that call may not have (event,
		// record); both steps are idempotent.
	}
	if t.rec != nil {
		ev := t.rec.Event(reason, "")
		ev.SessionKey, ev.By = t.key, by
		if err := Publish(ctx, s.js, s.signer, s.subjects, schemas.SessionRevoked, schemas.TypeSessionRevoked, schemas.DerivedID(t.key, "revoked"), ev, now); err != nil {
			return false, err
		}
		if err := s.sessions.Delete(ctx, t.key); err != nil {
			return false, fmt.Errorf("delete session %s: %w", t.key, err)
		}
	}
	return true, nil
}

// EndLease ends a job lease: a lease_expired tombstone under
// schemas.LeaseRevocationKey (authn denies requests naming the lease), the
// aigov.session.lease_expired event, then the live record is deleted. It
// reports false when the tombstone already existed (another replica, or an
// interrupted earlier call, ended it first).
func (s *Switch) EndLease(ctx context.Context, l Lease, reason string, now time.Time) (bool, error) {
	key := schemas.LeaseRevocationKey(l.LeaseID)
	now = now.UTC()
	b, err := json.Marshal(schemas.Revocation{SessionKey: key, Code: schemas.CodeLeaseExpired, Reason: "job lease ended: " + reason, At: now, By: schemas.ByReaper})
	if err != nil {
		return false, fmt.Errorf("encode tombstone of lease %s: %w", l.LeaseID, err)
	}
	mine := true
	if _, err := s.revocations.Create(ctx, key, b); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return false, fmt.Errorf("end lease %s: %w", l.LeaseID, err)
		}
		mine = false
	}
	// Published even when the tombstone existed: the call that wrote it may
	// have crashed before its event. The derived id makes a concurrent
	// replica's publish of the same end a duplicate JetStream stores once.
	deadline := l.Deadline.UTC()
	ev := schemas.SessionEvent{
		SessionKey: l.SessionKey, Issuer: l.Issuer, Subject: l.Subject, PrincipalID: l.PrincipalID,
		FirstSeen: l.StartedAt, LastSeen: now, Reason: reason, RequestID: l.RequestID,
		LeaseID: l.LeaseID, LeaseDeadline: &deadline,
	}
	if err := Publish(ctx, s.js, s.signer, s.subjects, schemas.SessionLeaseExpired, schemas.TypeLeaseExpired, schemas.DerivedID(l.LeaseID, "lease_expired"), ev, now); err != nil {
		return false, err
	}
	if err := s.leases.Delete(ctx, key); err != nil {
		return false, fmt.Errorf("delete lease %s: %w", l.LeaseID, err)
	}
	return mine, nil
}

// Publish signs and sends one session event with the switch's key.
func (s *Switch) Publish(ctx context.Context, name, typ, id string, data schemas.SessionEvent, at time.Time) error {
	return Publish(ctx, s.js, s.signer, s.subjects, name, typ, id, data, at)
}

// Publish signs and sends one session event with its id as Nats-Msg-Id and
// waits for JetStream's ack; a repeat within the duplicate window is
// stored once.
func Publish(ctx context.Context, js jetstream.JetStream, signer *signing.Signer, subjects schemas.Subjects, name, typ, id string, data schemas.SessionEvent, at time.Time) error {
	ev, err := schemas.NewEvent(id, Source, typ, at, data)
	if err != nil {
		return err
	}
	ev.Subject = data.SessionKey
	_, _, err = servicekit.PublishEvent(ctx, js, signer, subjects.Session(name), ev)
	return err
}
