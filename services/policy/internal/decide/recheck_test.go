package decide

import (
	"context"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
)

// allowedRequest is alice's request that the sample policies allow
// (TestServiceDecidesAndReplies): any deny of it comes from elsewhere.
func allowedRequest(t *testing.T, requestID, sessionKey string) schemas.Verified {
	t.Helper()
	v := verified(t, "alice", "model.retrain", "Model", "fraud-detector", map[string]any{"environment": "staging"})
	v.RequestID, v.SessionKey = requestID, sessionKey
	return v
}

// decisionsByRequest reads every decision stored in the decisions stream.
func (h *harness) decisionsByRequest(t *testing.T) map[string]schemas.Decision {
	t.Helper()
	msgs := h.decisionMsgs(t)
	out := make(map[string]schemas.Decision, len(msgs))
	for _, m := range msgs {
		_, d := decodeDecision(t, m)
		if _, dup := out[d.RequestID]; dup {
			t.Fatalf("two decisions stored for request %s", d.RequestID)
		}
		out[d.RequestID] = d
	}
	return out
}

// decisionMsgs reads the body of every message in the decisions stream.
func (h *harness) decisionMsgs(t *testing.T) [][]byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, h.topo.StreamDecisions())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("decision %d: %v", seq, err)
		}
		out = append(out, m.Data)
	}
	return out
}

// revocations opens the revocation bucket as admin (the test plays the
// reaper or an operator writing to it).
func (h *harness) revocations(t *testing.T) jetstream.KeyValue {
	t.Helper()
	kv, err := h.js.KeyValue(context.Background(), h.topo.BucketRevocations())
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// evaluations is how many requests Cedar evaluated.
func (h *harness) evaluations(t *testing.T) uint64 {
	t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == "aigov_policy_evaluation_seconds" && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetHistogram().GetSampleCount()
		}
	}
	t.Fatal("no metric aigov_policy_evaluation_seconds")
	return 0
}

// counter is the value of the counter name{label=value} in the service's
// registry.
func (h *harness) counter(t *testing.T, name, label, value string) float64 {
	t.Helper()
	families, err := h.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	t.Fatalf("no metric %s{%s=%q}", name, label, value)
	return 0
}

