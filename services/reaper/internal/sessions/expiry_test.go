package sessions_test

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
)

// step is one moment of a session's life in an expiry case: at t0+at the
// session makes a request (track) or an expiry pass runs and must end
// nothing.
type step struct {
	at    time.Duration
	track bool
}

// Sessions end at their max age, measured from auth_time or else from
// first seen, or after their idle timeout; the end revokes the session,
// announces it and deletes the record.
func TestExpiry(t *testing.T) {
	t.Parallel()
	cases := map[string]struct {
		authTime *time.Time
		steps    []step
		endAt    time.Duration
		reason   string
		text     string
	}{
		"max age from auth_time at the first pass": {
			authTime: ptr(t0.Add(-2 * time.Hour)),
			steps:    []step{{at: 0, track: true}},
			endAt:    0,
			reason:   schemas.ReasonMaxAge,
			text:     "session exceeded max age 1h0m0s",
		},
		"idle timeout as the clock advances": {
			authTime: ptr(t0),
			steps:    []step{{at: 0, track: true}, {at: 29*time.Minute + 59*time.Second}},
			endAt:    30 * time.Minute,
			reason:   schemas.ReasonIdle,
			text:     "session exceeded idle timeout 30m0s",
		},
		"activity defers the idle timeout": {
			authTime: ptr(t0),
			steps:    []step{{at: 0, track: true}, {at: 20 * time.Minute, track: true}, {at: 49 * time.Minute}},
			endAt:    50 * time.Minute,
			reason:   schemas.ReasonIdle,
			text:     "session exceeded idle timeout 30m0s",
		},
		"max age from iat without sid or auth_time": {
			authTime: nil,
			steps: []step{
				{at: 0, track: true}, {at: 25 * time.Minute, track: true}, {at: 50 * time.Minute, track: true},
				{at: 59*time.Minute + 59*time.Second},
			},
			endAt:  time.Hour,
			reason: schemas.ReasonMaxAge,
			text:   "session exceeded max age 1h0m0s",
		},
		"max age wins when both have passed": {
			authTime: ptr(t0),
			steps:    []step{{at: 0, track: true}},
			endAt:    2 * time.Hour,
			reason:   schemas.ReasonMaxAge,
			text:     "session exceeded max age 1h0m0s",
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			h := newHarness(t, testConfig())
			p := principal("alice", "", tc.authTime) // no sid: the key comes from sub and auth_time, else iat
			key := schemas.SessionKey(p)
			var first sessions.Record
			for i, s := range tc.steps {
				h.clock.Set(s.at)
				if s.track {
					h.track(verified("req-"+string(rune('a'+i)), "token", p))
					if i == 0 {
						first, _ = h.record(key)
					}
					continue
				}
				if res := h.sweep(h.reaper); res.Expired != 0 || res.Scanned != 1 {
					t.Fatalf("pass at t0+%s: %+v, want 1 scanned and none expired", s.at, res)
				}
				if _, ok := h.record(key); !ok {
					t.Fatalf("record gone after the pass at t0+%s", s.at)
				}
			}
			last, ok := h.record(key)
			if !ok {
				t.Fatal("no session record before the ending pass")
			}
			if !first.FirstSeen.Equal(t0) {
				t.Errorf("first_seen: got %s, want %s", first.FirstSeen, t0)
			}

			h.clock.Set(tc.endAt)
			end := h.clock.Now()
			if res := h.sweep(h.reaper); res.Expired != 1 || res.Scanned != 1 || res.Failed != 0 {
				t.Fatalf("ending pass: %+v, want 1 scanned and 1 expired", res)
			}

			rv, ok := h.revocation(key)
			if !ok {
				t.Fatal("no revocation written")
			}
			if rv.SessionKey != key || rv.Code != schemas.CodeSessionExpired || rv.Reason != tc.text || !rv.At.Equal(end) {
				t.Errorf("revocation: %+v, want code %s reason %q at %s", rv, schemas.CodeSessionExpired, tc.text, end)
			}
			if _, ok := h.record(key); ok {
				t.Error("session record not deleted")
			}
			expired := h.sessionEvents(schemas.TypeSessionExpired)
			if len(expired) != 1 {
				t.Fatalf("expired events: got %d, want 1", len(expired))
			}
			if want := schemas.DerivedID(key, "expired"); expired[0].ID != want {
				t.Errorf("expired event id: got %s, want %s", expired[0].ID, want)
			}
			data := decodeSessionEvent(t, expired[0])
			if data.SessionKey != key || data.Reason != tc.reason || data.PrincipalID != p.ID ||
				!data.FirstSeen.Equal(t0) || !data.LastSeen.Equal(last.LastSeen) {
				t.Errorf("expired event data: %+v, want reason %s", data, tc.reason)
			}
			if got := metric(t, h.reg, "aigov_reaper_sessions_expired_total", "reason", tc.reason); got != 1 {
				t.Errorf("aigov_reaper_sessions_expired_total{reason=%q} = %v, want 1", tc.reason, got)
			}
			if got := metric(t, h.reg, "aigov_reaper_sessions_tracked"); got != 0 {
				t.Errorf("aigov_reaper_sessions_tracked = %v, want 0", got)
			}
		})
	}
}

