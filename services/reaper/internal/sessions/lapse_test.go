package sessions_test

import (
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
)

// waitLapsed waits until the server has removed key's record by its per-key
// TTL, and returns the marker it left in the sessions bucket's stream.
func (h *harness) waitLapsed(key string) *jetstream.RawStreamMsg {
	h.t.Helper()
	st, err := h.admin.Stream(h.ctx, "KV_"+h.topo.BucketSessions())
	if err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		m, err := st.GetLastMsgForSubject(h.ctx, "$KV."+h.topo.BucketSessions()+"."+key)
		if err != nil {
			h.t.Fatal(err)
		}
		if m.Header.Get(jetstream.MarkerReasonHeader) != "" {
			return m
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("record %s did not lapse within 15s", key)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// A record whose per-key TTL lapses while no expiry pass runs (a reaper
// outage longer than the grace) is not a lost expiry: the next pass finds
// its purge marker and revokes the session as expired, exactly once even
// with two replicas, and a later request of it neither revives nor restarts
// it.
func TestLapsedRecordIsStillEnded(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: an outage test: waits for a session record to lapse; make test runs it")
	}
	t.Parallel()
	cfg := testConfig()
	cfg.TTLGrace = time.Second // the record lapses ~2s after it is due
	h := newHarness(t, cfg)
	auth := t0.Add(-2 * time.Hour) // due at once: max age 1h from auth_time
	p := principal("alice", "sid-lapse", &auth)
	v := verified("req-lapse-1", "token-1", p)
	key := v.SessionKey
	h.track(v)
	if _, ok := h.record(key); !ok {
		t.Fatal("no record after the first request")
	}

	// The outage: no pass runs until the server has dropped the record.
	marker := h.waitLapsed(key)
	if got := marker.Header.Get(jetstream.MarkerReasonHeader); got != "MaxAge" {
		t.Fatalf("marker reason %q, want MaxAge", got)
	}
	if _, ok := h.record(key); ok {
		t.Fatal("record still readable after its TTL lapsed")
	}

	// Two replicas come back and sweep at once.
	other, otherReg := h.newReaper(h.connectReaper())
	var wg sync.WaitGroup
	results := make([]sessions.SweepResult, 2)
	for i, r := range []*sessions.Reaper{h.reaper, other} {
		wg.Go(func() { results[i] = h.sweep(r) })
	}
	wg.Wait()
	if results[0].Failed+results[1].Failed != 0 {
		t.Fatalf("passes failed: %+v", results)
	}
	rv, ok := h.revocation(key)
	if !ok {
		t.Fatal("lapsed session not revoked")
	}
	if rv.Code != schemas.CodeSessionExpired || rv.By != schemas.ByReaper || !strings.Contains(rv.Reason, "lapsed") {
		t.Errorf("revocation %+v, want session_expired by the reaper saying the record lapsed", rv)
	}
	if n := metric(t, h.reg, "aigov_reaper_sessions_lapsed_total") + metric(t, otherReg, "aigov_reaper_sessions_lapsed_total"); n != 1 {
		t.Errorf("lapsed counted %v times across two replicas, want 1", n)
	}
	// Handled once: the marker is gone, so later passes find nothing.
	for range 2 {
		if res := h.sweep(h.reaper); res.Lapsed != 0 || res.Expired != 0 || res.Scanned != 0 {
			t.Fatalf("pass after the lapse was handled: %+v, want nothing to do", res)
		}
	}
	// A request queued during the outage does not start the session again.
	h.clock.Advance(time.Minute)
	h.track(verified("req-lapse-2", "token-1", p))
	if _, ok := h.record(key); ok {
		t.Error("a request after the lapse revived the session")
	}
	if n := len(h.sessionEvents(schemas.TypeSessionStarted)); n != 1 {
		t.Errorf("%d started events, want 1", n)
	}
}

// When a request of a lapsed session arrives before any pass has run, the
// tracking path itself ends the session instead of starting it anew.
func TestRequestOfLapsedSessionEndsIt(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: an outage test: waits for a session record to lapse; make test runs it")
	}
	t.Parallel()
	cfg := testConfig()
	cfg.TTLGrace = time.Second
	h := newHarness(t, cfg)
	auth := t0.Add(-2 * time.Hour)
	p := principal("bob", "sid-lapse-track", &auth)
	v := verified("req-bob-1", "token-b", p)
	h.track(v)
	h.waitLapsed(v.SessionKey)

	h.track(verified("req-bob-2", "token-b", p))
	if rv, ok := h.revocation(v.SessionKey); !ok || rv.Code != schemas.CodeSessionExpired {
		t.Fatalf("revocation after a request of a lapsed session: %+v (found %v)", rv, ok)
	}
	if _, ok := h.record(v.SessionKey); ok {
		t.Error("lapsed session started anew")
	}
	if n := len(h.sessionEvents(schemas.TypeSessionStarted)); n != 1 {
		t.Errorf("%d started events, want 1", n)
	}
	if res := h.sweep(h.reaper); res.Lapsed != 0 || res.Failed != 0 {
		t.Errorf("pass after tracking ended the lapse: %+v, want nothing to do", res)
	}
	if n := metric(t, h.reg, "aigov_reaper_sessions_lapsed_total"); n != 1 {
		t.Errorf("lapsed counted %v times, want 1", n)
	}
}

// With the default grace (0) a record's TTL is the bucket's retention, far
// beyond its due time: an outage shorter than retention minus idle timeout
// cannot make it lapse before a pass ends it.
func TestDefaultGraceKeepsRecordsForTheRetention(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.TTLGrace = 0
	h := newHarness(t, cfg)
	auth := t0
	p := principal("carol", "sid-default-grace", &auth)
	v := verified("req-carol-1", "token-c", p)
	h.track(v)
	h.clock.Advance(time.Minute)
	h.track(verified("req-carol-2", "token-c2", p)) // an update keeps the TTL too
	st, err := h.admin.Stream(h.ctx, "KV_"+h.topo.BucketSessions())
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(h.ctx, "$KV."+h.topo.BucketSessions()+"."+v.SessionKey)
	if err != nil {
		t.Fatal(err)
	}
	ttl := parseTTL(t, m.Header.Get("Nats-TTL"))
	if retention := h.topo.EventMaxAge; ttl < retention {
		t.Errorf("record TTL %s, want at least the bucket's retention %s", ttl, retention)
	}
}

// parseTTL reads a Nats-TTL header: a Go duration or whole seconds.
func parseTTL(t *testing.T, s string) time.Duration {
	t.Helper()
	if d, err := time.ParseDuration(s); err == nil {
		return d
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("Nats-TTL %q: %v", s, err)
	}
	return time.Duration(n) * time.Second
}
