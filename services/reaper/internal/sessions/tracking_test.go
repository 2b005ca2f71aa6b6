package sessions_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// A new session is announced once on aigov.session.started and recorded in
// the sessions bucket; later requests of the session only update the record.
func TestNewSessionStartedOnceThenUpdated(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testConfig())
	auth := t0.Add(-10 * time.Minute)
	p := principal("alice", "sid-alice-1", &auth)
	v1 := verified("req-1", "token-1", p)
	key := v1.SessionKey

	h.track(v1)

	started := h.sessionEvents(schemas.TypeSessionStarted)
	if len(started) != 1 {
		t.Fatalf("started events after the first request: got %d, want 1", len(started))
	}
	ev := started[0]
	if want := schemas.DerivedID(key, "started"); ev.ID != want {
		t.Errorf("started event id: got %s, want %s", ev.ID, want)
	}
	if ev.Source != sessions.Source || ev.Subject != key {
		t.Errorf("started event source %q subject %q, want %q and %q", ev.Source, ev.Subject, sessions.Source, key)
	}
	data := decodeSessionEvent(t, ev)
	if data.SessionKey != key || data.PrincipalID != p.ID || data.Issuer != issuer || data.Subject != "alice" ||
		data.SessionID != "sid-alice-1" || data.AuthTime == nil || !data.AuthTime.Equal(auth) ||
		data.RequestID != "req-1" || data.TokenFingerprint != schemas.Fingerprint("token-1") ||
		!data.FirstSeen.Equal(t0) || !data.LastSeen.Equal(t0) || data.Reason != "" {
		t.Errorf("started event data: %+v", data)
	}
	if strings.Contains(string(ev.Data), "token-1") {
		t.Error("started event carries the raw token")
	}

	rec, ok := h.record(key)
	if !ok {
		t.Fatal("no session record after the first request")
	}
	want := sessions.Record{
		SessionKey: key, Issuer: issuer, Subject: "alice", PrincipalID: p.ID, PrincipalType: schemas.PrincipalUser,
		Groups: []string{"data-scientists"}, SessionID: "sid-alice-1",
		AuthTime: &auth, FirstSeen: t0, LastSeen: t0, LastTokenFingerprint: schemas.Fingerprint("token-1"),
		LastRequestID: "req-1", TokenCount: 1, TokenFingerprints: []string{schemas.Fingerprint("token-1")},
	}
	if n := len(h.sessionEvents(schemas.TypeSessionTokenSeen)); n != 0 {
		t.Errorf("token_issued events after the first request: got %d, want 0 (started covers it)", n)
	}
	if diff := diffRecord(want, rec); diff != "" {
		t.Errorf("record after the first request: %s", diff)
	}

	h.clock.Advance(5 * time.Minute)
	h.track(verified("req-2", "token-2", p))

	if n := len(h.sessionEvents(schemas.TypeSessionStarted)); n != 1 {
		t.Errorf("started events after the second request: got %d, want 1", n)
	}
	rec, ok = h.record(key)
	if !ok {
		t.Fatal("no session record after the second request")
	}
	want.LastSeen, want.LastTokenFingerprint, want.LastRequestID, want.TokenCount = t0.Add(5*time.Minute), schemas.Fingerprint("token-2"), "req-2", 2
	want.TokenFingerprints = append(want.TokenFingerprints, schemas.Fingerprint("token-2"))
	if diff := diffRecord(want, rec); diff != "" {
		t.Errorf("record after the second request: %s", diff)
	}
	// The refreshed token is the session's issuance footprint: one
	// token_issued event, and none for a token seen before.
	issued := h.sessionEvents(schemas.TypeSessionTokenSeen)
	if len(issued) != 1 {
		t.Fatalf("token_issued events after a new token: got %d, want 1", len(issued))
	}
	if d := decodeSessionEvent(t, issued[0]); d.TokenFingerprint != schemas.Fingerprint("token-2") || d.RequestID != "req-2" || d.SessionKey != key {
		t.Errorf("token_issued data: %+v", d)
	}
	h.track(verified("req-3", "token-1", p))
	h.track(verified("req-4", "token-2", p))
	if n := len(h.sessionEvents(schemas.TypeSessionTokenSeen)); n != 1 {
		t.Errorf("token_issued events after reusing known tokens: got %d, want 1", n)
	}
	if got := metric(t, h.reg, "aigov_reaper_sessions_started_total"); got != 1 {
		t.Errorf("aigov_reaper_sessions_started_total = %v, want 1", got)
	}
}

