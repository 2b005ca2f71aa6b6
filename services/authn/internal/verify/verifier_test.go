package verify_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// env is one embedded JetStream, the authn Verifier running on it as the
// authn user, a platform connection that publishes requests, an admin
// connection that only observes, and dev OIDC providers over HTTP.
type env struct {
	topo     topology.Topology
	platJS   jetstream.JetStream
	platNC   *nats.Conn
	adminNC  *nats.Conn
	adminJS  jetstream.JetStream
	registry *prometheus.Registry
	health   *servicekit.Server // holds registry
	logs     *syncBuffer
	out      *collector
	keys     *devkeys.Set

	good      *idp.Provider // trusted
	otherAud  *idp.Provider // trusted, but issues tokens for audience "other"
	untrusted *idp.Provider // not in the trusted list
	downURL   string        // trusted; nothing listens there
	replay    *idp.Provider // trusted, with jti replay protection on

	mu     sync.Mutex
	tokens []string // every raw token the test sent
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

func startIDP(t *testing.T, opts idp.Options) *idp.Provider {
	t.Helper()
	p, err := idp.Start(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	return p
}

func startEnv(t *testing.T) *env {
	t.Helper()
	return startEnvTopo(t, topology.New(""))
}

// startEnvTopo is startEnv with a topology of the test's choosing, and
// edits of the verifier's configuration.
func startEnvTopo(t *testing.T, topo topology.Topology, edit ...func(*verify.Config)) *env {
	t.Helper()
	ctx := context.Background()
	srv := natsdev.StartT(t, natsdev.Options{})
	health := servicekit.NewUnboundServer()
	e := &env{topo: topo, registry: health.Registry, health: health, logs: &syncBuffer{}, keys: devkeys.New(t)}

	e.good = startIDP(t, idp.Options{})
	e.otherAud = startIDP(t, idp.Options{ClientID: "other"})
	e.untrusted = startIDP(t, idp.Options{})
	e.replay = startIDP(t, idp.Options{})
	down := startIDP(t, idp.Options{})
	e.downURL = down.Issuer()
	if err := down.Close(); err != nil {
		t.Fatal(err)
	}

	authnNC, authnJS := srv.ConnectT(t, schemas.RoleAuthn)
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	e.adminNC, e.adminJS = srv.ConnectT(t, natsdev.AdminUser)
	e.platNC, e.platJS = srv.ConnectT(t, schemas.RolePlatform)
	e.out = collect(t, e.adminJS, e.topo.StreamVerified(), e.topo.StreamDecisions())

	cfg := verify.Config{
		Workers:     8,
		HTTPTimeout: 2 * time.Second,
		Issuers: []verify.Issuer{
			{URL: e.good.Issuer(), Audiences: []string{"aigov"}},
			{URL: e.otherAud.Issuer(), Audiences: []string{"aigov"}},
			{URL: e.downURL, Audiences: []string{"aigov"}},
			{URL: e.replay.Issuer(), Audiences: []string{"aigov"}, ReplayProtection: true},
		},
		SessionLimits: sessionlimits.Limits{MaxAge: testMaxAge},
	}
	for _, f := range edit {
		f(&cfg)
	}
	v, err := verify.NewVerifier(cfg, servicekit.Deps{
		Log:      zerolog.New(e.logs).Level(zerolog.DebugLevel),
		NC:       authnNC,
		JS:       authnJS,
		Topology: e.topo,
		HTTP:     e.health,
		Signer:   e.keys.Signer(schemas.RoleAuthn),
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- v.Run(rctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("verifier run: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("verifier did not stop within 15s")
		}
	})
	return e
}

// token mints a token and remembers it for the no-leak check.
func (e *env) token(t *testing.T, p *idp.Provider, persona string, opts ...idp.TokenOption) string {
	t.Helper()
	tok, err := p.Token(context.Background(), persona, opts...)
	if err != nil {
		t.Fatal(err)
	}
	e.remember(tok)
	return tok
}

func (e *env) remember(tok string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.tokens = append(e.tokens, tok)
}

// output is one message authn published, as seen in its stream.
type output struct {
	subject string
	msgID   string
	raw     []byte
	event   schemas.Event
	header  nats.Header
}

// collector reads the streams authn publishes to, as admin, and indexes
// every message by request id.
type collector struct {
	mu    sync.Mutex
	cond  *sync.Cond
	byReq map[string][]output
	all   []output
}

func collect(t *testing.T, js jetstream.JetStream, streams ...string) *collector {
	t.Helper()
	c := &collector{byReq: map[string][]output{}}
	c.cond = sync.NewCond(&c.mu)
	for _, name := range streams {
		cons, err := js.OrderedConsumer(context.Background(), name, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		cc, err := cons.Consume(func(m jetstream.Msg) {
			o := output{subject: m.Subject(), msgID: m.Headers().Get(schemas.HeaderMsgID), raw: bytes.Clone(m.Data()), header: m.Headers()}
			var data struct {
				RequestID string `json:"request_id"`
			}
			if ev, err := schemas.ParseEvent(o.raw); err == nil {
				o.event = ev
				_ = json.Unmarshal(ev.Data, &data)
			}
			c.mu.Lock()
			c.byReq[data.RequestID] = append(c.byReq[data.RequestID], o)
			c.all = append(c.all, o)
			c.mu.Unlock()
			c.cond.Broadcast()
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cc.Stop)
	}
	return c
}

// await returns the first output for request id, failing after 15s.
func (c *collector) await(t *testing.T, id string) output {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	stop := time.AfterFunc(15*time.Second, c.cond.Broadcast)
	defer stop.Stop()
	c.mu.Lock()
	defer c.mu.Unlock()
	for len(c.byReq[id]) == 0 {
		if time.Now().After(deadline) {
			t.Fatalf("no verified event or decision for request %s within 15s", id)
		}
		c.cond.Wait()
	}
	return c.byReq[id][0]
}

var testRequest = schemas.Request{
	Action:   "model.retrain",
	Resource: schemas.Resource{Type: "Model", ID: "fraud-detector"},
	Context:  map[string]any{"environment": "staging"},
}

// requestMsg builds a request the way the platform SDK does.
func requestMsg(t *testing.T, id, token, replyTo string) *nats.Msg {
	t.Helper()
	m, err := client.NewRequestMessage(schemas.NewSubjects(""), "test-platform", client.Call{ID: id, Token: token, Request: testRequest}, replyTo)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// rawMsg builds a request message from raw parts, for malformed input.
func rawMsg(subject string, body []byte, headers map[string]string) *nats.Msg {
	m := nats.NewMsg(subject)
	m.Data = body
	for k, v := range headers {
		m.Header.Set(k, v)
	}
	return m
}

// algNone re-encodes a real token's payload under {"alg":"none"} with an
// empty signature.
func algNone(t *testing.T, tok string) string {
	t.Helper()
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		t.Fatalf("token has %d parts", len(parts))
	}
	h := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	return h + "." + parts[1] + "."
}

type want struct {
	// verified, or else a deny with code.
	verified bool
	code     schemas.Code
	// action whose subject the output must be on (default model.retrain).
	action string
	// token whose fingerprint the output must carry; "" means none.
	token string
	// requestID the output is keyed by, when the test cannot choose it.
	requestID string
	// check runs extra assertions on the decoded data.
	check func(t *testing.T, e *env, v *schemas.Verified, d *schemas.Decision)
}

// TestVerifierEndToEnd publishes requests as the platform and asserts what
// authn publishes for each, through the real consumer.
func TestVerifierEndToEnd(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	ctx := context.Background()
	subj := e.topo.Subjects

	type tc struct {
		name string
		// send publishes the request and returns its request id and what
		// to expect.
		send func(t *testing.T, id string) (string, want)
	}
	publish := func(t *testing.T, m *nats.Msg) *jetstream.PubAck {
		t.Helper()
		ack, err := e.platJS.PublishMsg(ctx, m)
		if err != nil {
			t.Fatalf("platform publish: %v", err)
		}
		return ack
	}
	withToken := func(code schemas.Code, mint func(t *testing.T) string) func(t *testing.T, id string) (string, want) {
		return func(t *testing.T, id string) (string, want) {
			tok := mint(t)
			e.remember(tok)
			publish(t, requestMsg(t, id, tok, ""))
			return id, want{code: code, token: tok}
		}
	}
	cases := []tc{
		{"good token verifies", func(t *testing.T, id string) (string, want) {
			tok := e.token(t, e.good, "alice")
			publish(t, requestMsg(t, id, tok, "_INBOX.platform.x."+id))
			return id, want{verified: true, token: tok, check: func(t *testing.T, e *env, v *schemas.Verified, _ *schemas.Decision) {
				p := v.Principal
				if p.ID != schemas.PrincipalID(e.good.Issuer(), "alice") || p.Issuer != e.good.Issuer() || p.Subject != "alice" || p.Type != schemas.PrincipalUser {
					t.Errorf("principal identity: %+v", p)
				}
				if strings.Join(p.Groups, ",") != "data-scientists" || p.Email != "alice@aigov.example" || p.Name != "Alice Archer" {
					t.Errorf("principal profile: %+v", p)
				}
				if p.SessionID == "" || p.AuthTime == nil || p.TokenID == "" || len(p.AMR) == 0 || len(p.Scopes) == 0 {
					t.Errorf("principal session claims: %+v", p)
				}
				if v.SessionKey != schemas.SessionKey(p) {
					t.Errorf("session key %s does not match the principal", v.SessionKey)
				}
				if v.RequestID != id || v.Source != "test-platform" || v.ReplyTo != "_INBOX.platform.x."+id {
					t.Errorf("request fields: id %s source %s reply %s", v.RequestID, v.Source, v.ReplyTo)
				}
				if v.Request.Action != testRequest.Action || v.Request.Resource != testRequest.Resource || v.Request.Context["environment"] != "staging" {
					t.Errorf("request: %+v", v.Request)
				}
				if v.ReceivedAt.IsZero() || v.VerifiedAt.Before(v.ReceivedAt) {
					t.Errorf("times: received %v verified %v", v.ReceivedAt, v.VerifiedAt)
				}
			}}
		}},
		{"missing header", func(t *testing.T, id string) (string, want) {
			publish(t, requestMsg(t, id, "", ""))
			return id, want{code: schemas.CodeMissingToken}
		}},
		{"basic credentials are no bearer token", func(t *testing.T, id string) (string, want) {
			m := requestMsg(t, id, "", "")
			m.Header.Set(schemas.HeaderAuthorization, "Basic YWxpY2U6cHc=")
			publish(t, m)
			return id, want{code: schemas.CodeMissingToken}
		}},
		{"garbage bearer", func(t *testing.T, id string) (string, want) {
			e.remember("garbage-token-value")
			publish(t, requestMsg(t, id, "garbage-token-value", ""))
			return id, want{code: schemas.CodeMalformedToken, token: "garbage-token-value"}
		}},
		{"expired", withToken(schemas.CodeTokenExpired, func(t *testing.T) string {
			return e.token(t, e.good, "alice", idp.WithIssuedAt(time.Now().Add(-time.Hour)), idp.WithTTL(time.Minute))
		})},
		{"forged", withToken(schemas.CodeBadSignature, func(t *testing.T) string {
			f, err := idp.Forge(e.token(t, e.good, "carol"))
			if err != nil {
				t.Fatal(err)
			}
			return f
		})},
		// alg none is refused by its alg, before any key is looked at.
		{"alg none", withToken(schemas.CodeDisallowedAlgorithm, func(t *testing.T) string {
			return algNone(t, e.token(t, e.good, "alice"))
		})},
		{"untrusted issuer", withToken(schemas.CodeUntrustedIssuer, func(t *testing.T) string {
			return e.token(t, e.untrusted, "alice")
		})},
		{"wrong audience", withToken(schemas.CodeWrongAudience, func(t *testing.T) string {
			return e.token(t, e.otherAud, "alice")
		})},
		{"issuer down, others unaffected", func(t *testing.T, id string) (string, want) {
			// A token that names the down issuer: the good provider's
			// payload with iss swapped; it never gets as far as a signature.
			tok := e.token(t, e.good, "erin")
			parts := strings.Split(tok, ".")
			payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
			var claims map[string]any
			if err := json.Unmarshal(payload, &claims); err != nil {
				t.Fatal(err)
			}
			claims["iss"] = e.downURL
			b, _ := json.Marshal(claims)
			downTok := parts[0] + "." + base64.RawURLEncoding.EncodeToString(b) + "." + parts[2]
			e.remember(downTok)
			publish(t, requestMsg(t, id, downTok, ""))
			return id, want{code: schemas.CodeIssuerUnavailable, token: downTok, check: func(t *testing.T, e *env, _ *schemas.Verified, _ *schemas.Decision) {
				// Meanwhile a working issuer still verifies.
				okID := id + "-ok"
				okTok := e.token(t, e.good, "rita")
				publish(t, requestMsg(t, okID, okTok, ""))
				o := e.out.await(t, okID)
				if o.event.Type != schemas.TypeVerified {
					t.Fatalf("good token while an issuer is down: got %s on %s", o.event.Type, o.subject)
				}
			}}
		}},
		{"revoked session", func(t *testing.T, id string) (string, want) {
			return e.endedSession(t, id, schemas.CodeSessionRevoked)
		}},
		{"expired session", func(t *testing.T, id string) (string, want) {
			return e.endedSession(t, id, schemas.CodeSessionExpired)
		}},
		{"malformed event JSON keyed by Nats-Msg-Id", func(t *testing.T, id string) (string, want) {
			tok := e.token(t, e.good, "alice")
			publish(t, rawMsg(subj.Request("model.retrain"), []byte(`{"specversion":`), map[string]string{
				schemas.HeaderMsgID:         id,
				schemas.HeaderAuthorization: "Bearer " + tok,
			}))
			return id, want{code: schemas.CodeMalformedRequest, token: tok}
		}},
		{"malformed event without ids keyed by stream sequence", func(t *testing.T, _ string) (string, want) {
			ack := publish(t, rawMsg(subj.Request("model.retrain"), []byte(`not json`), nil))
			return fmt.Sprintf("seq-%d", ack.Sequence), want{code: schemas.CodeMalformedRequest}
		}},
		{"action differs between subject and data", func(t *testing.T, id string) (string, want) {
			tok := e.token(t, e.good, "alice")
			m := requestMsg(t, id, tok, "")
			m.Subject = subj.Request("model.deploy")
			publish(t, m)
			return id, want{code: schemas.CodeMalformedRequest, action: "model.deploy", token: tok}
		}},
		{"no valid action anywhere", func(t *testing.T, id string) (string, want) {
			publish(t, rawMsg(subj.Request("Bad"), []byte(`[]`), map[string]string{schemas.HeaderMsgID: id}))
			return id, want{code: schemas.CodeMalformedRequest, action: verify.InvalidAction}
		}},
		{"unknown data field", func(t *testing.T, id string) (string, want) {
			ev, _ := schemas.NewEvent(id, "test-platform", schemas.TypeRequest, time.Now(), map[string]any{
				"action": "model.retrain", "resource": map[string]string{"type": "Model", "id": "m"}, "resource_attrs": map[string]any{"stage": "prod"},
			})
			b, _ := json.Marshal(ev)
			publish(t, rawMsg(subj.Request("model.retrain"), b, nil))
			return id, want{code: schemas.CodeMalformedRequest}
		}},
		{"deny is replied to the platform inbox", func(t *testing.T, id string) (string, want) {
			inbox := "_INBOX.platform.replies." + id
			sub, err := e.platNC.SubscribeSync(inbox)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sub.Unsubscribe() })
			if err := e.platNC.Flush(); err != nil {
				t.Fatal(err)
			}
			tok := e.token(t, e.good, "alice", idp.WithIssuedAt(time.Now().Add(-time.Hour)), idp.WithTTL(time.Minute))
			publish(t, requestMsg(t, id, tok, inbox))
			return id, want{code: schemas.CodeTokenExpired, token: tok, check: func(t *testing.T, e *env, _ *schemas.Verified, d *schemas.Decision) {
				m, err := sub.NextMsg(10 * time.Second)
				if err != nil {
					t.Fatalf("no reply on %s: %v", inbox, err)
				}
				var ev schemas.Event
				var got schemas.Decision
				if err := json.Unmarshal(m.Data, &ev); err != nil {
					t.Fatal(err)
				}
				if err := json.Unmarshal(ev.Data, &got); err != nil {
					t.Fatal(err)
				}
				if ev.ID != schemas.DerivedID(id, "decision") || got.RequestID != id || got.Code != schemas.CodeTokenExpired {
					t.Fatalf("reply: event %s request %s code %s", ev.ID, got.RequestID, got.Code)
				}
			}}
		}},
		{"reply to a non-inbox subject is ignored", func(t *testing.T, id string) (string, want) {
			target := "aigov.decision.hijack." + strings.ReplaceAll(id, "-", "")
			sub, err := e.adminNC.SubscribeSync(target)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = sub.Unsubscribe() })
			if err := e.adminNC.Flush(); err != nil {
				t.Fatal(err)
			}
			publish(t, requestMsg(t, id, "", target))
			return id, want{code: schemas.CodeMissingToken, check: func(t *testing.T, e *env, _ *schemas.Verified, _ *schemas.Decision) {
				if m, err := sub.NextMsg(300 * time.Millisecond); err == nil {
					t.Fatalf("authn published on %s: %s", target, m.Data)
				}
			}}
		}},
	}

	t.Run("requests", func(t *testing.T) {
		for _, c := range cases {
			t.Run(c.name, func(t *testing.T) {
				t.Parallel()
				id, w := c.send(t, schemas.NewID())
				o := e.out.await(t, id)
				e.assertOutput(t, id, w, o)
			})
		}
	})

	// After every case: no raw token in any published byte or log line.
	e.out.mu.Lock()
	outputs := append([]output(nil), e.out.all...)
	e.out.mu.Unlock()
	logs := e.logs.Bytes()
	e.mu.Lock()
	tokens := append([]string(nil), e.tokens...)
	e.mu.Unlock()
	if len(outputs) < len(cases) || len(tokens) < 10 {
		t.Fatalf("checked %d outputs and %d tokens; the cases did not run", len(outputs), len(tokens))
	}
	for _, tok := range tokens {
		// The signature part alone would be enough to replay nothing, but
		// the payload would leak claims: check the whole token and each
		// non-trivial part.
		needles := []string{tok}
		for _, part := range strings.Split(tok, ".") {
			if len(part) > 40 {
				needles = append(needles, part)
			}
		}
		for _, n := range needles {
			for _, o := range outputs {
				if bytes.Contains(o.raw, []byte(n)) {
					t.Fatalf("a token part appears in the message on %s", o.subject)
				}
			}
			if bytes.Contains(logs, []byte(n)) {
				t.Fatal("a token part appears in the logs")
			}
		}
	}
	e.assertCounter(t, "verified", 2)
	e.assertCounter(t, string(schemas.CodeTokenExpired), 2)
	e.assertCounter(t, string(schemas.CodeMalformedRequest), 5)
}

// endedSession sends a token whose session has a revocation record.
func (e *env) endedSession(t *testing.T, id string, code schemas.Code) (string, want) {
	t.Helper()
	sid := "sid-" + id
	tok := e.token(t, e.good, "carol", idp.WithSessionID(sid))
	key := schemas.SessionKey(schemas.Principal{Issuer: e.good.Issuer(), SessionID: sid, Subject: "carol"})
	rev, _ := json.Marshal(schemas.Revocation{SessionKey: key, Code: code, Reason: "ended by test " + id, At: time.Now()})
	kv, err := e.adminJS.KeyValue(context.Background(), e.topo.BucketRevocations())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(context.Background(), key, rev); err != nil {
		t.Fatal(err)
	}
	m := requestMsg(t, id, tok, "")
	if _, err := e.platJS.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	return id, want{code: code, token: tok, check: func(t *testing.T, e *env, _ *schemas.Verified, d *schemas.Decision) {
		if d.Principal == nil || d.Principal.ID != schemas.PrincipalID(e.good.Issuer(), "carol") || d.Principal.SessionID != sid {
			t.Fatalf("principal of an ended session: %+v", d.Principal)
		}
		if d.SessionKey != key || d.Reason != "ended by test "+id {
			t.Fatalf("session key %s reason %q", d.SessionKey, d.Reason)
		}
	}}
}

func (e *env) assertOutput(t *testing.T, id string, w want, o output) {
	t.Helper()
	action := w.action
	if action == "" {
		action = testRequest.Action
	}
	if o.event.Source != verify.Source || o.event.SpecVersion != schemas.SpecVersion || o.msgID != o.event.ID {
		t.Fatalf("envelope: source %q specversion %q msg id %q event id %q", o.event.Source, o.event.SpecVersion, o.msgID, o.event.ID)
	}
	// Every verified event and deny is signed by authn, for what it is, as
	// stored (policy and the audit check exactly this).
	if k, err := e.keys.Trust().VerifyMsg(o.subject, o.header, o.raw, schemas.RoleAuthn); err != nil {
		t.Fatalf("authn's %s is not signed by authn: %v", o.event.Type, err)
	} else if k.ID != e.keys.Signer(schemas.RoleAuthn).KeyID() {
		t.Fatalf("signed by key %s", k.ID)
	}
	if w.verified {
		if o.event.Type != schemas.TypeVerified || o.subject != e.topo.Subjects.Verified(action) || o.event.ID != schemas.DerivedID(id, "verified") {
			t.Fatalf("want a verified event on %s, got %s on %s (%s)", e.topo.Subjects.Verified(action), o.event.Type, o.subject, o.raw)
		}
		var v schemas.Verified
		if err := o.event.DecodeData(&v); err != nil {
			t.Fatal(err)
		}
		if v.TokenFingerprint != schemas.Fingerprint(w.token) {
			t.Fatalf("fingerprint %q, want sha256 of the token", v.TokenFingerprint)
		}
		if w.check != nil {
			w.check(t, e, &v, nil)
		}
		return
	}
	if o.event.Type != schemas.TypeDecision || o.subject != e.topo.Subjects.Decision(action) || o.event.ID != schemas.DerivedID(id, "decision") {
		t.Fatalf("want a decision on %s, got %s on %s (%s)", e.topo.Subjects.Decision(action), o.event.Type, o.subject, o.raw)
	}
	var d schemas.Decision
	if err := o.event.DecodeData(&d); err != nil {
		t.Fatal(err)
	}
	if d.Decision != schemas.Deny || d.Code != w.code || d.Stage != schemas.StageAuthn || d.RequestID != id || d.Action != action {
		t.Fatalf("decision: %s %s stage %s request %s action %s (reason %q), want deny %s", d.Decision, d.Code, d.Stage, d.RequestID, d.Action, d.Reason, w.code)
	}
	if d.Reason == "" || d.Timings.ReceivedAt.IsZero() || d.Timings.DecidedAt.Before(d.Timings.ReceivedAt) || d.Timings.TotalMicros < 0 || d.Timings.AuthnMicros < 0 {
		t.Fatalf("reason %q timings %+v", d.Reason, d.Timings)
	}
	wantFP := ""
	if w.token != "" {
		wantFP = schemas.Fingerprint(w.token)
	}
	if d.TokenFingerprint != wantFP {
		t.Fatalf("fingerprint %q, want %q", d.TokenFingerprint, wantFP)
	}
	if d.Principal != nil && d.Code != schemas.CodeSessionRevoked && d.Code != schemas.CodeSessionExpired {
		t.Fatalf("principal set on a %s deny", d.Code)
	}
	if w.check != nil {
		w.check(t, e, nil, &d)
	}
}

func (e *env) assertCounter(t *testing.T, code string, atLeast float64) {
	t.Helper()
	e.assertMetric(t, "aigov_authn_outcomes_total", "code", code, atLeast)
}

func (e *env) assertMetric(t *testing.T, name, label, value string, atLeast float64) {
	t.Helper()
	families, err := e.registry.Gather()
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
					if got := m.GetCounter().GetValue(); got < atLeast {
						t.Fatalf("%s{%s=%q} = %v, want >= %v", name, label, value, got, atLeast)
					}
					return
				}
			}
		}
	}
	t.Fatalf("%s{%s=%q} missing", name, label, value)
}

