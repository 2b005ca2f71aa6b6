package sessions_test

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// t0 is the fake clock's start.
var t0 = time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)

const issuer = "https://idp.aigov.test"

// clock is a fake clock the tests advance by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Set moves the clock to t0+offset.
func (c *clock) Set(offset time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t0.Add(offset)
}

func testConfig() sessions.Config {
	return sessions.Config{
		MaxAge:      time.Hour,
		IdleTimeout: 30 * time.Minute,
		Interval:    time.Second,
		MaxScan:     1000,
		Workers:     4,
		TTLGrace:    time.Hour,
	}
}

// harness is one embedded JetStream with a reaper tracking the verified
// stream as the reaper role user, the way the service runs it.
type harness struct {
	t      *testing.T
	ctx    context.Context
	srv    *natsdev.Server
	cfg    sessions.Config
	topo   topology.Topology
	admin  jetstream.JetStream
	clock  *clock
	reaper *sessions.Reaper
	reg    *prometheus.Registry
	cons   jetstream.Consumer
	keys   *devkeys.Set
}

func newHarness(t *testing.T, cfg sessions.Config) *harness {
	t.Helper()
	return newHarnessJS(t, cfg, func(js jetstream.JetStream) jetstream.JetStream { return js })
}

// newHarnessJS is newHarness with the reaper's JetStream context passed
// through wrap (which may observe its calls).
func newHarnessJS(t *testing.T, cfg sessions.Config, wrap func(jetstream.JetStream) jetstream.JetStream) *harness {
	t.Helper()
	srv := natsdev.StartT(t, natsdev.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)

	_, admin := srv.ConnectT(t, natsdev.AdminUser)
	h := &harness{t: t, ctx: ctx, srv: srv, cfg: cfg, topo: topology.New(""), admin: admin, clock: &clock{now: t0}, keys: devkeys.New(t)}

	// The reaper ensures the topology and its consumer itself, as
	// servicekit.Start does, so its role's permissions are exercised.
	rjs := h.connectReaper()
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	var err error
	h.cons, err = h.topo.Bind(ctx, rjs, schemas.ConsumerReaper)
	if err != nil {
		t.Fatal(err)
	}
	h.reaper, h.reg = h.newReaper(wrap(rjs))

	runner := servicekit.NewRunner(schemas.ConsumerReaper, zerolog.Nop(), h.reg, cfg.Workers)
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 2)
	// The in-memory views run as in the service, and are loaded before the
	// first request, so the tests exercise the path production takes.
	go func() { done <- h.reaper.RunViews(runCtx) }()
	if err := h.reaper.ViewsLoaded(ctx); err != nil {
		t.Fatal(err)
	}
	go func() { done <- runner.Run(runCtx, h.cons, h.reaper.Track) }()
	t.Cleanup(func() {
		stop()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("runner: %v", err)
			}
		}
	})
	return h
}