// TestRecheckDeniesBeforeCedar: a verified request of a revoked or
// reaper-expired session, naming an ended job lease, or carrying a token
// that expired while it waited is denied by policy with the code authn
// would have given, before Cedar runs, as an ordinary stored policy-stage
// decision; the same request of a live session with a live token is
// allowed, so the denies are the recheck's.
func TestRecheckDeniesBeforeCedar(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 4)
	kv := h.revocations(t)
	ctx := context.Background()
	put := func(key string, value []byte) {
		t.Helper()
		if _, err := kv.Put(ctx, key, value); err != nil {
			t.Fatal(err)
		}
	}
	revocation := func(key string, code schemas.Code, reason string) []byte {
		b, _ := json.Marshal(schemas.Revocation{SessionKey: key, Code: code, Reason: reason, At: time.Now(), By: schemas.ByReaper})
		return b
	}
	put("sk-revoked", revocation("sk-revoked", schemas.CodeSessionRevoked, "stolen laptop"))
	put("sk-max-age", revocation("sk-max-age", schemas.CodeSessionExpired, "session exceeded max age 8h0m0s"))
	put("sk-unreadable", []byte("{not json"))
	put(schemas.LeaseRevocationKey("lease-ended"), revocation(schemas.LeaseRevocationKey("lease-ended"), schemas.CodeLeaseExpired, "job lease ended: missed_heartbeat"))

	cases := []struct {
		name   string
		edit   func(*schemas.Verified)
		code   schemas.Code
		reason string
	}{
		{name: "revoked session", edit: func(v *schemas.Verified) { v.SessionKey = "sk-revoked" },
			code: schemas.CodeSessionRevoked, reason: "stolen laptop"},
		{name: "session past its max age", edit: func(v *schemas.Verified) { v.SessionKey = "sk-max-age" },
			code: schemas.CodeSessionExpired, reason: "session exceeded max age 8h0m0s"},
		{name: "unreadable revocation", edit: func(v *schemas.Verified) { v.SessionKey = "sk-unreadable" },
			code: schemas.CodeSessionRevoked, reason: "the session is revoked (unreadable revocation record)"},
		{name: "ended job lease", edit: func(v *schemas.Verified) { v.Request.Context[schemas.ContextLeaseID] = "lease-ended" },
			code: schemas.CodeLeaseExpired, reason: "job lease ended: missed_heartbeat"},
		{name: "token expired while queued", edit: func(v *schemas.Verified) { v.Principal.ExpiresAt = time.Now().Add(-time.Second) },
			code: schemas.CodeTokenExpired},
		{name: "token expiring now", edit: func(v *schemas.Verified) { v.Principal.ExpiresAt = time.Now() },
			code: schemas.CodeTokenExpired},
		{name: "no exp", edit: func(v *schemas.Verified) { v.Principal.ExpiresAt = time.Time{} },
			code: schemas.CodeTokenExpired},
		{name: "control: live session and token", edit: func(*schemas.Verified) {}},
	}
	for i, tc := range cases {
		v := allowedRequest(t, "recheck-"+strconv.Itoa(i), "sk-live")
		tc.edit(&v)
		h.publishVerified(t, v, v.RequestID)
	}
	h.waitSettled(t, uint64(len(cases)))
	got := h.decisionsByRequest(t)
	for i, tc := range cases {
		d, ok := got["recheck-"+strconv.Itoa(i)]
		switch {
		case !ok:
			t.Errorf("%s: no decision stored", tc.name)
		case tc.code == "":
			if !d.Allowed() {
				t.Errorf("%s: %s/%s (%s), want allow", tc.name, d.Decision, d.Code, d.Reason)
			}
		case d.Decision != schemas.Deny || d.Code != tc.code || d.Stage != schemas.StagePolicy:
			t.Errorf("%s: %s/%s at %s, want deny/%s at policy", tc.name, d.Decision, d.Code, d.Stage, tc.code)
		case tc.reason != "" && d.Reason != tc.reason:
			t.Errorf("%s: reason %q, want %q", tc.name, d.Reason, tc.reason)
		case len(d.PolicyIDs) != 0 || d.Principal == nil || d.PolicyVersion != seedSet(t).Version() || d.Timings.DecidedAt.IsZero():
			t.Errorf("%s: policy ids %v, principal %v, version %q, timings %+v", tc.name, d.PolicyIDs, d.Principal, d.PolicyVersion, d.Timings)
		}
	}
	if n := h.evaluations(t); n != 1 {
		t.Errorf("Cedar evaluated %d requests, want only the control's", n)
	}
	if n := testutil.ToFloat64(h.svc.decisions.WithLabelValues(schemas.Deny, string(schemas.CodeSessionRevoked))); n != 2 {
		t.Errorf("aigov_policy_decisions_total{deny,session_revoked} = %v, want 2", n)
	}
}

// queueAndDecide queues n verified events of one session on h while
// policy is down, plus one of another session as a control, lets between
// run, then starts policy and returns every stored decision.
func queueAndDecide(t *testing.T, h *harness, n int, session string, edit func(*schemas.Verified), between func()) map[string]schemas.Decision {
	t.Helper()
	for i := range n {
		v := allowedRequest(t, "queued-"+strconv.Itoa(i), session)
		edit(&v)
		h.publishVerified(t, v, v.RequestID)
	}
	h.publishVerified(t, allowedRequest(t, "control", "sk-control"), "control")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, h.topo.StreamVerified())
	if err != nil {
		t.Fatal(err)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != uint64(n+1) {
		t.Fatalf("verified stream: %+v (%v), want %d queued", info, err, n+1)
	}
	between()
	h.start(t)
	h.waitSettled(t, uint64(n+1))
	got := h.decisionsByRequest(t)
	if len(got) != n+1 {
		t.Fatalf("%d decisions stored for %d queued requests", len(got), n+1)
	}
	if d := got["control"]; !d.Allowed() {
		t.Fatalf("control request of a live session: %s/%s (%s), want allow", d.Decision, d.Code, d.Reason)
	}
	return got
}

// assertAllDenied checks that each of the n queued requests has a stored
// deny with code, and that none was allowed.
func assertAllDenied(t *testing.T, got map[string]schemas.Decision, n int, code schemas.Code) {
	t.Helper()
	allowed, wrong := 0, 0
	for i := range n {
		d, ok := got["queued-"+strconv.Itoa(i)]
		switch {
		case !ok:
			t.Fatalf("queued request %d has no stored decision", i)
		case d.Allowed():
			allowed++
		case d.Code != code || d.Stage != schemas.StagePolicy:
			wrong++
			t.Logf("queued request %d: %s/%s at %s", i, d.Decision, d.Code, d.Stage)
		}
	}
	if allowed != 0 || wrong != 0 {
		t.Fatalf("of %d queued requests %d were allowed and %d denied otherwise; want all denied %s", n, allowed, wrong, code)
	}
}