// TestRedeliveryIsDeduplicated: the same request stored twice (a platform
// retry without a Nats-Msg-Id, or a redelivery after a lost ack) is
// handled twice but yields one event downstream, for passes and denies.
func TestRedeliveryIsDeduplicated(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	ctx := context.Background()
	cases := []struct {
		name, action, token string
		subject             func(string) string
	}{
		{"verified", "model.redeliver_ok", e.token(t, e.good, "alice"), e.topo.Subjects.Verified},
		{"denied", "model.redeliver_deny", "", e.topo.Subjects.Decision},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			id := schemas.NewID()
			req := testRequest
			req.Action = c.action
			m, err := client.NewRequestMessage(e.topo.Subjects, "test-platform", client.Call{ID: id, Token: c.token, Request: req}, "")
			if err != nil {
				t.Fatal(err)
			}
			m.Header.Del(schemas.HeaderMsgID) // so the request stream keeps both copies
			var seqs []uint64
			for range 2 {
				ack, err := e.platJS.PublishMsg(ctx, m)
				if err != nil {
					t.Fatal(err)
				}
				seqs = append(seqs, ack.Sequence)
			}
			if seqs[0] == seqs[1] {
				t.Fatal("the request stream de-duplicated the copies; the test needs both")
			}
			// The request stream is a work queue: a message is gone once
			// authn acked it, which it does only after its publish.
			reqs, err := e.adminJS.Stream(ctx, e.topo.StreamRequests())
			if err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(15 * time.Second)
			for _, seq := range seqs {
				for {
					_, err := reqs.GetMsg(ctx, seq)
					if errors.Is(err, jetstream.ErrMsgNotFound) {
						break
					}
					if time.Now().After(deadline) {
						t.Fatalf("request copy %d not acked within 15s (err %v)", seq, err)
					}
					time.Sleep(20 * time.Millisecond)
				}
			}
			out := e.out.await(t, id)
			stream := e.topo.StreamVerified()
			if out.event.Type == schemas.TypeDecision {
				stream = e.topo.StreamDecisions()
			}
			st, err := e.adminJS.Stream(ctx, stream)
			if err != nil {
				t.Fatal(err)
			}
			subject := c.subject(c.action)
			info, err := st.Info(ctx, jetstream.WithSubjectFilter(subject))
			if err != nil {
				t.Fatal(err)
			}
			if n := info.State.Subjects[subject]; n != 1 {
				t.Fatalf("%d messages on %s for two copies of one request, want 1", n, subject)
			}
		})
	}
}