// Expiry repeats harmlessly: a second pass, a concurrent replica or a pass
// that resumes after a crash all leave exactly one expired event.
func TestExpiryIsIdempotent(t *testing.T) {
	t.Parallel()
	p := principal("carol", "sid-carol", ptr(t0))
	v := verified("req-1", "token", p)
	key := v.SessionKey

	t.Run("two passes in a row", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, testConfig())
		h.track(v)
		h.clock.Advance(2 * time.Hour)
		first, second := h.sweep(h.reaper), h.sweep(h.reaper)
		if first.Expired != 1 || second.Expired != 0 || second.Scanned != 0 {
			t.Errorf("passes: %+v then %+v, want 1 expired then nothing left", first, second)
		}
		if n := len(h.sessionEvents(schemas.TypeSessionExpired)); n != 1 {
			t.Errorf("expired events: got %d, want 1", n)
		}
	})

	t.Run("two replicas at once", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, testConfig())
		h.track(v)
		other, otherReg := h.newReaper(h.connectReaper())
		h.clock.Advance(2 * time.Hour)
		var wg sync.WaitGroup
		results := make([]sessions.SweepResult, 2)
		for i, r := range []*sessions.Reaper{h.reaper, other} {
			wg.Go(func() {
				res, err := r.Sweep(h.ctx)
				if err != nil {
					t.Errorf("replica %d: %v", i, err)
				}
				results[i] = res
			})
		}
		wg.Wait()
		if got := results[0].Expired + results[1].Expired; got != 1 {
			t.Errorf("sessions ended by both replicas: %d (%+v), want 1", got, results)
		}
		if n := len(h.sessionEvents(schemas.TypeSessionExpired)); n != 1 {
			t.Errorf("expired events: got %d, want 1", n)
		}
		total := metric(t, h.reg, "aigov_reaper_sessions_expired_total", "reason", schemas.ReasonMaxAge) +
			metric(t, otherReg, "aigov_reaper_sessions_expired_total", "reason", schemas.ReasonMaxAge)
		if total != 1 {
			t.Errorf("expired metric over both replicas: %v, want 1", total)
		}
	})

	t.Run("resumed after a crash before the delete", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, testConfig())
		h.track(v)
		rec, _ := h.record(key)
		h.clock.Advance(2 * time.Hour)
		revokedAt := h.clock.Now()
		if res := h.sweep(h.reaper); res.Expired != 1 {
			t.Fatalf("first pass: %+v", res)
		}
		// Put the record back: as if the first pass had stopped after
		// publishing the expired event.
		b, _ := json.Marshal(rec)
		if _, err := h.bucket(h.topo.BucketSessions()).Put(h.ctx, key, b); err != nil {
			t.Fatal(err)
		}
		h.clock.Advance(time.Second)
		if res := h.sweep(h.reaper); res.Expired != 1 {
			t.Fatalf("resumed pass: %+v, want the session ended", res)
		}
		if n := len(h.sessionEvents(schemas.TypeSessionExpired)); n != 1 {
			t.Errorf("expired events: got %d, want 1", n)
		}
		if _, ok := h.record(key); ok {
			t.Error("record left after the resumed pass")
		}
		if rv, _ := h.revocation(key); !rv.At.Equal(revokedAt) {
			t.Errorf("revocation rewritten: at %s, want the first pass's %s", rv.At, revokedAt)
		}
	})
}

