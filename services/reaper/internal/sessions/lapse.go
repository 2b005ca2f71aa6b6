package sessions

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
)

// lapsedReason is the revocation reason of a session whose record lapsed.
const lapsedReason = "session record lapsed before an expiry pass ended it (reaper outage longer than its TTL)"

// kvStream is the stream behind a KV bucket.
func kvStream(bucket string) string { return "KV_" + bucket }

// lapsedMarker reports whether a KV message is the marker JetStream leaves
// when a key's TTL (or the bucket's retention) removed it, or a purge. The
// reaper only ever deletes session records, so a purge marker in the
// sessions bucket always means a record vanished without being ended.
func lapsedMarker(h map[string][]string) bool {
	get := func(k string) string {
		if v := h[k]; len(v) > 0 {
			return v[0]
		}
		return ""
	}
	if op := get("KV-Operation"); op != "" {
		return op == "PURGE"
	}
	switch get(jetstream.MarkerReasonHeader) {
	case "MaxAge", "Purge":
		return true
	}
	return false
}

// endIfLapsed ends the session key names if its record lapsed (the last
// message of its key is a lapse marker). It reports whether it was one.
func (r *Reaper) endIfLapsed(ctx context.Context, key string) (bool, error) {
	m, err := r.sessionStream.GetLastMsgForSubject(ctx, "$KV."+r.sessions.Bucket()+"."+key)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("load last write of session %s: %w", key, err)
	}
	if !lapsedMarker(m.Header) {
		return false, nil
	}
	return true, r.endLapsed(ctx, key, m.Sequence, r.now().UTC())
}

// endLapsed ends a session whose record vanished by TTL before a pass
// ended it: a session_expired revocation, so authn denies its requests and
// the reaper never starts it anew; then the marker is replaced by a plain
// delete (compare-and-set on the marker's revision) so no later pass
// handles it again. The record's contents are gone with it, so no expired
// event can name the principal; the end is logged and counted
// (aigov_reaper_sessions_lapsed_total) instead.
func (r *Reaper) endLapsed(ctx context.Context, key string, markerRev uint64, now time.Time) error {
	b, err := json.Marshal(schemas.Revocation{SessionKey: key, Code: schemas.CodeSessionExpired, Reason: lapsedReason, At: now, By: schemas.ByReaper})
	if err != nil {
		return fmt.Errorf("encode revocation of session %s: %w", key, err)
	}
	mine := true
	if _, err := r.revocations.Create(ctx, key, b); err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) {
			return fmt.Errorf("revoke lapsed session %s: %w", key, err)
		}
		mine = false // ended otherwise, or by another replica
	}
	if err := r.sessions.Delete(ctx, key, jetstream.LastRevision(markerRev)); err != nil &&
		!errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return fmt.Errorf("clear lapse marker of session %s: %w", key, err)
	}
	if mine {
		r.metrics.lapsed.Inc()
		r.log.Warn().Str("session_key", key).Msg("session record lapsed before it was ended; revoked as expired")
	}
	return nil
}