// TestRevocationLookupFailureNeverAllows: when the revocation bucket cannot
// be read, a request is neither verified nor denied but left for
// redelivery, and goes through once the bucket is back.
func TestRevocationLookupFailureNeverAllows(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	ctx := context.Background()
	// A first request opens the bucket handle, so what fails next is the
	// lookup itself.
	warm := schemas.NewID()
	if _, err := e.platJS.PublishMsg(ctx, requestMsg(t, warm, e.token(t, e.good, "alice"), "")); err != nil {
		t.Fatal(err)
	}
	if o := e.out.await(t, warm); o.event.Type != schemas.TypeVerified {
		t.Fatalf("warm-up request: %s", o.event.Type)
	}
	if err := e.adminJS.DeleteKeyValue(ctx, e.topo.BucketRevocations()); err != nil {
		t.Fatal(err)
	}
	id := schemas.NewID()
	if _, err := e.platJS.PublishMsg(ctx, requestMsg(t, id, e.token(t, e.good, "alice"), "")); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !e.nakked(t) {
		if time.Now().After(deadline) {
			t.Fatal("the request was not nak'ed while the revocation bucket was missing")
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.out.mu.Lock()
	n := len(e.out.byReq[id])
	e.out.mu.Unlock()
	if n != 0 {
		t.Fatalf("authn published %d events for a request whose revocation lookup failed", n)
	}
	if err := e.topo.Ensure(ctx, e.adminJS); err != nil {
		t.Fatal(err)
	}
	if o := e.out.await(t, id); o.event.Type != schemas.TypeVerified {
		t.Fatalf("after the bucket returned: %s", o.event.Type)
	}
}

// nakked reports whether the authn runner has nak'ed any message.
func (e *env) nakked(t *testing.T) bool {
	t.Helper()
	families, err := e.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "aigov_messages_handled_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == "nak" && m.GetCounter().GetValue() > 0 {
					return true
				}
			}
		}
	}
	return false
}

