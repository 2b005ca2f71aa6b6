// Package revocation is an in-memory view of the revocation bucket
// (session revocations and lease tombstones), kept current by a KV watcher
// and guarded by a freshness barrier, so a service can check every message
// against the bucket at the cost of a map read. authn checks it before a
// request is verified; policy checks it again at decision time, so a
// request queued before a revocation is never allowed after it.
package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
)

// Record is one key of the revocation bucket, as a lookup returns it.
type Record struct {
	// Code and Reason are from the schemas.Revocation stored; Readable is
	// false when the value did not decode (it still revokes).
	Code     schemas.Code
	Reason   string
	Readable bool
	// Created is when the key was written.
	Created time.Time
}

// SessionDenial is the deny code and reason of a request whose session key
// has rec: session_expired when the reaper ended it on its max age or idle
// timeout, session_revoked otherwise (kill switch, logout, or an
// unreadable record: someone meant to end the session, and an unreadable
// value must not reopen it).
func (rec *Record) SessionDenial() (schemas.Code, string) {
	if !rec.Readable {
		return schemas.CodeSessionRevoked, "the session is revoked (unreadable revocation record)"
	}
	code := rec.Code
	if code != schemas.CodeSessionExpired {
		code = schemas.CodeSessionRevoked
	}
	reason := rec.Reason
	if reason == "" {
		reason = "the session was ended"
	}
	return code, reason
}

// LeaseDenial is the deny code and reason of a request naming a job lease
// whose tombstone (schemas.LeaseRevocationKey) is rec.
func (rec *Record) LeaseDenial() (schemas.Code, string) {
	reason := "the job lease has ended"
	if rec.Readable && rec.Reason != "" {
		reason = rec.Reason
	}
	return schemas.CodeLeaseExpired, reason
}

// maxRevReason bounds a reason kept in memory; the set's size is bounded
// in entries, so each entry must be bounded too.
const maxRevReason = 300

// recordOf decodes a bucket value.
func recordOf(value []byte, created time.Time) Record {
	var rev schemas.Revocation
	if json.Unmarshal(value, &rev) != nil {
		return Record{Created: created}
	}
	if len(rev.Reason) > maxRevReason {
		rev.Reason = rev.Reason[:maxRevReason] + "…"
	}
	return Record{Code: rev.Code, Reason: rev.Reason, Readable: true, Created: created}
}

// Tuning of the revocation set.
const (
	// barrierTimeout bounds one freshness check (a round trip, then the
	// wait for the watcher to apply what it found).
	barrierTimeout = 2 * time.Second
	// barrierRounds bounds the checks of one barrier while revocations
	// keep arriving; past it the request falls back to KV reads.
	barrierRounds = 4
	// revSweepEvery is how often entries the bucket has expired (MaxAge,
	// which tells no watcher) are dropped from memory.
	revSweepEvery = time.Minute
	// revRetryMax caps the back-off between two watch attempts.
	revRetryMax = 5 * time.Second
)

// errRevOverflow ends a watch whose bucket holds more keys than the set
// may keep (Options.Max).
var errRevOverflow = errors.New("revocation bucket holds more keys than the set may keep")

// errRevResync ends a watch that a failed freshness check distrusts.
var errRevResync = errors.New("freshness check failed; reloading the revocation set")

// Set is an in-memory copy of the revocation bucket (session
// revocations and lease tombstones), kept current by a KV watcher, so a
// request costs a map read instead of a KV round trip.
//
// Freshness: a revocation stored before a request was taken must deny it,
// and the watcher's push lags the write by a few milliseconds. So before
// answering, a lookup waits on a barrier: one direct-get round trip asking
// the bucket's stream for a message after the last revision the set has
// applied; if there is one, the barrier waits until the watcher has applied
// it, and asks again. Requests arriving while a barrier is in flight share
// the next one, so under load the round trip is paid once per batch, not
// per request.
//
// Fail closed: until the initial values are loaded the service is not ready
// and takes no request; when the watch breaks, a barrier fails, or the
// bucket holds more than max keys (the set then frees its map), every
// lookup reads the bucket (KV Get) as before, and a failed read is an error
// (redelivery), never "not revoked". The watch is then reloaded, after
// resync when it overflowed.
type Set struct {
	js          jetstream.JetStream
	nc          *nats.Conn
	bucket      string
	stream      string
	max         int
	resync      time.Duration
	maxSetting  string
	log         zerolog.Logger
	lookupsSet  prometheus.Counter
	lookupsKV   prometheus.Counter
	overflowsCt prometheus.Counter

	mu       sync.RWMutex
	m        map[string]Record
	complete bool
	lastRev  uint64
	advanced chan struct{} // closed (and replaced) when lastRev moves or the set changes state
	ttl      time.Duration // bucket MaxAge, for the sweep

	loadOnce sync.Once
	loaded   chan struct{} // closed when the first load ended (complete, or overflowed)

	resyncReq chan struct{} // capacity 1: asks the watch to restart

	kvMu sync.Mutex
	kv   jetstream.KeyValue

	bmu      sync.Mutex
	base     context.Context // Run's context: barriers end with it
	inflight *barrierCall
	next     *barrierCall
}

