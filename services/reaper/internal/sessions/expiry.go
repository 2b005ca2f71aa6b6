package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
)

// SweepResult summarises one expiry pass.
type SweepResult struct {
	// Scanned is how many live sessions were examined.
	Scanned int
	// Expired is how many sessions this pass ended.
	Expired int
	// Failed is how many expired sessions could not be ended this pass;
	// the next pass tries again.
	Failed int
	// Truncated means there were more than MaxScan sessions; the rest wait
	// for a later pass.
	Truncated bool
	// Lapsed is how many sessions whose record had lapsed by TTL (a reaper
	// outage) this pass revoked from their purge marker.
	Lapsed int
}

// RunExpiry is the reaper's expiry worker (a servicekit.Worker): one pass at
// once, then one every Interval until ctx ends. A failed pass is logged and
// retried at the next tick, so a broker outage does not stop the service.
func (r *Reaper) RunExpiry(ctx context.Context) error {
	tick := time.NewTicker(r.cfg.Interval)
	defer tick.Stop()
	for {
		pctx, cancel := context.WithTimeout(ctx, passTimeout)
		res, err := r.Sweep(pctx)
		cancel()
		switch {
		case err != nil && ctx.Err() == nil:
			r.log.Error().Err(err).Int("scanned", res.Scanned).Msg("expiry pass failed")
		case res.Expired > 0 || res.Failed > 0 || res.Lapsed > 0:
			r.log.Info().Int("scanned", res.Scanned).Int("expired", res.Expired).Int("lapsed", res.Lapsed).Int("failed", res.Failed).Msg("expiry pass done")
		}
		if res.Truncated {
			r.log.Warn().Int("max_scan", r.cfg.MaxScan).Msg("expiry pass truncated; raise AIGOV_REAPER_MAX_SCAN or add replicas")
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// candidate is a session that looked expired when listed; lapsed ones
// are a lapse marker at revision rev.
type candidate struct {
	key    string
	reason string
	lapsed bool
	rev    uint64
}

// Sweep runs one expiry pass: it lists up to MaxScan live sessions and ends
// each one past its max age or idle timeout. An error on one session is
// logged and counted in Failed; it does not stop the pass.
func (r *Reaper) Sweep(ctx context.Context) (SweepResult, error) {
	now := r.now().UTC()
	found, res, err := r.scan(ctx, now)
	if err != nil {
		return res, err
	}
	for _, c := range found {
		if ctx.Err() != nil {
			return res, fmt.Errorf("expiry pass interrupted: %w", ctx.Err())
		}
		if c.lapsed {
			if err := r.endLapsed(ctx, c.key, c.rev, now); err != nil {
				res.Failed++
				r.log.Error().Err(err).Str("session_key", c.key).Msg("lapsed session not ended; retrying next pass")
			} else {
				res.Lapsed++
			}
			continue
		}
		ended, err := r.end(ctx, c.key, now)
		switch {
		case err != nil:
			res.Failed++
			r.log.Error().Err(err).Str("session_key", c.key).Str("reason", c.reason).Msg("session not ended; retrying next pass")
		case ended:
			res.Expired++
		}
	}
	r.metrics.tracked.Set(float64(res.Scanned - res.Expired))
	return res, nil
}

// scan lists the sessions with their values in one watch and returns those
// that look expired. A watch delivers keys oldest write first, so when the
// scan is truncated it is the longest-idle sessions that are examined.
func (r *Reaper) scan(ctx context.Context, now time.Time) ([]candidate, SweepResult, error) {
	var res SweepResult
	// Deletes are included: a purge marker is a record that lapsed by TTL
	// before a pass ended it, and must still be ended (endLapsed).
	w, err := r.sessions.WatchAll(ctx)
	if err != nil {
		return nil, res, fmt.Errorf("list sessions: %w", err)
	}
	defer killswitch.StopWatcher(w)
	var found []candidate
	for {
		select {
		case <-ctx.Done():
			return nil, res, fmt.Errorf("list sessions: %w", ctx.Err())
		case e, ok := <-w.Updates():
			if !ok {
				return nil, res, errors.New("list sessions: watch closed before the last key")
			}
			if e == nil { // every current key delivered
				return found, res, nil
			}
			switch e.Operation() {
			case jetstream.KeyValueDelete:
				continue // ended and deleted by a pass or the kill switch
			case jetstream.KeyValuePurge:
				found = append(found, candidate{key: e.Key(), lapsed: true, rev: e.Revision()})
				continue
			}
			if res.Scanned >= r.cfg.MaxScan {
				res.Truncated = true
				return found, res, nil
			}
			res.Scanned++
			rec, err := decodeRecord(e.Key(), e.Value())
			if err != nil {
				r.log.Error().Err(err).Str("session_key", e.Key()).Msg("corrupt session record skipped")
				continue
			}
			if reason, _, _, expired := r.cfg.expired(rec, now); expired {
				found = append(found, candidate{key: e.Key(), reason: reason})
			}
		}
	}
}

// end ends one session if it is still expired when reloaded, in an order
// where a crash at any step is repaired by the next pass: revocation first,
// so authn denies as soon as possible; then the expired event; then the
// record, deleted only if nothing touched it meanwhile.
func (r *Reaper) end(ctx context.Context, key string, now time.Time) (bool, error) {
	entry, err := r.sessions.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil // ended by another replica
	}
	if err != nil {
		return false, fmt.Errorf("load session %s: %w", key, err)
	}
	rec, err := decodeRecord(key, entry.Value())
	if err != nil {
		return false, err
	}
	reason, maxAge, idle, expired := r.cfg.expired(rec, now)
	if !expired {
		return false, nil // seen again since it was listed
	}
	mine, err := r.revoke(ctx, key, reason, maxAge, idle, now)
	if err != nil {
		return false, err
	}
	if mine {
		id := schemas.DerivedID(key, "expired")
		if err := r.publish(ctx, schemas.SessionExpired, schemas.TypeSessionExpired, id, rec.Event(reason, ""), now); err != nil {
			return false, err
		}
	}
	if err := r.sessions.Delete(ctx, key, jetstream.LastRevision(entry.Revision())); err != nil {
		if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
			// Written between the load and the delete; the revocation
			// already stands and the next pass removes the record.
			return false, nil
		}
		return false, fmt.Errorf("delete session %s: %w", key, err)
	}
	if !mine {
		r.log.Info().Str("session_key", key).Msg("record of a revoked session dropped")
		return false, nil
	}
	r.metrics.expired.WithLabelValues(reason).Inc()
	r.log.Info().Str("session_key", key).Str("principal_id", rec.PrincipalID).Str("reason", reason).
		Time("first_seen", rec.FirstSeen).Time("last_seen", rec.LastSeen).Msg("session expired")
	return true, nil
}

// revoke writes the session's revocation. It reports false when the
// session had already been ended otherwise (a kill switch or logout, whose
// own event announced it); an expiry revocation left by an interrupted pass
// counts as this one, so the pass carries on where that one stopped. An
// existing revocation is never overwritten: its code says why the session
// really ended.
func (r *Reaper) revoke(ctx context.Context, key, reason string, maxAge, idle time.Duration, now time.Time) (bool, error) {
	text := sessionlimits.MaxAgeReason(maxAge)
	if reason == schemas.ReasonIdle {
		text = fmt.Sprintf("session exceeded idle timeout %s", idle)
	}
	b, err := json.Marshal(schemas.Revocation{SessionKey: key, Code: schemas.CodeSessionExpired, Reason: text, At: now, By: schemas.ByReaper})
	if err != nil {
		return false, fmt.Errorf("encode revocation of session %s: %w", key, err)
	}
	_, err = r.revocations.Create(ctx, key, b)
	if err == nil {
		return true, nil
	}
	if !errors.Is(err, jetstream.ErrKeyExists) {
		return false, fmt.Errorf("revoke session %s: %w", key, err)
	}
	entry, err := r.revocations.Get(ctx, key)
	if err != nil {
		return false, fmt.Errorf("load revocation of session %s: %w", key, err)
	}
	var existing schemas.Revocation
	if err := json.Unmarshal(entry.Value(), &existing); err != nil {
		return false, fmt.Errorf("decode revocation of session %s: %w", key, err)
	}
	return existing.Code == schemas.CodeSessionExpired, nil
}