func diffRecord(want, got sessions.Record) string {
	w, _ := json.Marshal(want)
	g, _ := json.Marshal(got)
	if string(w) != string(g) {
		return fmt.Sprintf("\n got %s\nwant %s", g, w)
	}
	return ""
}

// A verified event delivered again, or a crash between the started publish
// and the record's creation, never yields a second started event or a
// double count.
func TestRedeliveryDoesNotDoubleCount(t *testing.T) {
	t.Parallel()
	p := principal("carol", "sid-carol", ptr(t0))

	t.Run("same verified event twice", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, testConfig())
		v := verified("req-dup", "token", p)
		h.track(v)
		h.clock.Advance(time.Minute)
		h.track(v) // a second copy on the stream: what a redelivery looks like to the handler

		if n := len(h.sessionEvents(schemas.TypeSessionStarted)); n != 1 {
			t.Errorf("started events: got %d, want 1", n)
		}
		rec, ok := h.record(v.SessionKey)
		if !ok {
			t.Fatal("no session record")
		}
		if rec.TokenCount != 1 || !rec.LastSeen.Equal(t0) {
			t.Errorf("record after a redelivery: token_count %d last_seen %s, want 1 and %s", rec.TokenCount, rec.LastSeen, t0)
		}
	})

	t.Run("crash after the started publish", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, testConfig())
		v := verified("req-crash", "token", p)
		// The run that crashed got as far as publishing the started event.
		id := schemas.DerivedID(v.SessionKey, "started")
		ev, err := schemas.NewEvent(id, sessions.Source, schemas.TypeSessionStarted, t0, schemas.SessionEvent{SessionKey: v.SessionKey})
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(ev)
		if _, err := h.admin.PublishMsg(h.ctx, &nats.Msg{Subject: h.topo.Subjects.Session(schemas.SessionStarted), Data: b}, jetstream.WithMsgID(id)); err != nil {
			t.Fatal(err)
		}

		h.track(v)

		if n := len(h.sessionEvents(schemas.TypeSessionStarted)); n != 1 {
			t.Errorf("started events: got %d, want 1", n)
		}
		if rec, ok := h.record(v.SessionKey); !ok || rec.TokenCount != 1 {
			t.Errorf("record after the retried start: %+v (present %v), want token_count 1", rec, ok)
		}
	})
}

// Concurrent requests of one session all count: updates are compare-and-set.
func TestConcurrentRequestsOfOneSession(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Workers = 8
	h := newHarness(t, cfg)
	p := principal("erin", "sid-erin", ptr(t0))
	const n = 40
	var last uint64
	for i := range n {
		last = h.publishVerified(verified(fmt.Sprintf("req-%d", i), "token", p))
	}
	h.waitHandled(last)

	rec, ok := h.record(schemas.SessionKey(schemas.Principal{Issuer: issuer, SessionID: "sid-erin", Subject: "erin", AuthTime: ptr(t0)}))
	if !ok {
		t.Fatal("no session record")
	}
	if rec.TokenCount != n {
		t.Errorf("token_count: got %d, want %d", rec.TokenCount, n)
	}
	if got := len(h.sessionEvents(schemas.TypeSessionStarted)); got != 1 {
		t.Errorf("started events: got %d, want 1", got)
	}
}

// A request of a session that has ended neither recreates its record nor
// announces it again.
func TestRevokedSessionIsNotRecreated(t *testing.T) {
	t.Parallel()

	t.Run("revoked by a kill switch", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, testConfig())
		v := verified("req-after-kill", "token", principal("oscar", "sid-oscar", ptr(t0)))
		rv, _ := json.Marshal(schemas.Revocation{SessionKey: v.SessionKey, Code: schemas.CodeSessionRevoked, Reason: "kill switch", At: t0})
		if _, err := h.bucket(h.topo.BucketRevocations()).Put(h.ctx, v.SessionKey, rv); err != nil {
			t.Fatal(err)
		}

		h.track(v)

		if _, ok := h.record(v.SessionKey); ok {
			t.Error("a revoked session was recorded")
		}
		if n := len(h.sessionEvents(schemas.TypeSessionStarted)); n != 0 {
			t.Errorf("started events for a revoked session: got %d, want 0", n)
		}
	})

	t.Run("expired by the reaper", func(t *testing.T) {
		t.Parallel()
		h := newHarness(t, testConfig())
		p := principal("rita", "sid-rita", ptr(t0))
		v := verified("req-1", "token", p)
		h.track(v)
		h.clock.Advance(h.cfg.IdleTimeout)
		if res := h.sweep(h.reaper); res.Expired != 1 {
			t.Fatalf("sweep: %+v, want 1 expired", res)
		}

		h.clock.Advance(time.Minute)
		h.track(verified("req-2", "token", p))

		if _, ok := h.record(v.SessionKey); ok {
			t.Error("an expired session was revived")
		}
		if n := len(h.sessionEvents(schemas.TypeSessionStarted)); n != 1 {
			t.Errorf("started events: got %d, want 1", n)
		}
	})
}