// connectReaper opens a JetStream context as the reaper role user.
func (h *harness) connectReaper() jetstream.JetStream {
	h.t.Helper()
	nc, err := h.srv.Connect(schemas.RoleReaper)
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

// newReaper builds a reaper (a replica) on js with its own metrics.
func (h *harness) newReaper(js jetstream.JetStream) (*sessions.Reaper, *prometheus.Registry) {
	h.t.Helper()
	reg := prometheus.NewRegistry()
	r, err := sessions.New(h.ctx, h.cfg, sessions.Deps{JS: js, Topology: h.topo, Log: zerolog.Nop(), Registry: reg, Now: h.clock.Now, Signer: h.keys.Signer(schemas.RoleReaper)})
	if err != nil {
		h.t.Fatal(err)
	}
	return r, reg
}

func principal(sub, sid string, authTime *time.Time) schemas.Principal {
	return schemas.Principal{
		ID:        schemas.PrincipalID(issuer, sub),
		Type:      schemas.PrincipalUser,
		Issuer:    issuer,
		Subject:   sub,
		Email:     sub + "@aigov.test",
		Groups:    []string{"data-scientists"},
		SessionID: sid,
		AuthTime:  authTime,
		IssuedAt:  t0,
		ExpiresAt: t0.Add(10 * time.Minute),
	}
}

func verified(requestID, token string, p schemas.Principal) schemas.Verified {
	return schemas.Verified{
		RequestID:        requestID,
		Source:           "test-platform",
		Request:          schemas.Request{Action: "model.retrain", Resource: schemas.Resource{Type: "Model", ID: "churn"}},
		Principal:        p,
		SessionKey:       schemas.SessionKey(p),
		TokenFingerprint: schemas.Fingerprint(token),
		ReceivedAt:       t0,
		VerifiedAt:       t0,
	}
}

// publishRaw puts a payload on the verified stream as authn would and
// returns its stream sequence.
func (h *harness) publishRaw(b []byte) uint64 {
	h.t.Helper()
	ack, err := h.admin.Publish(h.ctx, h.topo.Subjects.Verified("model.retrain"), b)
	if err != nil {
		h.t.Fatal(err)
	}
	return ack.Sequence
}

func (h *harness) publishVerified(v schemas.Verified) uint64 {
	h.t.Helper()
	ev, err := schemas.NewEvent(schemas.DerivedID(v.RequestID, "verified"), "aigov/authn", schemas.TypeVerified, t0, v)
	if err != nil {
		h.t.Fatal(err)
	}
	b, err := json.Marshal(ev)
	if err != nil {
		h.t.Fatal(err)
	}
	return h.publishRaw(b)
}

// track publishes v and waits until the reaper has acked it.
func (h *harness) track(v schemas.Verified) {
	h.t.Helper()
	h.waitHandled(h.publishVerified(v))
}

// waitHandled waits until every message up to seq is acked or terminated;
// a nak'ed message never gets there and fails the test.
func (h *harness) waitHandled(seq uint64) {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		info, err := h.cons.Info(h.ctx)
		if err != nil {
			h.t.Fatal(err)
		}
		if info.AckFloor.Stream >= seq && info.NumAckPending == 0 {
			return
		}
		if time.Now().After(deadline) {
			h.t.Fatalf("verified message %d not handled within 10s: ack floor %d, %d pending ack, %d redelivered",
				seq, info.AckFloor.Stream, info.NumAckPending, info.NumRedelivered)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sessionEvents returns the events of type typ on the sessions stream, and
// checks that each was published with its id as Nats-Msg-Id.
func (h *harness) sessionEvents(typ string) []schemas.Event {
	h.t.Helper()
	st, err := h.admin.Stream(h.ctx, h.topo.StreamSessions())
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := st.Info(h.ctx)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []schemas.Event
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(h.ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			h.t.Fatal(err)
		}
		ev, err := schemas.ParseEvent(m.Data)
		if err != nil {
			h.t.Fatalf("session stream message %d: %v", seq, err)
		}
		if got := m.Header.Get(schemas.HeaderMsgID); got != ev.ID {
			h.t.Errorf("session event %s published with Nats-Msg-Id %q", ev.ID, got)
		}
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

func (h *harness) bucket(name string) jetstream.KeyValue {
	h.t.Helper()
	kv, err := h.admin.KeyValue(h.ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	return kv
}

// record loads a session record; ok is false when there is none.
func (h *harness) record(key string) (sessions.Record, bool) {
	h.t.Helper()
	r, ok, err := natsdev.GetJSON[sessions.Record](h.ctx, h.bucket(h.topo.BucketSessions()), key)
	if err != nil {
		h.t.Fatal(err)
	}
	return r, ok
}

// revocation loads a revocation; ok is false when there is none.
func (h *harness) revocation(key string) (schemas.Revocation, bool) {
	h.t.Helper()
	r, ok, err := natsdev.GetJSON[schemas.Revocation](h.ctx, h.bucket(h.topo.BucketRevocations()), key)
	if err != nil {
		h.t.Fatal(err)
	}
	return r, ok
}

func (h *harness) sweep(r *sessions.Reaper) sessions.SweepResult {
	h.t.Helper()
	res, err := r.Sweep(h.ctx)
	if err != nil {
		h.t.Fatalf("sweep: %v", err)
	}
	return res
}

// metric returns the value of a counter or gauge in reg whose labels
// include the given name/value pairs; 0 when absent.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
	next:
		for _, m := range f.GetMetric() {
			for i := 0; i+1 < len(labels); i += 2 {
				found := false
				for _, lp := range m.GetLabel() {
					if lp.GetName() == labels[i] && lp.GetValue() == labels[i+1] {
						found = true
					}
				}
				if !found {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	return 0
}

func decodeSessionEvent(t *testing.T, ev schemas.Event) schemas.SessionEvent {
	t.Helper()
	var s schemas.SessionEvent
	if err := ev.DecodeData(&s); err != nil {
		t.Fatal(err)
	}
	return s
}

func ptr(t time.Time) *time.Time { return &t }