// TestQueuedRequestsOfARevokedSessionAreDenied is issue 11's queued
// revocation case: 200 requests of one session have passed authn (played
// here by the test, which publishes what authn would) and wait in
// AIGOV_VERIFIED while policy is down; the session is revoked with the kill
// switch as the reaper's NATS user; policy then starts and allows none of
// them: all 200 are stored denies session_revoked. A request of another
// session queued with them is allowed.
func TestQueuedRequestsOfARevokedSessionAreDenied(t *testing.T) {
	t.Parallel()
	const n = 200
	session := schemas.SessionKey(schemas.Principal{Issuer: testIss, SessionID: "sid-queued", Subject: "alice"})
	h := newHarness(t, 32)
	got := queueAndDecide(t, h, n, session, func(*schemas.Verified) {}, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		reaper, err := h.srv.Connect(schemas.RoleReaper)
		if err != nil {
			t.Fatal(err)
		}
		defer reaper.Close()
		rjs, err := jetstream.New(reaper)
		if err != nil {
			t.Fatal(err)
		}
		sw, err := killswitch.New(ctx, rjs, h.topo, nil, time.Now)
		if err != nil {
			t.Fatal(err)
		}
		res, err := sw.Revoke(ctx, killswitch.Selector{SessionKey: session}, "test-operator", "stolen laptop")
		if err != nil || len(res.Revoked) != 1 {
			t.Fatalf("revoke: %+v (%v)", res, err)
		}
	})
	assertAllDenied(t, got, n, schemas.CodeSessionRevoked)
	if n := testutil.ToFloat64(h.svc.decisions.WithLabelValues(schemas.Allow, "none")); n != 1 {
		t.Errorf("aigov_policy_decisions_total{allow,none} = %v, want 1 (the control)", n)
	}
}

// TestQueuedRequestsWithAnExpiredTokenAreDenied is the same with a
// short-lived token: 200 requests verified while it was valid wait in
// AIGOV_VERIFIED past its exp (real time); policy then starts and allows
// none of them: all 200 are stored denies token_expired.
func TestQueuedRequestsWithAnExpiredTokenAreDenied(t *testing.T) {
	t.Parallel()
	const n = 200
	exp := time.Now().Add(1500 * time.Millisecond).Truncate(time.Second) // JWT exp is whole seconds
	if time.Until(exp) < 200*time.Millisecond {
		exp = exp.Add(time.Second)
	}
	h := newHarness(t, 32)
	got := queueAndDecide(t, h, n, schemas.SessionKey(schemas.Principal{Issuer: testIss, SessionID: "sid-short", Subject: "alice"}),
		func(v *schemas.Verified) { v.Principal.ExpiresAt = exp },
		func() {
			if time.Now().After(exp) {
				t.Fatal("the token expired before all requests were queued; the test proves nothing")
			}
			time.Sleep(time.Until(exp) + 10*time.Millisecond)
		})
	assertAllDenied(t, got, n, schemas.CodeTokenExpired)
}

// TestQueuedRequestsPastMaxAgeAreDenied is issue 18's reaper outage at
// decision time: 200 requests of one session, verified while it was young
// enough, wait in AIGOV_VERIFIED until its max age (from auth_time) has
// passed; no reaper runs, so no revocation is ever written. Policy then
// starts and allows none of them: all 200 are stored denies
// session_expired (the control, a younger session, is allowed).
func TestQueuedRequestsPastMaxAgeAreDenied(t *testing.T) {
	t.Parallel()
	const n = 200
	const maxAge = time.Hour
	due := time.Now().Add(1500 * time.Millisecond)
	authTime := due.Add(-maxAge).UTC()
	h := newHarness(t, 32, func(c *Config) { c.SessionLimits = sessionlimits.Limits{MaxAge: maxAge} })
	got := queueAndDecide(t, h, n, schemas.SessionKey(schemas.Principal{Issuer: testIss, SessionID: "sid-old", Subject: "alice"}),
		func(v *schemas.Verified) { v.Principal.AuthTime, v.Principal.SessionID = &authTime, "sid-old" },
		func() {
			if time.Now().After(due) {
				t.Fatal("the session reached its max age before all requests were queued; the test proves nothing")
			}
			time.Sleep(time.Until(due) + 10*time.Millisecond)
		})
	assertAllDenied(t, got, n, schemas.CodeSessionExpired)
	if r := got["queued-0"].Reason; r != "session exceeded max age 1h0m0s" {
		t.Errorf("reason %q", r)
	}
}