// TestReplayProtection: with replay protection on for its issuer, a token
// serves one request; another request with it is token_replayed, while a
// redelivery of the first request still passes. Tokens of other issuers
// may be reused.
func TestReplayProtection(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	ctx := context.Background()
	send := func(id, tok string) output {
		t.Helper()
		m := requestMsg(t, id, tok, "")
		m.Header.Del(schemas.HeaderMsgID) // let a deliberate resend through
		if _, err := e.platJS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		return e.out.await(t, id)
	}
	tok := e.token(t, e.replay, "alice")
	first := schemas.NewID()
	if o := send(first, tok); o.event.Type != schemas.TypeVerified {
		t.Fatalf("first use: %s", o.raw)
	}
	second := schemas.NewID()
	o := send(second, tok)
	var d schemas.Decision
	if err := o.event.DecodeData(&d); err != nil || d.Code != schemas.CodeTokenReplayed {
		t.Fatalf("second use: %s (%v)", o.raw, err)
	}
	// The same request again (a redelivery): not a replay.
	if err := func() error {
		m := requestMsg(t, first, tok, "")
		m.Header.Del(schemas.HeaderMsgID)
		_, err := e.platJS.PublishMsg(ctx, m)
		return err
	}(); err != nil {
		t.Fatal(err)
	}
	// Wait for that copy to be handled: the request stream empties.
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := e.adminJS.Stream(ctx, e.topo.StreamRequests())
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the resent request was not handled")
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.out.mu.Lock()
	outs := append([]output(nil), e.out.byReq[first]...)
	e.out.mu.Unlock()
	for _, o := range outs {
		if o.event.Type != schemas.TypeVerified {
			t.Fatalf("a redelivered request was denied: %s", o.raw)
		}
	}
	e.assertCounter(t, string(schemas.CodeTokenReplayed), 1)
	// Without replay protection the same token serves many requests.
	reuse := e.token(t, e.good, "carol")
	for range 2 {
		if o := send(schemas.NewID(), reuse); o.event.Type != schemas.TypeVerified {
			t.Fatalf("reuse without replay protection: %s", o.raw)
		}
	}
}

