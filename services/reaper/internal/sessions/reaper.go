// Package sessions is the session reaper: it tracks every session seen on
// the verified stream in the sessions bucket, and ends those past their
// maximum age or idle timeout by revoking them, so that authn denies their
// later requests, and announcing the end on aigov.session.expired.
package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/reaper/internal/kvttl"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/revocation"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Source is the CloudEvents source of the reaper's events. It is the same
// for every replica: replicas are one logical producer.
const Source = "aigov/reaper"

// maxUpdateAttempts bounds compare-and-set retries on one session record;
// past it the message is nak'ed and JetStream retries later.
const maxUpdateAttempts = 8

// passTimeout bounds one expiry pass, so a stuck broker call cannot stall
// the loop forever.
const passTimeout = time.Minute

// Deps are what a Reaper works with. Every field is required; pass
// zerolog.Nop() to discard logs.
type Deps struct {
	// JS publishes session events and opens the KV buckets.
	JS jetstream.JetStream
	// Topology names the buckets and subjects.
	Topology topology.Topology
	// Log receives the reaper's structured logs.
	Log zerolog.Logger
	// Registry receives the reaper's metrics.
	Registry prometheus.Registerer
	// Now is the clock; time.Now in production, a fake in tests.
	Now func() time.Time
	// Signer signs every session event.
	Signer *signing.Signer
}

// Reaper tracks sessions and ends expired ones. Its methods are safe for
// concurrent use, and several replicas may run against the same buckets:
// every write is a compare-and-set or de-duplicated by event id.
type Reaper struct {
	signer   *signing.Signer
	cfg      Config
	js       jetstream.JetStream
	subjects schemas.Subjects
	sessions jetstream.KeyValue
	// sessionStream is the sessions bucket's stream, read for the marker
	// a lapsed record leaves (kv.Get hides it).
	sessionStream jetstream.Stream
	revocations   jetstream.KeyValue
	// revs and live are the in-memory views of the revocation and
	// sessions buckets (RunViews keeps them current): a request of a known
	// session reads both from memory and writes only when its record must
	// change.
	revs    *revocation.Set
	live    *liveSessions
	log     zerolog.Logger
	now     func() time.Time
	metrics metrics
}

// New opens the sessions and revocation buckets, which must exist
// (topology.Topology.Ensure), and registers the reaper's metrics.
func New(ctx context.Context, cfg Config, d Deps) (*Reaper, error) {
	switch {
	case d.JS == nil:
		return nil, errors.New("sessions: nil jetstream")
	case d.Registry == nil:
		return nil, errors.New("sessions: nil metrics registry")
	case d.Now == nil:
		return nil, errors.New("sessions: nil clock")
	case d.Signer == nil:
		return nil, errors.New("sessions: no signing key: session events are signed")
	}
	if err := cfg.validate(); err != nil {
		return nil, fmt.Errorf("sessions: %w", err)
	}
	sessions, err := d.JS.KeyValue(ctx, d.Topology.BucketSessions())
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", d.Topology.BucketSessions(), err)
	}
	sessionStream, err := d.JS.Stream(ctx, kvStream(d.Topology.BucketSessions()))
	if err != nil {
		return nil, fmt.Errorf("open stream of bucket %s: %w", d.Topology.BucketSessions(), err)
	}
	revocations, err := d.JS.KeyValue(ctx, d.Topology.BucketRevocations())
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", d.Topology.BucketRevocations(), err)
	}
	m, err := newMetrics(d.Registry)
	if err != nil {
		return nil, err
	}
	log := d.Log.With().Str("component", "sessions").Logger()
	if cfg.SessionsMax == 0 {
		cfg.SessionsMax = DefaultSessionsMax
	}
	if cfg.RevocationsMax == 0 {
		cfg.RevocationsMax = DefaultRevocationsMax
	}
	live, err := newLiveSessions(sessions, cfg.SessionsMax, log, d.Registry)
	if err != nil {
		return nil, err
	}
	revs, err := revocation.New(revocation.Options{
		JS: d.JS, NC: d.JS.Conn(), Bucket: d.Topology.BucketRevocations(), Max: cfg.RevocationsMax,
		MaxSetting: "AIGOV_REAPER_REVOCATIONS_MAX", MetricPrefix: "aigov_reaper", Log: log, Registry: d.Registry,
	})
	if err != nil {
		return nil, fmt.Errorf("sessions: %w", err)
	}
	return &Reaper{
		revs:     revs,
		live:     live,
		cfg:      cfg,
		js:       d.JS,
		signer:   d.Signer,
		subjects: d.Topology.Subjects,
		sessions: sessions,

		sessionStream: sessionStream,
		revocations:   revocations,
		log:           log,
		now:           d.Now,
		metrics:       m,
	}, nil
}

