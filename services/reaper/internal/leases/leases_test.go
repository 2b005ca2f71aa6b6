package leases_test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/reaper/internal/leases"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/topology"
)

var t0 = time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Set(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t0.Add(d)
}

type harness struct {
	t     *testing.T
	ctx   context.Context
	srv   *natsdev.Server
	topo  topology.Topology
	admin jetstream.JetStream
	clock *clock
	cfg   leases.Config
	cons  jetstream.Consumer
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	srv := natsdev.StartT(t, natsdev.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	h := &harness{t: t, ctx: ctx, srv: srv, topo: topology.New(""), clock: &clock{now: t0},
		cfg: leases.Config{HeartbeatTTL: 5 * time.Minute, MaxDuration: time.Hour, Interval: time.Second, TTLGrace: time.Hour, MaxScan: 1000}}
	h.admin = h.js(natsdev.AdminUser)
	rjs := h.js(schemas.RoleReaper)
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	var err error
	if h.cons, err = h.topo.Bind(ctx, rjs, schemas.ConsumerReaperLeases); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *harness) js(user string) jetstream.JetStream {
	h.t.Helper()
	nc, err := h.srv.Connect(user)
	if err != nil {
		h.t.Fatal(err)
	}
	h.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		h.t.Fatal(err)
	}
	return js
}

// replica is one reaper's lease keeper, as the reaper user.
func (h *harness) replica() *leases.Leases {
	h.t.Helper()
	js := h.js(schemas.RoleReaper)
	sw, err := killswitch.New(h.ctx, js, h.topo, nil, h.clock.Now)
	if err != nil {
		h.t.Fatal(err)
	}
	l, err := leases.New(h.ctx, h.cfg, leases.Deps{JS: js, Topology: h.topo, Switch: sw, Log: zerolog.Nop(), Now: h.clock.Now})
	if err != nil {
		h.t.Fatal(err)
	}
	return l
}

// run consumes decisions with l until the test ends.
func (h *harness) run(l *leases.Leases) {
	runner := servicekit.NewRunner(schemas.ConsumerReaperLeases, zerolog.Nop(), prometheus.NewRegistry(), 2)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- runner.Run(ctx, h.cons, l.Handle) }()
	h.t.Cleanup(func() { stop(); <-done })
}

var alice = schemas.Principal{ID: schemas.PrincipalID("https://idp.test", "alice"), Type: schemas.PrincipalUser, Issuer: "https://idp.test", Subject: "alice", SessionID: "s1"}

