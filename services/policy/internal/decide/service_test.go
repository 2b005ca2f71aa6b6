package decide

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// harness is an embedded JetStream with the policy service running as the
// policy role user; the test acts as authn and the platform through admin.
type harness struct {
	srv   *natsdev.Server
	admin *nats.Conn
	js    jetstream.JetStream
	topo  topology.Topology
	svc   *Service
	reg   *prometheus.Registry
	keys  *devkeys.Set
	stop  context.CancelFunc
	done  chan error
	// skew is added to the service's clock (nanoseconds): tests move
	// time forward past approval expiries.
	skew *atomic.Int64
	// settled counts the verified events decide sent (decideOne).
	settled uint64
}

func startHarness(t *testing.T, workers int) *harness {
	t.Helper()
	h := newHarness(t, workers)
	h.start(t)
	return h
}

// newHarness is startHarness without starting the service, so a test can
// queue verified events while policy is down (h.start starts it).
func newHarness(t *testing.T, workers int, edit ...func(*Config)) *harness {
	t.Helper()
	srv := natsdev.StartT(t, natsdev.Options{})
	admin, js := srv.ConnectT(t, natsdev.AdminUser)
	topo := topology.New("")
	// natsdev.Start provisioned the topology (as aigov bus provision does).

	nc, pjs := srv.ConnectT(t, schemas.RolePolicy)
	health := servicekit.NewUnboundServer()
	reg := health.Registry
	keys := devkeys.New(t)
	skew := new(atomic.Int64)
	cfg := Config{Seed: seedSet(t), SeedEntities: sampleStore(t).Entities(),
		ApprovalTeams: []string{"risk-reviewers"}, ApprovalTTL: time.Hour, Workers: workers}
	deps := servicekit.Deps{
		Clock: func() time.Time { return time.Now().Add(time.Duration(skew.Load())) },
		NC:    nc, JS: pjs, Topology: topo,
		Log: zerolog.New(zerolog.NewTestWriter(t)), HTTP: health,
		Signer: keys.Signer(schemas.RolePolicy), Trust: keys.Trust(),
	}
	for _, f := range edit {
		f(&cfg)
	}
	svc, err := NewService(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	return &harness{srv: srv, admin: admin, js: js, topo: topo, svc: svc, reg: reg, keys: keys, done: make(chan error, 1), skew: skew}
}

// start runs the service until the test ends.
func (h *harness) start(t *testing.T) {
	t.Helper()
	runCtx, stop := context.WithCancel(context.Background())
	h.stop = stop
	go func() { h.done <- h.svc.Run(runCtx) }()
	t.Cleanup(func() {
		stop()
		select {
		case err := <-h.done:
			if err != nil {
				t.Errorf("service run: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("service did not stop within 10s")
		}
	})
}

// publishVerified plays authn: the verified event goes on the verified stream.
func (h *harness) publishVerified(t *testing.T, v schemas.Verified, msgID string) {
	t.Helper()
	ev, err := schemas.NewEvent(schemas.DerivedID(v.RequestID, "verified"), "aigov/authn", schemas.TypeVerified, time.Now(), v)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	h.publishRaw(t, h.topo.Subjects.Verified(v.Request.Action), body, msgID)
}

// publishRaw publishes body as authn would: signed with authn's key.
func (h *harness) publishRaw(t *testing.T, subject string, body []byte, msgID string) {
	t.Helper()
	h.publishSigned(t, subject, body, msgID, h.keys.Signer(schemas.RoleAuthn))
}

// publishSigned publishes body signed by signer, or unsigned for nil.
func (h *harness) publishSigned(t *testing.T, subject string, body []byte, msgID string, signer *signing.Signer) {
	t.Helper()
	sig := ""
	if signer != nil {
		sig = signer.Sign(subject, msgID, body)
	}
	h.publishWithHeader(t, subject, body, msgID, sig)
}

// publishWithHeader publishes body with sig as its Aigov-Signature (none
// when empty).
func (h *harness) publishWithHeader(t *testing.T, subject string, body []byte, msgID, sig string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m := nats.NewMsg(subject)
	m.Data = body
	m.Header.Set(nats.MsgIdHdr, msgID)
	if sig != "" {
		m.Header.Set(signing.Header, sig)
	}
	if _, err := h.js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// waitSettled waits until the policy consumer has acked or terminated n
// messages and holds none.
func (h *harness) waitSettled(t *testing.T, n uint64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		var info *jetstream.ConsumerInfo
		cons, err := h.js.Consumer(ctx, h.topo.StreamVerified(), schemas.ConsumerPolicy)
		if err == nil {
			info, err = cons.Info(ctx)
		}
		if err == nil && info.AckFloor.Consumer >= n && info.NumAckPending == 0 && info.NumPending == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("policy consumer did not settle %d messages: %+v (%v)", n, info, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (h *harness) decisionCount(t *testing.T) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, h.topo.StreamDecisions())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func (h *harness) lastDecision(t *testing.T, action string) *jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, h.topo.StreamDecisions())
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, h.topo.Subjects.Decision(action))
	if err != nil {
		t.Fatalf("decision on %s: %v", h.topo.Subjects.Decision(action), err)
	}
	return m
}

func decodeDecision(t *testing.T, body []byte) (schemas.Event, schemas.Decision) {
	t.Helper()
	ev, err := schemas.ParseEvent(body)
	if err != nil {
		t.Fatal(err)
	}
	var d schemas.Decision
	if err := json.Unmarshal(ev.Data, &d); err != nil {
		t.Fatal(err)
	}
	return ev, d
}

func TestServiceDecidesAndReplies(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 4)
	platform, _ := h.srv.ConnectT(t, schemas.RolePlatform)
	inbox := schemas.InboxPrefix(schemas.RolePlatform) + ".decide-test"
	sub, err := platform.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := platform.Flush(); err != nil {
		t.Fatal(err)
	}

	v := verified(t, "alice", "model.retrain", "Model", "fraud-detector", map[string]any{"environment": "staging", "epochs": 3})
	v.ReplyTo = inbox
	h.publishVerified(t, v, "verified-1")

	reply, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no reply on %s: %v", inbox, err)
	}
	ev, d := decodeDecision(t, reply.Data)
	wantID := schemas.DerivedID(v.RequestID, PolicyDecisionKind)
	if ev.Type != schemas.TypeDecision || ev.ID != wantID || ev.Source != EventSource || ev.Subject != `Model::"fraud-detector"` {
		t.Errorf("envelope %+v", ev)
	}
	if !d.Allowed() || !slices.Equal(d.PolicyIDs, []string{"data-scientists-retrain-staging"}) || d.RequestID != v.RequestID {
		t.Errorf("decision %s/%s %q for %s", d.Decision, d.Code, d.PolicyIDs, d.RequestID)
	}
	if d.Stage != schemas.StagePolicy || d.PolicyVersion != seedSet(t).Version() || d.TokenFingerprint != v.TokenFingerprint {
		t.Errorf("stage %q version %q fingerprint %q", d.Stage, d.PolicyVersion, d.TokenFingerprint)
	}
	if d.Timings.DecidedAt.IsZero() || d.Timings.VerifiedAt == nil || d.Context["epochs"] != float64(3) {
		t.Errorf("timings %+v context %v", d.Timings, d.Context)
	}

	stored := h.lastDecision(t, "model.retrain")
	if got := stored.Header.Get(schemas.HeaderMsgID); got != wantID {
		t.Errorf("stored decision Nats-Msg-Id %q, want %q", got, wantID)
	}
	if string(stored.Data) != string(reply.Data) {
		t.Error("the reply differs from the stored decision")
	}
	h.waitSettled(t, 1)
	if got := testutil.ToFloat64(h.svc.decisions.WithLabelValues(schemas.Allow, "none")); got != 1 {
		t.Errorf("aigov_policy_decisions_total{allow,none} = %v, want 1", got)
	}
}