// RunViews is the reaper's worker that keeps the in-memory views of the
// revocation and sessions buckets current until ctx ends. Until they are
// loaded (or while one is broken or overflowed), Track reads the buckets.
func (r *Reaper) RunViews(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Go(func() { r.revs.Run(ctx) })
	wg.Go(func() { r.live.run(ctx) })
	wg.Wait()
	return nil
}

// ViewsLoaded is closed once both views have finished their first load.
func (r *Reaper) ViewsLoaded(ctx context.Context) error {
	for _, ch := range []<-chan struct{}{r.revs.Loaded(), r.live.loaded} {
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("session views not loaded: %w", ctx.Err())
		}
	}
	return nil
}

// Track is the servicekit.Handler of the reaper's consumer on the verified
// stream: it records the session of each verified request, announcing a
// new one on aigov.session.started. A session that was ended is never
// revived.
//
// A request of a session the in-memory views know costs no KV round trip:
// the revocation and the record are read from memory, and the record is
// written (compare-and-set on the revision held) only when it must change:
// a new token, or last_seen older than the touch granularity. A new
// session, or a view that cannot answer, takes the bucket path, which reads
// both buckets. A conflicting write retries from the newer record the
// watch delivers.
func (r *Reaper) Track(ctx context.Context, m jetstream.Msg) error {
	v, err := decodeVerified(m.Data())
	if err != nil {
		// Verified events come from our own authn: a bad one is a bug that
		// no retry fixes.
		return servicekit.Permanent(err)
	}
	if e, ok := r.live.get(v.SessionKey); ok {
		recs, err := r.revs.Peek(ctx, v.SessionKey)
		if err != nil {
			return fmt.Errorf("check revocation of session %s: %w", v.SessionKey, err)
		}
		if recs[0] != nil {
			r.log.Debug().Str("session_key", v.SessionKey).Str("request_id", v.RequestID).Msg("request of an ended session ignored")
			return nil
		}
		r.metrics.lookupsMemory.Inc()
		for range maxUpdateAttempts {
			done, err := r.touch(ctx, e.rec, e.rev, v)
			if err != nil || done {
				return err
			}
			// Conflict: another writer won. Its write reaches the view
			// through the watch; retry from it.
			r.metrics.conflicts.Inc()
			if e, ok = r.live.newer(ctx, v.SessionKey, e.rev); !ok {
				break // ended, or not delivered in time: the bucket decides
			}
		}
	}
	r.metrics.lookupsKV.Inc()
	return r.trackFromBucket(ctx, v)
}