// TestReplayWithReusedRequestIDAfterDuplicateWindow: a token with replay
// protection, replayed under the request id of its first use, must not pass
// again once JetStream has forgotten that id (the duplicate window): the
// verified event would then be stored anew and decided again, so the one
// token would serve two operations (here the second is another action).
func TestReplayWithReusedRequestIDAfterDuplicateWindow(t *testing.T) {
	t.Parallel()
	topo := topology.New("")
	topo.DuplicateWindow = time.Second
	e := startEnvTopo(t, topo)
	ctx := context.Background()
	tok := e.token(t, e.replay, "alice")
	id := schemas.NewID()
	if _, err := e.platJS.PublishMsg(ctx, requestMsg(t, id, tok, "")); err != nil {
		t.Fatal(err)
	}
	if o := e.out.await(t, id); o.event.Type != schemas.TypeVerified {
		t.Fatalf("first use: %s", o.raw)
	}
	time.Sleep(1500 * time.Millisecond) // past the duplicate window

	// The captured token and request id, replayed for another action.
	req := testRequest
	req.Action = "model.deploy"
	m, err := client.NewRequestMessage(schemas.NewSubjects(""), "attacker", client.Call{ID: id, Token: tok, Request: req}, "")
	if err != nil {
		t.Fatal(err)
	}
	m.Header.Del(schemas.HeaderMsgID)
	if _, err := e.platJS.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		e.out.mu.Lock()
		outs := append([]output(nil), e.out.byReq[id]...)
		e.out.mu.Unlock()
		if len(outs) >= 2 {
			var d schemas.Decision
			if outs[1].event.Type != schemas.TypeDecision || outs[1].event.DecodeData(&d) != nil || d.Code != schemas.CodeTokenReplayed {
				t.Fatalf("replayed token passed again under its first request id: %s %s", outs[1].subject, outs[1].raw)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing published for the replay within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