// A session revoked by someone else (a kill switch) is not announced as
// expired and its revocation is not overwritten; its record is dropped.
func TestExpiryOfRevokedSessionKeepsItsRevocation(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testConfig())
	v := verified("req-1", "token", principal("alice", "sid-kill", ptr(t0)))
	h.track(v)
	kill := schemas.Revocation{SessionKey: v.SessionKey, Code: schemas.CodeSessionRevoked, Reason: "kill switch", At: t0.Add(time.Minute)}
	b, _ := json.Marshal(kill)
	if _, err := h.bucket(h.topo.BucketRevocations()).Put(h.ctx, v.SessionKey, b); err != nil {
		t.Fatal(err)
	}
	h.clock.Advance(h.cfg.IdleTimeout)

	res := h.sweep(h.reaper)

	if res.Expired != 0 || res.Failed != 0 {
		t.Errorf("pass: %+v, want nothing counted as expired", res)
	}
	if _, ok := h.record(v.SessionKey); ok {
		t.Error("record of the revoked session kept")
	}
	if rv, _ := h.revocation(v.SessionKey); rv.Code != schemas.CodeSessionRevoked || rv.Reason != "kill switch" {
		t.Errorf("revocation overwritten: %+v", rv)
	}
	if n := len(h.sessionEvents(schemas.TypeSessionExpired)); n != 0 {
		t.Errorf("expired events: got %d, want 0", n)
	}
}

// A pass examines at most MaxScan sessions, the least recently seen first;
// the rest are ended by later passes.
func TestMaxScanBoundsAPass(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.MaxScan = 3
	h := newHarness(t, cfg)
	var keys []string
	for i := range 5 {
		v := verified("req", "token", principal(string(rune('a'+i))+"-user", "sid-"+string(rune('a'+i)), ptr(t0)))
		h.track(v)
		keys = append(keys, v.SessionKey)
		h.clock.Advance(time.Minute)
	}
	h.clock.Set(cfg.IdleTimeout + 2*time.Minute) // the first three are idle, the last two not yet

	res := h.sweep(h.reaper)
	if res.Scanned != 3 || !res.Truncated || res.Expired != 3 {
		t.Fatalf("first pass: %+v, want 3 scanned, 3 expired, truncated", res)
	}
	for i, k := range keys {
		if _, ok := h.record(k); ok != (i >= 3) {
			t.Errorf("session %d present=%v after the first pass", i, ok)
		}
	}

	h.clock.Advance(time.Hour)
	res = h.sweep(h.reaper)
	if res.Scanned != 2 || res.Truncated || res.Expired != 2 {
		t.Errorf("second pass: %+v, want 2 scanned and expired, not truncated", res)
	}
	if n := len(h.sessionEvents(schemas.TypeSessionExpired)); n != 5 {
		t.Errorf("expired events: got %d, want 5", n)
	}
}

// RunExpiry ends sessions on its own ticks and returns once ctx ends.
func TestRunExpiryLoop(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Interval = 20 * time.Millisecond
	h := newHarness(t, cfg)
	v := verified("req-1", "token", principal("alice", "sid-loop", ptr(t0)))
	h.track(v)

	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- h.reaper.RunExpiry(ctx) }()

	// A pass or more runs with nothing to do; then time passes.
	time.Sleep(5 * cfg.Interval)
	if _, ok := h.record(v.SessionKey); !ok {
		t.Fatal("session ended before it expired")
	}
	h.clock.Advance(cfg.IdleTimeout)
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, ok := h.revocation(v.SessionKey); ok {
			if _, live := h.record(v.SessionKey); !live {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatal("RunExpiry did not end the idle session within 10s")
		}
		time.Sleep(cfg.Interval)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("RunExpiry: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("RunExpiry did not return after its context ended")
	}
	if n := len(h.sessionEvents(schemas.TypeSessionExpired)); n != 1 {
		t.Errorf("expired events: got %d, want 1", n)
	}
}

// A request that arrives after the idle timeout, before a pass has ended
// the session, does not revive it: the next pass still ends it as idle.
func TestLateRequestDoesNotExtendAnExpiredSession(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testConfig())
	p := principal("alice", "sid-late", ptr(t0))
	v := verified("req-1", "token-1", p)
	h.track(v)

	h.clock.Advance(h.cfg.IdleTimeout + time.Minute)
	h.track(verified("req-2", "token-2", p))

	rec, ok := h.record(v.SessionKey)
	if !ok {
		t.Fatal("no session record")
	}
	if !rec.LastSeen.Equal(t0) || rec.TokenCount != 1 {
		t.Errorf("late request updated the record: last_seen %s token_count %d, want %s and 1", rec.LastSeen, rec.TokenCount, t0)
	}
	if res := h.sweep(h.reaper); res.Expired != 1 {
		t.Fatalf("pass: %+v, want the session ended", res)
	}
	expired := h.sessionEvents(schemas.TypeSessionExpired)
	if len(expired) != 1 || decodeSessionEvent(t, expired[0]).Reason != schemas.ReasonIdle {
		t.Errorf("expired events: %+v, want one with reason idle", expired)
	}
}