// TestServiceRedeliveryIsDeduplicated: the same verified request delivered
// twice yields one stored decision, because its id derives from the request.
func TestServiceRedeliveryIsDeduplicated(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 2)
	v := verified(t, "erin", "model.deploy", "Model", "fraud-detector", map[string]any{"environment": "production"})
	h.publishVerified(t, v, "copy-1")
	h.publishVerified(t, v, "copy-2")
	h.waitSettled(t, 2)
	if n := h.decisionCount(t); n != 1 {
		t.Fatalf("decisions stream holds %d messages, want 1", n)
	}
	_, d := decodeDecision(t, h.lastDecision(t, "model.deploy").Data)
	if d.Decision != schemas.Deny || d.Code != schemas.CodePolicyDenied {
		t.Errorf("got %s/%s, want deny/policy_denied", d.Decision, d.Code)
	}
}

// TestServiceBadInput: a verified event that does not decode is terminated
// (it is a bug in authn, retrying cannot help); one that decodes but cannot
// be decided becomes a deny with a code.
func TestServiceBadInput(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 2)
	wrongType, err := schemas.NewEvent("x-1", "aigov/authn", schemas.TypeRequest, time.Now(), map[string]any{"action": "model.retrain"})
	if err != nil {
		t.Fatal(err)
	}
	wrongTypeBody, err := json.Marshal(wrongType)
	if err != nil {
		t.Fatal(err)
	}
	h.publishRaw(t, "aigov.verified.model.retrain", []byte(`{not json`), "bad-1")
	h.publishRaw(t, "aigov.verified.model.retrain", wrongTypeBody, "bad-2")
	h.waitSettled(t, 2)
	if n := h.decisionCount(t); n != 0 {
		t.Fatalf("undecodable events produced %d decisions", n)
	}

	// The action is malformed, so the subject's action names the decision subject.
	v := verified(t, "alice", "Retrain Now", "Model", "fraud-detector", nil)
	body, err := json.Marshal(mustEvent(t, v))
	if err != nil {
		t.Fatal(err)
	}
	h.publishRaw(t, "aigov.verified.model.retrain", body, "bad-3")
	unknown := verified(t, "alice", "model.retrain", "Model", "ghost", map[string]any{"environment": "staging"})
	unknown.RequestID = "req-ghost"
	h.publishVerified(t, unknown, "bad-4")
	h.waitSettled(t, 4)
	if n := h.decisionCount(t); n != 2 {
		t.Fatalf("decisions stream holds %d messages, want 2", n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := h.js.Stream(ctx, h.topo.StreamDecisions())
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]schemas.Code{}
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		_, d := decodeDecision(t, m.Data)
		if m.Subject != "aigov.decision.model.retrain" || d.Decision != schemas.Deny {
			t.Errorf("%s: %s/%s", m.Subject, d.Decision, d.Code)
		}
		codes[d.RequestID] = d.Code
	}
	if codes[v.RequestID] != schemas.CodeMalformedRequest || codes["req-ghost"] != schemas.CodeUnknownResource {
		t.Errorf("codes %v", codes)
	}
}

