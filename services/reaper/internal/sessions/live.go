package sessions

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Tuning of the live session view.
const (
	// liveResync is how long the view waits before reloading after it
	// overflowed SessionsMax; meanwhile requests read the bucket.
	liveResync = time.Minute
	// liveRetryMax caps the back-off between two watch attempts.
	liveRetryMax = 5 * time.Second
	// conflictWait bounds the wait for the watch to deliver the write that
	// won a compare-and-set; past it the request reads the bucket.
	conflictWait = 500 * time.Millisecond
)

// errLiveOverflow ends a watch whose bucket holds more sessions than the
// view may keep (Config.SessionsMax).
var errLiveOverflow = errors.New("sessions bucket holds more sessions than AIGOV_REAPER_SESSIONS_MAX")

// liveEntry is one session record as the view holds it, at its KV revision.
type liveEntry struct {
	rec Record
	rev uint64
}

// liveSessions is an in-memory copy of the sessions bucket, kept current by
// a KV watcher, so that a verified request of a known session costs no KV
// round trip: the reaper reads the record here and writes only when the
// record must change, with compare-and-set on the revision held here. A
// stale entry (another replica, the kill switch or an expiry pass wrote
// since) makes that write conflict, and the request then retries from the
// newer entry the watch delivers (or, failing that within conflictWait,
// from the bucket); so a stale view costs a retry, never a wrong write.
//
// Bounded: past max sessions the view frees its map and every request reads
// the bucket (the slower path, as correct) until a reload after liveResync
// finds the bucket small enough again.
type liveSessions struct {
	bucket jetstream.KeyValue
	max    int
	log    zerolog.Logger

	overflows prometheus.Counter

	mu       sync.RWMutex
	m        map[string]liveEntry
	complete bool
	advanced chan struct{} // closed (and replaced) whenever the view changes

	loadOnce sync.Once
	loaded   chan struct{} // closed when the first load ended (complete or overflowed)
}

func newLiveSessions(bucket jetstream.KeyValue, max int, log zerolog.Logger, reg prometheus.Registerer) (*liveSessions, error) {
	l := &liveSessions{bucket: bucket, max: max, log: log, loaded: make(chan struct{}), advanced: make(chan struct{})}
	l.overflows = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "aigov_reaper_session_cache_overflows_total",
		Help: "Times the sessions bucket held more sessions than AIGOV_REAPER_SESSIONS_MAX; requests then read the bucket.",
	})
	entries := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "aigov_reaper_session_cache_entries",
		Help: "Live sessions held in memory by the reaper (0 while the view is not loaded or overflowed).",
	}, func() float64 { return float64(l.len()) })
	for _, c := range []prometheus.Collector{l.overflows, entries} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register reaper metrics: %w", err)
		}
	}
	return l, nil
}

func (l *liveSessions) len() int {
	l.mu.RLock()
	defer l.mu.RUnlock()
	return len(l.m)
}

// get returns the session's entry. ok is false when the view cannot say:
// it is not loaded, it overflowed, or the key is not in it (a new session,
// or one the watcher has not delivered yet); the caller then reads the
// bucket.
func (l *liveSessions) get(key string) (liveEntry, bool) {
	l.mu.RLock()
	defer l.mu.RUnlock()
	if !l.complete {
		return liveEntry{}, false
	}
	e, ok := l.m[key]
	// The caller changes its copy of the record: clip the slice it may
	// append to, so the append never writes into the array the map shares.
	e.rec.TokenFingerprints = slices.Clip(e.rec.TokenFingerprints)
	return e, ok
}

// newer waits, at most conflictWait, until the view holds the session at a
// revision after rev: after a conflicting write, the watch delivers the
// write that won. It reports false when the session left the view (ended,
// or the view is no longer complete) or nothing newer came in time; the
// caller then reads the bucket.
func (l *liveSessions) newer(ctx context.Context, key string, rev uint64) (liveEntry, bool) {
	timer := time.NewTimer(conflictWait)
	defer timer.Stop()
	for {
		l.mu.RLock()
		e, ok := l.m[key]
		complete, ch := l.complete, l.advanced
		l.mu.RUnlock()
		switch {
		case !complete || !ok:
			return liveEntry{}, false
		case e.rev > rev:
			e.rec.TokenFingerprints = slices.Clip(e.rec.TokenFingerprints)
			return e, true
		}
		select {
		case <-ch:
		case <-timer.C:
			return liveEntry{}, false
		case <-ctx.Done():
			return liveEntry{}, false
		}
	}
}

