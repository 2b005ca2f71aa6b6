package sessions_test

import (
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
)

// Requests of a known token within the touch granularity of the record's
// last write do not rewrite it; a new token is written and announced at
// once; and the idle timeout still ends the session no later than
// idle timeout after its last request.
func TestTouchCoalescing(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.TouchGranularity = time.Second
	h := newHarness(t, cfg)
	auth := t0
	p := principal("alice", "sid-coalesce", &auth)
	v := verified("req-1", "token-1", p)
	key := v.SessionKey
	h.track(v)
	first, _ := h.record(key)

	// Same token 500ms later: coalesced, the record is untouched.
	h.clock.Set(500 * time.Millisecond)
	h.track(verified("req-2", "token-1", p))
	if rec, _ := h.record(key); rec.TokenCount != first.TokenCount || !rec.LastSeen.Equal(first.LastSeen) || rec.LastRequestID != "req-1" {
		t.Errorf("record rewritten within the granularity: %+v", rec)
	}
	if n := metric(t, h.reg, "aigov_reaper_touches_coalesced_total"); n != 1 {
		t.Errorf("coalesced %v, want 1", n)
	}

	// A new token within the granularity is never coalesced: written and
	// announced as token_issued.
	h.clock.Set(700 * time.Millisecond)
	h.track(verified("req-3", "token-2", p))
	rec, _ := h.record(key)
	if rec.LastTokenFingerprint != schemas.Fingerprint("token-2") || !rec.LastSeen.Equal(t0.Add(700*time.Millisecond)) {
		t.Errorf("new token not written: %+v", rec)
	}
	if n := len(h.sessionEvents(schemas.TypeSessionTokenSeen)); n != 1 {
		t.Errorf("%d token_issued events for a new token within the granularity, want 1", n)
	}

	// The old token again, 1.5s after the last write: written (the
	// granularity has passed).
	h.clock.Set(2200 * time.Millisecond)
	h.track(verified("req-4", "token-1", p))
	if rec, _ := h.record(key); !rec.LastSeen.Equal(t0.Add(2200 * time.Millisecond)) {
		t.Errorf("request past the granularity not written: last_seen %s", rec.LastSeen)
	}
	if n := len(h.sessionEvents(schemas.TypeSessionTokenSeen)); n != 1 {
		t.Errorf("%d token_issued events after a known token, want 1", n)
	}

	// A last coalesced request at +2.9s; the recorded last_seen stays at
	// +2.2s, so the idle timeout (30m) ends the session at +30m2.2s: not
	// later than 30m after the real last request (+30m2.9s), and early by
	// less than the granularity.
	h.clock.Set(2900 * time.Millisecond)
	h.track(verified("req-5", "token-1", p))
	h.clock.Set(30*time.Minute + 2100*time.Millisecond)
	if res := h.sweep(h.reaper); res.Expired != 0 {
		t.Fatalf("ended before the idle timeout of the recorded last_seen: %+v", res)
	}
	h.clock.Set(30*time.Minute + 2200*time.Millisecond)
	if res := h.sweep(h.reaper); res.Expired != 1 {
		t.Fatalf("idle session not ended at last_seen + idle timeout: %+v", res)
	}
	if rv, _ := h.revocation(key); rv.Reason != "session exceeded idle timeout 30m0s" {
		t.Errorf("revocation reason %q", rv.Reason)
	}
}