func mustEvent(t *testing.T, v schemas.Verified) schemas.Event {
	t.Helper()
	ev, err := schemas.NewEvent(schemas.DerivedID(v.RequestID, "verified"), "aigov/authn", schemas.TypeVerified, time.Now(), v)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

// TestServiceIgnoresForeignReplySubjects: a requester cannot make the policy
// service publish on a subject of its choosing, not even one its NATS user
// may publish on (a decision subject the decisions stream would capture).
func TestServiceIgnoresForeignReplySubjects(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 1) // one worker: replies leave in request order
	foreign, err := h.admin.SubscribeSync("aigov.decision.forged")
	if err != nil {
		t.Fatal(err)
	}
	wildcard, err := h.admin.SubscribeSync("_INBOX.platform.*")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.admin.Flush(); err != nil {
		t.Fatal(err)
	}

	for i, to := range []string{"aigov.decision.forged", "_INBOX.platform.*", "_INBOX..x", "_INBOX.platform.a b"} {
		v := verified(t, "erin", "model.deploy", "Model", "fraud-detector", map[string]any{"environment": "staging"})
		v.RequestID = "req-foreign-" + string(rune('a'+i))
		v.ReplyTo = to
		h.publishVerified(t, v, v.RequestID)
	}
	last := verified(t, "erin", "model.deploy", "Model", "fraud-detector", map[string]any{"environment": "staging"})
	last.RequestID = "req-last"
	last.ReplyTo = "_INBOX.platform.last"
	h.publishVerified(t, last, last.RequestID)

	m, err := wildcard.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != last.ReplyTo {
		t.Fatalf("first reply went to %q, want only %q", m.Subject, last.ReplyTo)
	}
	// Replies left in order on one connection, so an earlier forged one
	// would already be queued.
	if n, _, _ := foreign.Pending(); n != 0 {
		t.Errorf("%d messages were sent to the forged subject", n)
	}
	if n, _, _ := wildcard.Pending(); n != 0 {
		t.Errorf("%d extra inbox messages", n)
	}
	h.waitSettled(t, 5)
	if n := h.decisionCount(t); n != 5 {
		t.Errorf("decisions stream holds %d messages, want the 5 real decisions", n)
	}
}