// A verified event the reaper cannot use is terminated, not retried, and
// leaves no trace in the buckets.
func TestBadVerifiedEventsAreTerminated(t *testing.T) {
	t.Parallel()
	h := newHarness(t, testConfig())
	good := verified("req-bad", "token", principal("alice", "sid", ptr(t0)))
	envelope := func(typ string, data any) []byte {
		ev, err := schemas.NewEvent("ev-"+typ, "aigov/authn", typ, t0, data)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(ev)
		return b
	}
	noKey := good
	noKey.SessionKey = ""
	badKey := good
	badKey.SessionKey = "has spaces.*"
	noRequest := good
	noRequest.RequestID = ""
	payloads := map[string][]byte{
		"not json":           []byte("{nope"),
		"not a cloud event":  []byte(`{"hello":"world"}`),
		"wrong type":         envelope(schemas.TypeRequest, good),
		"unknown field":      envelope(schemas.TypeVerified, map[string]any{"session_key": "abc", "request_id": "r", "bogus": 1}),
		"no session key":     envelope(schemas.TypeVerified, noKey),
		"invalid key":        envelope(schemas.TypeVerified, badKey),
		"no request id":      envelope(schemas.TypeVerified, noRequest),
		"data is not object": envelope(schemas.TypeVerified, "string"),
	}
	var last uint64
	for _, b := range payloads {
		last = h.publishRaw(b)
	}
	h.waitHandled(last)

	if got := metric(t, h.reg, "aigov_messages_handled_total", "outcome", "term"); got != float64(len(payloads)) {
		t.Errorf("terminated messages: got %v, want %d", got, len(payloads))
	}
	if got := metric(t, h.reg, "aigov_messages_handled_total", "outcome", "nak"); got != 0 {
		t.Errorf("nak'ed messages: got %v, want 0", got)
	}
	keys, err := h.bucket(h.topo.BucketSessions()).Keys(h.ctx)
	if err == nil || len(keys) != 0 {
		t.Errorf("sessions recorded from bad events: %v (err %v)", keys, err)
	}
}

func TestNewRejectsMissingDeps(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	_, js := srv.ConnectT(t, schemas.RoleReaper)
	topo := topology.New("")
	// Cleanup, not defer: the parallel subtests run after this body returns.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	signer := devkeys.New(t).Signer(schemas.RoleReaper)
	valid := func() sessions.Deps {
		return sessions.Deps{JS: js, Topology: topo, Log: zerolog.Nop(), Registry: prometheus.NewRegistry(), Now: time.Now, Signer: signer}
	}
	if _, err := sessions.New(ctx, testConfig(), valid()); err != nil {
		t.Fatalf("valid deps refused: %v", err)
	}
	cases := map[string]struct {
		deps func() sessions.Deps
		cfg  func(*sessions.Config)
		want string
	}{
		"nil jetstream": {deps: func() sessions.Deps { d := valid(); d.JS = nil; return d }, want: "nil jetstream"},
		"nil registry":  {deps: func() sessions.Deps { d := valid(); d.Registry = nil; return d }, want: "nil metrics registry"},
		"nil clock":     {deps: func() sessions.Deps { d := valid(); d.Now = nil; return d }, want: "nil clock"},
		"no signer":     {deps: func() sessions.Deps { d := valid(); d.Signer = nil; return d }, want: "no signing key"},
		"zero max age":  {deps: valid, cfg: func(c *sessions.Config) { c.MaxAge = 0 }, want: "AIGOV_SESSION_MAX_AGE must be positive"},
		"zero max scan": {deps: valid, cfg: func(c *sessions.Config) { c.MaxScan = 0 }, want: "AIGOV_REAPER_MAX_SCAN"},
		"no buckets": {deps: func() sessions.Deps {
			d := valid()
			d.Topology = topology.New("other")
			return d
		}, want: "open bucket other_sessions"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			cfg := testConfig()
			if tc.cfg != nil {
				tc.cfg(&cfg)
			}
			_, err := sessions.New(ctx, cfg, tc.deps())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}