// barrierCall is one freshness check shared by the lookups that wait on it.
type barrierCall struct {
	done chan struct{}
	err  error
}

// Options configure a Set.
type Options struct {
	// JS opens the bucket; NC sends the freshness checks (direct gets on
	// the bucket's stream). The user needs read and watch on the bucket.
	JS jetstream.JetStream
	NC *nats.Conn
	// Bucket is the revocation bucket's name (Topology.BucketRevocations).
	Bucket string
	// Max bounds the keys held in memory; past it lookups read the bucket.
	Max int
	// MaxSetting names the variable that sets Max, for logs and metric help.
	MaxSetting string
	// MetricPrefix starts the metric names, e.g. aigov_authn gives
	// aigov_authn_revocation_lookups_total; each service has its own.
	MetricPrefix string
	Log          zerolog.Logger
	// Registry receives the set's metrics.
	Registry prometheus.Registerer
}

// New builds a set; it does no I/O. Run loads and follows the bucket.
func New(o Options) (*Set, error) {
	switch {
	case o.JS == nil || o.NC == nil:
		return nil, errors.New("revocation: nil NATS connection or JetStream context")
	case o.Bucket == "":
		return nil, errors.New("revocation: no bucket name")
	case o.Max <= 0:
		return nil, errors.New("revocation: max must be positive")
	case o.MetricPrefix == "":
		return nil, errors.New("revocation: no metric prefix")
	case o.Registry == nil:
		return nil, errors.New("revocation: nil metrics registry")
	}
	r := &Set{
		js: o.JS, nc: o.NC, bucket: o.Bucket, stream: "KV_" + o.Bucket, max: o.Max, resync: time.Minute,
		maxSetting: o.MaxSetting, log: o.Log,
		advanced:  make(chan struct{}),
		loaded:    make(chan struct{}),
		base:      context.Background(),
		resyncReq: make(chan struct{}, 1),
	}
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: o.MetricPrefix + "_revocation_lookups_total",
		Help: "Revocation lookups, by how they were answered: set (in memory, after a freshness barrier) or kv (a bucket read, while the set is incomplete).",
	}, []string{"via"})
	r.lookupsSet, r.lookupsKV = lookups.WithLabelValues("set"), lookups.WithLabelValues("kv")
	r.overflowsCt = prometheus.NewCounter(prometheus.CounterOpts{
		Name: o.MetricPrefix + "_revocation_overflows_total",
		Help: "Times the revocation bucket held more keys than " + o.MaxSetting + "; lookups then read the bucket.",
	})
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: o.MetricPrefix + "_revocation_entries",
		Help: "Keys (session revocations and lease tombstones) held by the in-memory revocation set.",
	}, func() float64 { return float64(r.Len()) })
	for _, c := range []prometheus.Collector{lookups, r.overflowsCt, entries} {
		if err := o.Registry.Register(c); err != nil {
			return nil, fmt.Errorf("revocation: register metrics: %w", err)
		}
	}
	return r, nil
}

// Len reports the entries held.
func (r *Set) Len() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.m)
}

// Loaded is closed once the first load has ended: the set is complete, or
// the bucket overflowed it and lookups read the bucket.
func (r *Set) Loaded() <-chan struct{} { return r.loaded }

// LastRevision reports the last bucket revision the set has applied, and
// whether the set is complete.
func (r *Set) LastRevision() (uint64, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.lastRev, r.complete
}

// Lookup returns the records of keys ("" is skipped), nil where a key is
// not in the bucket, as of a moment after the call began: every revision
// stored before the call is reflected. An error means the answer is
// unknown, never "not revoked".
func (r *Set) Lookup(ctx context.Context, keys ...string) ([]*Record, error) {
	out := make([]*Record, len(keys))
	if _, complete := r.LastRevision(); complete {
		err := r.barrier(ctx)
		if err == nil {
			r.mu.RLock()
			if r.complete {
				for i, k := range keys {
					if rec, ok := r.m[k]; ok && k != "" {
						out[i] = &rec
					}
				}
				r.mu.RUnlock()
				r.lookupsSet.Inc()
				return out, nil
			}
			r.mu.RUnlock()
		} else if ctx.Err() != nil {
			return nil, err
		}
	}
	// The set cannot answer: read the bucket.
	return r.readBucket(ctx, keys)
}