// changed wakes the waiters of newer; l.mu must be held.
func (l *liveSessions) changed() {
	close(l.advanced)
	l.advanced = make(chan struct{})
}

// observe records the reaper's own successful write at rev, so the next
// request of the session need not wait for the watcher to deliver it.
func (l *liveSessions) observe(key string, rec Record, rev uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.complete {
		return
	}
	if cur, ok := l.m[key]; ok && cur.rev >= rev {
		return
	}
	if _, ok := l.m[key]; !ok && len(l.m) >= l.max {
		return // the watcher's own apply will overflow the view
	}
	l.m[key] = liveEntry{rec: rec, rev: rev}
	l.changed()
}

// run keeps the view current until ctx ends, rewatching after a failure
// with back-off, and after liveResync when the bucket overflowed it.
func (l *liveSessions) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		began := time.Now()
		err := l.watch(ctx)
		l.setIncomplete()
		if ctx.Err() != nil {
			return
		}
		wait := backoff
		if errors.Is(err, errLiveOverflow) {
			wait = liveResync
			l.overflows.Inc()
			l.loadOnce.Do(func() { close(l.loaded) })
			l.log.Error().Err(err).Int("max", l.max).Dur("retry_after", wait).Msg("session view overflowed; every request reads the sessions bucket")
		} else {
			l.log.Warn().Err(err).Dur("retry_after", wait).Msg("session watch ended; requests read the sessions bucket until it is reloaded")
		}
		if time.Since(began) > time.Minute {
			backoff = 100 * time.Millisecond
		} else {
			backoff = min(2*backoff, liveRetryMax)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// setIncomplete hands requests to the bucket and frees the map.
func (l *liveSessions) setIncomplete() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.complete, l.m = false, nil
	l.changed()
}

// watch loads the bucket, installs the view and applies updates until the
// watch fails or ctx ends.
func (l *liveSessions) watch(ctx context.Context) error {
	w, err := l.bucket.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch sessions bucket: %w", err)
	}
	defer func() { _ = w.Stop() }()
	initial := make(map[string]liveEntry)
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			switch {
			case !ok:
				return errors.New("session watch closed")
			case e == nil && initial != nil:
				l.install(initial)
				initial = nil
			case e == nil:
			case initial != nil:
				if e.Operation() != jetstream.KeyValuePut {
					delete(initial, e.Key())
					continue
				}
				rec, err := decodeRecord(e.Key(), e.Value())
				if err != nil {
					continue // left to the bucket path, which replaces it
				}
				if _, ok := initial[e.Key()]; !ok && len(initial) >= l.max {
					return errLiveOverflow
				}
				initial[e.Key()] = liveEntry{rec: rec, rev: e.Revision()}
			default:
				if err := l.apply(e); err != nil {
					return err
				}
			}
		}
	}
}

// install makes a loaded view current.
func (l *liveSessions) install(m map[string]liveEntry) {
	n := len(m)
	l.mu.Lock()
	l.m, l.complete = m, true
	l.changed()
	l.mu.Unlock()
	l.loadOnce.Do(func() { close(l.loaded) })
	l.log.Info().Int("sessions", n).Msg("session view loaded")
}

// apply applies one update, never moving an entry back to an older
// revision than the reaper's own write already recorded.
func (l *liveSessions) apply(e jetstream.KeyValueEntry) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	cur, known := l.m[e.Key()]
	if known && cur.rev >= e.Revision() {
		return nil
	}
	defer l.changed()
	if e.Operation() != jetstream.KeyValuePut {
		delete(l.m, e.Key())
		return nil
	}
	rec, err := decodeRecord(e.Key(), e.Value())
	if err != nil {
		delete(l.m, e.Key()) // the bucket path replaces a corrupt record
		return nil
	}
	if !known && len(l.m) >= l.max {
		return errLiveOverflow
	}
	l.m[e.Key()] = liveEntry{rec: rec, rev: e.Revision()}
	return nil
}