// trackFromBucket is Track reading the record and the revocation from the
// buckets.
func (r *Reaper) trackFromBucket(ctx context.Context, v schemas.Verified) error {
	revoked, err := r.revoked(ctx, v.SessionKey)
	if err != nil {
		return err
	}
	if revoked {
		r.log.Debug().Str("session_key", v.SessionKey).Str("request_id", v.RequestID).Msg("request of an ended session ignored")
		return nil
	}
	for range maxUpdateAttempts {
		entry, err := r.sessions.Get(ctx, v.SessionKey)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			// A record that lapsed while the reaper was down is a session
			// that ended unseen: end it now instead of starting it anew.
			if lapsed, err := r.endIfLapsed(ctx, v.SessionKey); err != nil || lapsed {
				return err
			}
			created, err := r.start(ctx, v)
			if err != nil || created {
				return err
			}
			continue // another worker created it first: update theirs
		}
		if err != nil {
			return fmt.Errorf("load session %s: %w", v.SessionKey, err)
		}
		rec, err := decodeRecord(v.SessionKey, entry.Value())
		if err != nil {
			// Only the reaper writes this bucket; rebuilding the record keeps
			// the session bounded instead of failing its requests forever.
			r.log.Error().Err(err).Str("session_key", v.SessionKey).Msg("corrupt session record replaced")
			now := r.now().UTC()
			written, err := r.write(ctx, v.SessionKey, newRecord(v, now), entry.Revision(), now)
			if err != nil || written {
				return err
			}
			continue
		}
		updated, err := r.touch(ctx, rec, entry.Revision(), v)
		if err != nil || updated {
			return err
		}
	}
	return fmt.Errorf("update session %s: still conflicting after %d attempts", v.SessionKey, maxUpdateAttempts)
}

// start records a new session. The started event is published before the
// record is created: a crash between the two repeats the publish, which
// JetStream de-duplicates, rather than losing the event. It reports false
// when another writer created the record first.
func (r *Reaper) start(ctx context.Context, v schemas.Verified) (bool, error) {
	now := r.now().UTC()
	rec := newRecord(v, now)
	id := schemas.DerivedID(v.SessionKey, "started")
	if err := r.publish(ctx, schemas.SessionStarted, schemas.TypeSessionStarted, id, rec.Event("", v.RequestID), now); err != nil {
		return false, err
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("encode session %s: %w", v.SessionKey, err)
	}
	rev, err := r.sessions.Create(ctx, v.SessionKey, b, jetstream.KeyTTL(kvttl.Clamp(r.cfg.recordTTL(rec, now))))
	if errors.Is(err, jetstream.ErrKeyExists) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("create session %s: %w", v.SessionKey, err)
	}
	// An expiry pass may have ended the session between the revocation
	// check and the create. It writes the revocation before deleting the
	// record, so checking again now closes that gap.
	revoked, err := r.revoked(ctx, v.SessionKey)
	if err != nil {
		return false, err
	}
	if revoked {
		if err := r.sessions.Delete(ctx, v.SessionKey, jetstream.LastRevision(rev)); err != nil && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return false, fmt.Errorf("drop revived session %s: %w", v.SessionKey, err)
		}
		return true, nil
	}
	r.live.observe(v.SessionKey, rec, rev)
	r.metrics.started.Inc()
	r.log.Info().Str("session_key", v.SessionKey).Str("principal_id", rec.PrincipalID).
		Str("request_id", v.RequestID).Str("token_fingerprint", v.TokenFingerprint).Msg("session started")
	return true, nil
}

// touch updates a known session, whose record is rec at revision rev,
// with compare-and-set. It reports false on a conflicting write, for the
// caller to reload and retry.
func (r *Reaper) touch(ctx context.Context, rec Record, rev uint64, v schemas.Verified) (bool, error) {
	now := r.now().UTC()
	if reason, _, _, expired := r.cfg.expired(rec, now); expired {
		// The session is over even if no pass has ended it yet: a late
		// request must not stretch its idle time. The next pass ends it.
		r.log.Debug().Str("session_key", v.SessionKey).Str("reason", reason).Msg("request of an expired session not counted")
		return true, nil
	} else if r.coalesce(rec, v, now) {
		// A known token, and the record was written less than the
		// granularity ago: skip the write. Its last_seen lags by less
		// than the granularity, so idle expiry can come that much early,
		// never late; the revocation check above still ran.
		r.metrics.coalesced.Inc()
		return true, nil
	} else if fresh := newToken(rec, v.TokenFingerprint); !seen(&rec, v, now) {
		return true, nil
	} else if fresh {
		// A new token in a known session: the footprint of an issuance or
		// refresh. Published before the write; a retry after a conflict
		// publishes the same id, which JetStream stores once.
		id := schemas.DerivedID(v.SessionKey+"\x00"+v.TokenFingerprint, "token_issued")
		if err := r.publish(ctx, schemas.SessionTokenIssued, schemas.TypeSessionTokenSeen, id, rec.Event("", v.RequestID), now); err != nil {
			return false, err
		}
		r.metrics.tokens.Inc()
		r.log.Info().Str("session_key", v.SessionKey).Str("request_id", v.RequestID).
			Str("token_fingerprint", v.TokenFingerprint).Msg("new token seen in session")
	}
	return r.write(ctx, v.SessionKey, rec, rev, now)
}