// TestRevocationRightBeforeTheDecisionDenies: with policy running, a
// revocation whose KV write has returned denies the very next request of
// the session, with no wait for the watcher: the lookup's freshness barrier
// closes the window between the write and the watcher seeing it. Repeated
// to give the watcher's lag every chance.
func TestRevocationRightBeforeTheDecisionDenies(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 4)
	kv := h.revocations(t)
	ctx := context.Background()
	const rounds = 25
	for i := range rounds {
		session := "sk-race-" + strconv.Itoa(i)
		before := allowedRequest(t, "race-before-"+strconv.Itoa(i), session)
		h.publishVerified(t, before, before.RequestID)
		h.waitSettled(t, uint64(2*i+1))
		b, _ := json.Marshal(schemas.Revocation{SessionKey: session, Code: schemas.CodeSessionRevoked, Reason: "race", At: time.Now()})
		if _, err := kv.Create(ctx, session, b); err != nil {
			t.Fatal(err)
		}
		after := allowedRequest(t, "race-after-"+strconv.Itoa(i), session)
		h.publishVerified(t, after, after.RequestID)
		h.waitSettled(t, uint64(2*i+2))
	}
	got := h.decisionsByRequest(t)
	for i := range rounds {
		if d := got["race-before-"+strconv.Itoa(i)]; !d.Allowed() {
			t.Fatalf("round %d: before the revocation: %s/%s, want allow", i, d.Decision, d.Code)
		}
		if d := got["race-after-"+strconv.Itoa(i)]; d.Decision != schemas.Deny || d.Code != schemas.CodeSessionRevoked {
			t.Fatalf("round %d: right after the revocation: %s/%s, want deny/session_revoked", i, d.Decision, d.Code)
		}
	}
	if n := h.counter(t, "aigov_policy_revocation_lookups_total", "via", "kv"); n != 0 {
		t.Errorf("%v lookups read the bucket; the in-memory set should have answered all", n)
	}
	if n := h.counter(t, "aigov_policy_revocation_lookups_total", "via", "set"); n < 2*rounds {
		t.Errorf("the in-memory set answered %v lookups, want at least %d", n, 2*rounds)
	}
}

// TestNoDecisionUntilTheRevocationSetLoads: policy fails closed like
// authn. With the revocation bucket gone its set cannot load, so the
// service is not ready and decides nothing (the queued request waits, it
// is not allowed unchecked); once the bucket is back, holding the
// session's revocation, the request is denied session_revoked.
func TestNoDecisionUntilTheRevocationSetLoads(t *testing.T) {
	t.Parallel()
	h := newHarness(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := h.js.DeleteKeyValue(ctx, h.topo.BucketRevocations()); err != nil {
		t.Fatal(err)
	}
	v := allowedRequest(t, "while-unloaded", "sk-unloaded")
	h.publishVerified(t, v, v.RequestID)
	if h.svc.Ready(ctx) == nil {
		t.Fatal("ready before the revocation set was loaded")
	}
	h.start(t)
	time.Sleep(time.Second)
	if h.svc.Ready(ctx) == nil {
		t.Fatal("ready without a revocation bucket")
	}
	if n := h.decisionCount(t); n != 0 {
		t.Fatalf("%d decisions made without a revocation set", n)
	}
	var cfg jetstream.KeyValueConfig
	for _, b := range h.topo.Buckets() {
		if b.Bucket == h.topo.BucketRevocations() {
			cfg = b
		}
	}
	kv, err := h.js.CreateKeyValue(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(schemas.Revocation{SessionKey: "sk-unloaded", Code: schemas.CodeSessionRevoked, Reason: "revoked while policy could not check", At: time.Now()})
	if _, err := kv.Create(ctx, "sk-unloaded", b); err != nil {
		t.Fatal(err)
	}
	h.waitSettled(t, 1)
	if err := h.svc.Ready(ctx); err != nil {
		t.Fatalf("not ready once the bucket is back: %v", err)
	}
	if d := h.decisionsByRequest(t)[v.RequestID]; d.Decision != schemas.Deny || d.Code != schemas.CodeSessionRevoked {
		t.Fatalf("got %s/%s, want deny/session_revoked", d.Decision, d.Code)
	}
}