// readBucket answers a lookup with KV Gets.
func (r *Set) readBucket(ctx context.Context, keys []string) ([]*Record, error) {
	out := make([]*Record, len(keys))
	r.lookupsKV.Inc()
	kv, err := r.handle(ctx)
	if err != nil {
		return nil, err
	}
	for i, k := range keys {
		if k == "" {
			continue
		}
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("look up revocation key %s: %w", k, err)
		}
		rec := recordOf(e.Value(), e.Created())
		out[i] = &rec
	}
	return out, nil
}

// Peek is Lookup without the freshness barrier: when the set is complete
// it answers from memory with no round trip at all, as of the last
// revision the watcher applied (a few milliseconds behind the bucket);
// otherwise it reads the bucket like Lookup. It suits a caller for whom a
// revocation seen a moment late is harmless (the reaper, whose writes are
// compare-and-set against the revoker's), never a deny decision.
func (r *Set) Peek(ctx context.Context, keys ...string) ([]*Record, error) {
	r.mu.RLock()
	if r.complete {
		out := make([]*Record, len(keys))
		for i, k := range keys {
			if rec, ok := r.m[k]; ok && k != "" {
				out[i] = &rec
			}
		}
		r.mu.RUnlock()
		r.lookupsSet.Inc()
		return out, nil
	}
	r.mu.RUnlock()
	return r.readBucket(ctx, keys)
}

// handle opens the bucket once; a failure is retried by the next call.
func (r *Set) handle(ctx context.Context) (jetstream.KeyValue, error) {
	r.kvMu.Lock()
	defer r.kvMu.Unlock()
	if r.kv == nil {
		kv, err := r.js.KeyValue(ctx, r.bucket)
		if err != nil {
			return nil, fmt.Errorf("open revocation bucket %s: %w", r.bucket, err)
		}
		r.kv = kv
	}
	return r.kv, nil
}