// write replaces the session's record at revision rev with rec
// (compare-and-set), and records the write in the live view. It reports
// false on a conflicting write.
func (r *Reaper) write(ctx context.Context, key string, rec Record, rev uint64, now time.Time) (bool, error) {
	b, err := json.Marshal(rec)
	if err != nil {
		return false, fmt.Errorf("encode session %s: %w", key, err)
	}
	newRev, err := kvttl.Update(ctx, r.js, r.sessions, key, b, rev, r.cfg.recordTTL(rec, now))
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			return false, nil
		}
		return false, fmt.Errorf("update session %s: %w", key, err)
	}
	r.live.observe(key, rec, newRev)
	r.log.Debug().Str("session_key", key).Int64("token_count", rec.TokenCount).Msg("session seen")
	return true, nil
}

// coalesce reports whether a request can leave the record as it is: its
// token is one the session already knows, and the record's last_seen is
// younger than the touch granularity.
func (r *Reaper) coalesce(rec Record, v schemas.Verified, now time.Time) bool {
	g := r.cfg.TouchGranularity
	return g > 0 && !newToken(rec, v.TokenFingerprint) && now.Sub(rec.LastSeen) < g
}

// revoked reports whether the session has ended: its key is in the
// revocation bucket.
func (r *Reaper) revoked(ctx context.Context, key string) (bool, error) {
	_, err := r.revocations.Get(ctx, key)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return false, nil
	default:
		return false, fmt.Errorf("check revocation of session %s: %w", key, err)
	}
}

// publish sends one session event; the event id is also the Nats-Msg-Id,
// so a repeat is stored once.
func (r *Reaper) publish(ctx context.Context, name, typ, id string, data schemas.SessionEvent, at time.Time) error {
	return killswitch.Publish(ctx, r.js, r.signer, r.subjects, name, typ, id, data, at)
}

// decodeVerified parses a verified event and checks what the reaper relies
// on; the error wraps schemas.ErrInvalidEvent.
func decodeVerified(b []byte) (schemas.Verified, error) {
	ev, err := schemas.ParseEvent(b)
	if err != nil {
		return schemas.Verified{}, fmt.Errorf("decode verified event: %w", err)
	}
	if ev.Type != schemas.TypeVerified {
		return schemas.Verified{}, fmt.Errorf("decode verified event %s: %w: type %q, want %q", ev.ID, schemas.ErrInvalidEvent, ev.Type, schemas.TypeVerified)
	}
	var v schemas.Verified
	if err := ev.DecodeData(&v); err != nil {
		return schemas.Verified{}, fmt.Errorf("decode verified event %s: %w", ev.ID, err)
	}
	if !validKey(v.SessionKey) {
		return schemas.Verified{}, fmt.Errorf("decode verified event %s: %w: session_key %q is not a valid key", ev.ID, schemas.ErrInvalidEvent, v.SessionKey)
	}
	if v.RequestID == "" {
		return schemas.Verified{}, fmt.Errorf("decode verified event %s: %w: no request_id", ev.ID, schemas.ErrInvalidEvent)
	}
	return v, nil
}

// validKey mirrors JetStream's rule for KV keys, bounded in length.
func validKey(k string) bool {
	if k == "" || len(k) > schemas.MaxIDLength || strings.HasPrefix(k, ".") || strings.HasSuffix(k, ".") {
		return false
	}
	for _, c := range k {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.ContainsRune("-/_=.", c):
		default:
			return false
		}
	}
	return true
}