// decide publishes an allowed decision as policy would and waits until the
// lease consumer has acked it.
func (h *harness) decide(requestID, action string, p schemas.Principal, ctx map[string]any) schemas.Decision {
	h.t.Helper()
	now := h.clock.Now()
	d := schemas.Decision{
		RequestID: requestID, Action: action, Resource: schemas.Resource{Type: "Model", ID: "churn"}, Context: ctx,
		Principal: &p, Decision: schemas.Allow, Stage: schemas.StagePolicy, PolicyIDs: []string{"p"}, PolicyVersion: "v",
		SessionKey: schemas.SessionKey(p), Timings: schemas.Timings{ReceivedAt: now, DecidedAt: now},
		Lease: schemas.LeaseFor(action, requestID, now, schemas.DefaultLeaseTTL),
	}
	ev, err := schemas.NewEvent(schemas.DerivedID(requestID, "decision"), "aigov/policy", schemas.TypeDecision, now, d)
	if err != nil {
		h.t.Fatal(err)
	}
	b, _ := json.Marshal(ev)
	ack, err := h.admin.Publish(h.ctx, h.topo.Subjects.Decision(action), b)
	if err != nil {
		h.t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := h.cons.Info(h.ctx)
		if err != nil {
			h.t.Fatal(err)
		}
		if info.AckFloor.Stream >= ack.Sequence && info.NumAckPending == 0 {
			return d
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("decision %s not handled", requestID)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (h *harness) lease(id string) (killswitch.Lease, bool) {
	h.t.Helper()
	kv, _ := h.admin.KeyValue(h.ctx, h.topo.BucketLeases())
	l, ok, err := natsdev.GetJSON[killswitch.Lease](h.ctx, kv, schemas.LeaseRevocationKey(id))
	if err != nil {
		h.t.Fatal(err)
	}
	return l, ok
}

func (h *harness) tombstone(id string) (schemas.Revocation, bool) {
	h.t.Helper()
	kv, _ := h.admin.KeyValue(h.ctx, h.topo.BucketRevocations())
	r, ok, err := natsdev.GetJSON[schemas.Revocation](h.ctx, kv, schemas.LeaseRevocationKey(id))
	if err != nil {
		h.t.Fatal(err)
	}
	return r, ok
}

// events returns the session stream's events of type typ.
func (h *harness) events(typ string) []schemas.SessionEvent {
	h.t.Helper()
	st, _ := h.admin.Stream(h.ctx, h.topo.StreamSessions())
	info, _ := st.Info(h.ctx)
	var out []schemas.SessionEvent
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(h.ctx, seq)
		if err != nil {
			continue
		}
		ev, err := schemas.ParseEvent(m.Data)
		if err != nil || ev.Type != typ {
			continue
		}
		var s schemas.SessionEvent
		if err := ev.DecodeData(&s); err != nil {
			h.t.Fatal(err)
		}
		out = append(out, s)
	}
	return out
}

func sweep(t *testing.T, l *leases.Leases) leases.SweepResult {
	t.Helper()
	res, err := l.Sweep(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// An allowed job.start grants the lease the decision names; heartbeats
// move its deadline; a missed heartbeat ends it with a tombstone and a
// lease_expired event; a heartbeat after the end changes nothing.
func TestLeaseHeartbeatsThenMissed(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	l := h.replica()
	h.run(l)
	d := h.decide("job-1", schemas.ActionJobStart, alice, nil)
	if d.Lease == nil {
		t.Fatal("job.start decision has no lease")
	}
	rec, ok := h.lease(d.Lease.ID)
	if !ok || !rec.Deadline.Equal(t0.Add(schemas.DefaultLeaseTTL)) || !rec.MaxDeadline.Equal(t0.Add(time.Hour)) || rec.PrincipalID != alice.ID {
		t.Fatalf("lease record = %+v, %v", rec, ok)
	}
	if n := len(h.events(schemas.TypeLeaseStarted)); n != 1 {
		t.Errorf("lease_started events = %d, want 1", n)
	}
	h.decide("job-1", schemas.ActionJobStart, alice, nil) // redelivered start
	if n := len(h.events(schemas.TypeLeaseStarted)); n != 1 {
		t.Errorf("lease_started events after a repeat = %d, want 1", n)
	}

	h.clock.Set(4 * time.Minute)
	h.decide("hb-1", schemas.ActionJobHeartbeat, alice, map[string]any{"lease_id": d.Lease.ID})
	rec, _ = h.lease(d.Lease.ID)
	if want := t0.Add(9 * time.Minute); !rec.Deadline.Equal(want) || rec.Heartbeats != 1 {
		t.Errorf("after a heartbeat: deadline %s heartbeats %d, want %s and 1", rec.Deadline, rec.Heartbeats, want)
	}
	// Another principal's heartbeat does not extend alice's lease.
	bob := alice
	bob.ID, bob.Subject = schemas.PrincipalID(alice.Issuer, "bob"), "bob"
	h.clock.Set(8 * time.Minute)
	h.decide("hb-bob", schemas.ActionJobHeartbeat, bob, map[string]any{"lease_id": d.Lease.ID})
	if rec, _ = h.lease(d.Lease.ID); !rec.Deadline.Equal(t0.Add(9 * time.Minute)) {
		t.Errorf("bob's heartbeat moved alice's lease to %s", rec.Deadline)
	}

	h.clock.Set(9*time.Minute - time.Second)
	if res := sweep(t, l); res.Ended != 0 {
		t.Fatalf("lease ended before its deadline: %+v", res)
	}
	h.clock.Set(9 * time.Minute)
	if res := sweep(t, l); res.Ended != 1 {
		t.Fatalf("sweep at the deadline = %+v, want 1 ended", res)
	}
	if _, ok := h.lease(d.Lease.ID); ok {
		t.Error("lease record still there after its end")
	}
	tomb, ok := h.tombstone(d.Lease.ID)
	if !ok || tomb.Code != schemas.CodeLeaseExpired {
		t.Errorf("tombstone = %+v, %v; want code lease_expired", tomb, ok)
	}
	ended := h.events(schemas.TypeLeaseExpired)
	if len(ended) != 1 || ended[0].Reason != schemas.ReasonMissedHeartbeat || ended[0].LeaseID != d.Lease.ID || ended[0].RequestID != "job-1" {
		t.Fatalf("lease_expired events = %+v", ended)
	}
	h.clock.Set(10 * time.Minute)
	h.decide("hb-2", schemas.ActionJobHeartbeat, alice, map[string]any{"lease_id": d.Lease.ID})
	if _, ok := h.lease(d.Lease.ID); ok {
		t.Error("a heartbeat after the end revived the lease")
	}
	h.decide("job-1", schemas.ActionJobStart, alice, nil) // a start redelivered after the end
	if _, ok := h.lease(d.Lease.ID); ok {
		t.Error("a redelivered start after the end revived the lease")
	}
}

// Heartbeats never carry a lease past its maximum duration; reaching it
// ends the lease with reason max_duration. Two replicas sweeping at once
// publish one end.
func TestLeaseMaxDurationTwoReplicas(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	a, b := h.replica(), h.replica()
	h.run(a)
	d := h.decide("job-2", schemas.ActionJobStart, alice, nil)
	for i, at := range []time.Duration{4, 8, 12, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 59} {
		h.clock.Set(at * time.Minute)
		h.decide("hb-"+string(rune('a'+i)), schemas.ActionJobHeartbeat, alice, map[string]any{"lease_id": d.Lease.ID})
	}
	rec, _ := h.lease(d.Lease.ID)
	if !rec.Deadline.Equal(t0.Add(time.Hour)) {
		t.Fatalf("deadline after heartbeats near the max = %s, want the max %s", rec.Deadline, t0.Add(time.Hour))
	}
	h.clock.Set(time.Hour)
	var wg sync.WaitGroup
	results := make([]leases.SweepResult, 2)
	for i, r := range []*leases.Leases{a, b} {
		wg.Go(func() { results[i] = sweep(t, r) })
	}
	wg.Wait()
	if results[0].Ended+results[1].Ended != 1 {
		t.Errorf("replicas ended %d and %d leases, want 1 in total", results[0].Ended, results[1].Ended)
	}
	ended := h.events(schemas.TypeLeaseExpired)
	if len(ended) != 1 || ended[0].Reason != schemas.ReasonMaxDuration {
		t.Fatalf("lease_expired events = %+v, want one with reason max_duration", ended)
	}
}

// A restarted reaper (a new replica on the same buckets) ends the leases
// that fell due while it was down.
func TestLeaseEndsAfterRestart(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	first := h.replica()
	h.run(first)
	d := h.decide("job-3", schemas.ActionJobStart, alice, nil)
	h.clock.Set(30 * time.Minute)
	second := h.replica()
	if res := sweep(t, second); res.Ended != 1 {
		t.Fatalf("restarted replica ended %+v, want 1", res)
	}
	if _, ok := h.tombstone(d.Lease.ID); !ok {
		t.Error("no tombstone")
	}
}

// TestLeasesSeeOnlyJobDecisions: the lease consumer filters the decision
// stream to job.start and job.heartbeat, so the reaper fetches and acks
// no other decision (two bus messages fewer per decision).
func TestLeasesSeeOnlyJobDecisions(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	h.run(h.replica())
	for i, action := range []string{"model.deploy", "dataset.promote", "agent.tool_call"} {
		d := schemas.Decision{RequestID: fmt.Sprintf("other-%d", i), Action: action, Decision: schemas.Allow, Stage: schemas.StagePolicy}
		ev, err := schemas.NewEvent(schemas.DerivedID(d.RequestID, "decision"), "aigov/policy", schemas.TypeDecision, h.clock.Now(), d)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(ev)
		if _, err := h.admin.Publish(h.ctx, h.topo.Subjects.Decision(action), b); err != nil {
			t.Fatal(err)
		}
	}
	h.decide("job-only", schemas.ActionJobStart, alice, nil)
	info, err := h.cons.Info(h.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Delivered.Consumer != 1 || info.NumPending != 0 {
		t.Fatalf("lease consumer delivered %d, %d pending; want only the job.start (1, 0)", info.Delivered.Consumer, info.NumPending)
	}
}