// barrier returns once the set has applied every revision stored before
// the call began. Callers share checks: one that started before this call
// cannot vouch for it, so the caller joins (or queues) the next one.
func (r *Set) barrier(ctx context.Context) error {
	r.bmu.Lock()
	c := r.next
	if c == nil {
		c = &barrierCall{done: make(chan struct{})}
		if r.inflight == nil {
			r.inflight = c
			go r.runBarriers(c)
		} else {
			r.next = c
		}
	}
	r.bmu.Unlock()
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// runBarriers runs c, then each check queued meanwhile. At most one runs
// at a time and at most one waits, each bounded by barrierTimeout.
func (r *Set) runBarriers(c *barrierCall) {
	r.bmu.Lock()
	base := r.base
	r.bmu.Unlock()
	for c != nil {
		c.err = r.check(base)
		if c.err != nil {
			r.requestResync()
		}
		close(c.done)
		r.bmu.Lock()
		r.inflight, r.next = r.next, nil
		c = r.inflight
		r.bmu.Unlock()
	}
}

// check asks the bucket's stream for a message after the set's last
// revision and waits for the watcher to apply it, until none is left.
func (r *Set) check(base context.Context) error {
	ctx, cancel := context.WithTimeout(base, barrierTimeout)
	defer cancel()
	for range barrierRounds {
		after, complete := r.LastRevision()
		if !complete {
			return errors.New("revocation set is incomplete")
		}
		seq, err := r.nextRevision(ctx, after)
		if err != nil {
			return err
		}
		if seq == 0 {
			return nil
		}
		if err := r.waitFor(ctx, seq); err != nil {
			return err
		}
	}
	return fmt.Errorf("revocation set still behind after %d checks", barrierRounds)
}

// nextRevision returns the sequence of the bucket's first message after
// rev, or 0 when there is none: a direct get, answered from the stream's
// index without a consumer.
func (r *Set) nextRevision(ctx context.Context, rev uint64) (uint64, error) {
	body := strconv.AppendUint([]byte(`{"next_by_subj":">","seq":`), rev+1, 10)
	body = append(body, '}')
	msg, err := r.nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET."+r.stream, body)
	if err != nil {
		return 0, fmt.Errorf("check revocation bucket %s for news: %w", r.bucket, err)
	}
	switch status := msg.Header.Get("Status"); status {
	case "":
		seq, err := strconv.ParseUint(msg.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil || seq <= rev {
			return 0, fmt.Errorf("check revocation bucket %s for news: bad sequence %q", r.bucket, msg.Header.Get(jetstream.SequenceHeader))
		}
		return seq, nil
	case "404":
		return 0, nil
	default:
		return 0, fmt.Errorf("check revocation bucket %s for news: status %s %s", r.bucket, status, msg.Header.Get("Description"))
	}
}

// waitFor returns once the set has applied revision seq.
func (r *Set) waitFor(ctx context.Context, seq uint64) error {
	for {
		r.mu.RLock()
		last, complete, ch := r.lastRev, r.complete, r.advanced
		r.mu.RUnlock()
		switch {
		case !complete:
			return errors.New("revocation set became incomplete")
		case last >= seq:
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("revocation watcher has not applied revision %d: %w", seq, ctx.Err())
		}
	}
}

// requestResync asks the watch to restart, without blocking.
func (r *Set) requestResync() {
	select {
	case r.resyncReq <- struct{}{}:
	default:
	}
}

// Run keeps the set current until ctx ends, rewatching after a failure
// with back-off (resync after an overflow).
func (r *Set) Run(ctx context.Context) {
	r.bmu.Lock()
	r.base = ctx
	r.bmu.Unlock()
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		began := time.Now()
		err := r.watch(ctx)
		r.setIncomplete()
		if ctx.Err() != nil {
			return
		}
		wait := backoff
		if errors.Is(err, errRevOverflow) {
			wait = r.resync
			r.overflowsCt.Inc()
			r.loadOnce.Do(func() { close(r.loaded) })
			r.log.Error().Err(err).Int("max", r.max).Str("max_setting", r.maxSetting).Dur("retry_after", wait).Msg("revocation set overflowed; every request reads the revocation bucket")
		} else {
			r.log.Warn().Err(err).Dur("retry_after", wait).Msg("revocation watch ended; requests read the revocation bucket until it is reloaded")
		}
		if time.Since(began) > time.Minute {
			backoff = 100 * time.Millisecond
		} else {
			backoff = min(2*backoff, revRetryMax)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// setIncomplete hands lookups to the bucket and frees the map.
func (r *Set) setIncomplete() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.complete, r.m = false, nil
	close(r.advanced)
	r.advanced = make(chan struct{})
}

// watch loads the bucket, installs the set and applies updates until the
// watch fails, a resync is asked for or ctx ends.
func (r *Set) watch(ctx context.Context) error {
	select {
	case <-r.resyncReq: // a request older than this watch is moot
	default:
	}
	kv, err := r.js.KeyValue(ctx, r.bucket)
	if err != nil {
		return fmt.Errorf("open revocation bucket %s: %w", r.bucket, err)
	}
	r.kvMu.Lock()
	r.kv = kv
	r.kvMu.Unlock()
	st, err := kv.Status(ctx)
	if err != nil {
		return fmt.Errorf("status of revocation bucket %s: %w", r.bucket, err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch revocation bucket %s: %w", r.bucket, err)
	}
	defer func() { _ = w.Stop() }()
	sweep := time.NewTicker(revSweepEvery)
	defer sweep.Stop()
	initial := make(map[string]Record)
	var initialRev uint64
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-r.resyncReq:
			return errRevResync
		case <-sweep.C:
			r.sweep(st.TTL())
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return errors.New("revocation watch closed")
			case e == nil && initial != nil:
				r.install(initial, initialRev, st.TTL())
				initial = nil
			case e == nil:
			case initial != nil:
				initialRev = max(initialRev, e.Revision())
				if e.Operation() != jetstream.KeyValuePut {
					delete(initial, e.Key())
				} else if len(initial) >= r.max {
					return errRevOverflow
				} else {
					initial[e.Key()] = recordOf(e.Value(), e.Created())
				}
			default:
				if err := r.apply(e); err != nil {
					return err
				}
			}
		}
	}
}

// install makes a loaded set current.
func (r *Set) install(m map[string]Record, rev uint64, ttl time.Duration) {
	r.mu.Lock()
	r.m, r.lastRev, r.complete, r.ttl = m, rev, true, ttl
	close(r.advanced)
	r.advanced = make(chan struct{})
	r.mu.Unlock()
	r.loadOnce.Do(func() { close(r.loaded) })
	r.log.Info().Int("entries", len(m)).Uint64("revision", rev).Msg("revocation set loaded")
}

// apply applies one update; deletes and purges remove the key.
func (r *Set) apply(e jetstream.KeyValueEntry) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if e.Operation() == jetstream.KeyValuePut {
		if _, ok := r.m[e.Key()]; !ok && len(r.m) >= r.max {
			return errRevOverflow
		}
		r.m[e.Key()] = recordOf(e.Value(), e.Created())
	} else {
		delete(r.m, e.Key())
	}
	r.lastRev = max(r.lastRev, e.Revision())
	close(r.advanced)
	r.advanced = make(chan struct{})
	return nil
}

// sweep drops entries the bucket has expired: MaxAge removes messages
// without telling watchers. A minute of grace errs towards denying.
func (r *Set) sweep(ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	cutoff := time.Now().Add(-ttl - revSweepEvery)
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, rec := range r.m {
		if rec.Created.Before(cutoff) {
			delete(r.m, k)
		}
	}
}