func TestNewServiceRejectsMissingDeps(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	nc, js := srv.ConnectT(t, schemas.RolePolicy)
	keys := devkeys.New(t)
	fullCfg := Config{ApprovalTTL: time.Hour, Workers: 1}
	full := servicekit.Deps{NC: nc, JS: js, Topology: topology.New(""), HTTP: servicekit.NewUnboundServer(),
		Signer: keys.Signer(schemas.RolePolicy), Trust: keys.Trust()}
	for name, edit := range map[string]func(*Config, *servicekit.Deps){
		"signer":   func(_ *Config, d *servicekit.Deps) { d.Signer = nil },
		"trust":    func(_ *Config, d *servicekit.Deps) { d.Trust = nil },
		"nc":       func(_ *Config, d *servicekit.Deps) { d.NC = nil },
		"js":       func(_ *Config, d *servicekit.Deps) { d.JS = nil },
		"ttl":      func(c *Config, _ *servicekit.Deps) { c.ApprovalTTL = 0 },
		"registry": func(_ *Config, d *servicekit.Deps) { d.HTTP = nil },
		"topology": func(_ *Config, d *servicekit.Deps) { d.Topology = topology.Topology{} },
	} {
		c, d := fullCfg, full
		edit(&c, &d)
		if _, err := NewService(c, d); err == nil {
			t.Errorf("missing %s accepted", name)
		}
	}
	svc, err := NewService(fullCfg, full)
	if err != nil {
		t.Fatalf("complete deps rejected: %v", err)
	}
	// Stopped before it finished starting, Run is a clean stop.
	canceled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := svc.Run(canceled); err != nil {
		t.Errorf("Run stopped while starting: %v, want nil", err)
	}
}

func TestDecodeVerified(t *testing.T) {
	t.Parallel()
	v := verified(t, "alice", "model.retrain", "Model", "fraud-detector", nil)
	good, err := json.Marshal(mustEvent(t, v))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := decodeVerified(good); err != nil {
		t.Fatalf("good event: %v", err)
	}
	noID := v
	noID.RequestID = ""
	noIDBody, err := json.Marshal(mustEvent(t, noID))
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string][]byte{
		"not json":      []byte(`{`),
		"no request id": noIDBody,
		"unknown field": []byte(`{"specversion":"1.0","id":"1","source":"s","type":"dev.aigov.verified.v1","data":{"request_id":"r","surprise":1}}`),
		"wrong type":    []byte(`{"specversion":"1.0","id":"1","source":"s","type":"dev.aigov.request.v1","data":{"request_id":"r"}}`),
	} {
		if _, err := decodeVerified(body); !errors.Is(err, schemas.ErrInvalidEvent) {
			t.Errorf("%s: err %v, want ErrInvalidEvent", name, err)
		}
	}
}

// TestAllowIsStoredAfterAuthnDenyOfSameRequestID: a requester chooses the
// request id. authn stores a deny under the request id's decision id (for
// a first request with no token, say); a second request with the same id
// and a valid token is verified and allowed. That allow must be stored in
// the decisions stream (the audit record) before it is replied: were its
// id the authn deny's, the stream would drop it as a duplicate and the
// requester would act on an allow that no audit ever sees.
func TestAllowIsStoredAfterAuthnDenyOfSameRequestID(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 2)
	platform, _ := h.srv.ConnectT(t, schemas.RolePlatform)
	inbox := schemas.InboxPrefix(schemas.RolePlatform) + ".collide"
	sub, err := platform.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := platform.Flush(); err != nil {
		t.Fatal(err)
	}
	v := verified(t, "alice", "model.retrain", "Model", "fraud-detector", map[string]any{"environment": "staging"})
	v.ReplyTo = inbox

	// What authn (verify.Verifier.deny) stores for a request with this id
	// and no token.
	deny := schemas.Decision{RequestID: v.RequestID, Action: v.Request.Action, Resource: v.Request.Resource,
		Decision: schemas.Deny, Code: schemas.CodeMissingToken, Reason: "no Authorization header", Stage: schemas.StageAuthn,
		Timings: schemas.Timings{ReceivedAt: time.Now().UTC(), DecidedAt: time.Now().UTC()}}
	ev, err := schemas.NewEvent(schemas.DerivedID(v.RequestID, schemas.KindDecision), "aigov/authn", schemas.TypeDecision, time.Now(), deny)
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	h.publishRaw(t, h.topo.Subjects.Decision(v.Request.Action), body, ev.ID)

	h.publishVerified(t, v, "verified-collide")
	reply, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no reply: %v", err)
	}
	if _, d := decodeDecision(t, reply.Data); !d.Allowed() {
		t.Fatalf("the verified request was not allowed: %s", reply.Data)
	}
	h.waitSettled(t, 1)
	stored := h.lastDecision(t, v.Request.Action)
	if string(stored.Data) != string(reply.Data) {
		_, d := decodeDecision(t, stored.Data)
		t.Fatalf("the allow replied to the requester is not in the decisions stream; it holds %s/%s (stage %s)", d.Decision, d.Code, d.Stage)
	}
}
