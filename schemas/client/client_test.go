package client_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/servicekit/topology"
)

const adminUser = "admin"

// bus is an embedded JetStream server with one user per aigov role holding
// the topology's permissions, plus an unrestricted admin for setup.
type bus struct {
	url     string
	topo    topology.Topology
	signers map[string]*signing.Signer
	trust   *signing.Trust
}

// signed is a decision event as policy (or role) stores it and replies it:
// signed for its decision subject.
func (b *bus) signed(t *testing.T, role, replyTo string, ev schemas.Event, d schemas.Decision) *nats.Msg {
	t.Helper()
	body, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	stored := nats.NewMsg(b.topo.Subjects.Decision(d.Action))
	stored.Data = body
	stored.Header.Set(schemas.HeaderMsgID, ev.ID)
	stored.Header.Set(signing.Header, b.signers[role].Sign(stored.Subject, ev.ID, body))
	return schemas.ReplyMessage(replyTo, stored)
}

func startBus(t *testing.T) *bus {
	t.Helper()
	topo := topology.New("")
	opts := &server.Options{
		Host: "127.0.0.1", Port: server.RANDOM_PORT,
		JetStream: true, StoreDir: t.TempDir(),
		NoLog: true, NoSigs: true,
		Users: []*server.User{{Username: adminUser, Password: adminUser + "-pw"}},
	}
	for _, role := range schemas.Roles() {
		p, err := topo.Permissions(role)
		if err != nil {
			t.Fatal(err)
		}
		opts.Users = append(opts.Users, &server.User{
			Username: role, Password: role + "-pw",
			Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: p.Publish},
				Subscribe: &server.SubjectPermission{Allow: p.Subscribe},
			},
		})
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready within 10s")
	}
	b := &bus{url: srv.ClientURL(), topo: topo, signers: map[string]*signing.Signer{}}
	var keys []signing.Key
	for _, role := range []string{schemas.RoleAuthn, schemas.RolePolicy, schemas.RoleReaper} {
		_, key, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if b.signers[role], err = signing.NewSigner(key); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, signing.Key{Role: role, Public: b.signers[role].Public()})
	}
	if b.trust, err = signing.NewTrust(keys...); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := topo.Provision(ctx, b.js(t, b.connect(t, adminUser))); err != nil {
		t.Fatal(err)
	}
	return b
}

// connect logs in as role with the role's own inbox prefix, as its
// permissions require.
func (b *bus) connect(t *testing.T, role string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(b.url, nats.UserInfo(role, role+"-pw"), nats.CustomInboxPrefix(schemas.InboxPrefix(role)))
	if err != nil {
		t.Fatalf("connect as %s: %v", role, err)
	}
	t.Cleanup(nc.Close)
	return nc
}

func (b *bus) js(t *testing.T, nc *nats.Conn) jetstream.JetStream {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// requestStream reports the request stream's state, read as admin.
func (b *bus) requestStream(t *testing.T) jetstream.StreamState {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s, err := b.js(t, b.connect(t, adminUser)).Stream(ctx, b.topo.StreamRequests())
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State
}

func (b *bus) newClient(t *testing.T, opts client.Options) *client.Client {
	t.Helper()
	if opts.Trust == nil {
		opts.Trust = b.trust
	}
	c, err := client.New(b.connect(t, schemas.RolePlatform), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// seen is what the test decider observed of one request message.
type seen struct {
	subject       string
	msgID         string
	authorization string
	replyTo       string
	body          []byte
	event         schemas.Event
	request       schemas.Request
	err           error
}

// decide answers like policy would: allow for an even resource number,
// deny with policy_denied for an odd one.
func decide(ev schemas.Event, req schemas.Request) schemas.Decision {
	d := schemas.Decision{
		RequestID: ev.ID, Action: req.Action, Resource: req.Resource,
		Decision: schemas.Deny, Code: schemas.CodePolicyDenied, Stage: schemas.StagePolicy,
		Timings: schemas.Timings{ReceivedAt: ev.Time, DecidedAt: time.Now()},
	}
	var n int
	if _, err := fmt.Sscanf(req.Resource.ID, "m-%d", &n); err == nil && n%2 == 0 {
		d.Decision, d.Code = schemas.Allow, ""
	}
	return d
}

// decider consumes n requests as the authn user, then sends each its
// decision on the reply header's subject, in reverse order of arrival so
// that routing cannot rely on order. Unless once is set it repeats the
// replies every 50 ms until ctx ends, as a slow or redelivering pipeline
// would. Observations arrive on the returned channel, closed at the end.
func (b *bus) decider(ctx context.Context, t *testing.T, n int, once bool) <-chan seen {
	t.Helper()
	nc := b.connect(t, schemas.RoleAuthn)
	cons, err := b.topo.Bind(ctx, b.js(t, nc), schemas.ConsumerAuthn)
	if err != nil {
		t.Fatal(err)
	}
	out := make(chan seen, n)
	go func() {
		defer close(out)
		var got []seen
		var replies []*nats.Msg
		for len(got) < n && ctx.Err() == nil {
			batch, err := cons.Fetch(n-len(got), jetstream.FetchMaxWait(200*time.Millisecond))
			if err != nil {
				out <- seen{err: err}
				return
			}
			for m := range batch.Messages() {
				s := seen{
					subject:       m.Subject(),
					msgID:         m.Headers().Get(schemas.HeaderMsgID),
					authorization: m.Headers().Get(schemas.HeaderAuthorization),
					replyTo:       m.Headers().Get(schemas.HeaderReplyTo),
					body:          m.Data(),
				}
				s.event, s.err = schemas.ParseEvent(m.Data())
				if s.err == nil {
					s.err = s.event.DecodeData(&s.request)
				}
				if s.err == nil {
					s.err = m.Ack()
				}
				got = append(got, s)
			}
		}
		for i := len(got) - 1; i >= 0; i-- {
			s := got[i]
			if s.err != nil {
				continue
			}
			got[i].err = func() error {
				d := decide(s.event, s.request)
				ev, err := schemas.NewEvent(schemas.DerivedID(s.event.ID, "decision"), "aigov/test-decider", schemas.TypeDecision, time.Now(), d)
				if err != nil {
					return err
				}
				r := b.signed(t, schemas.RolePolicy, s.replyTo, ev, d)
				replies = append(replies, r)
				return nc.PublishMsg(r)
			}()
		}
		for _, s := range got {
			out <- s
		}
		if once {
			return
		}
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				for _, r := range replies {
					_ = nc.PublishMsg(r)
				}
			}
		}
	}()
	return out
}

func compileEventSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	c := jsonschema.NewCompiler()
	c.AssertFormat()
	fsys := schemas.JSONSchemas()
	names, err := fs.Glob(fsys, "*.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range names {
		raw, err := fs.ReadFile(fsys, name)
		if err != nil {
			t.Fatal(err)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.AddResource(schemas.SchemaBaseURL+name, doc); err != nil {
			t.Fatal(err)
		}
	}
	sch, err := c.Compile(schemas.SchemaBaseURL + schemas.SchemaEvent)
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

// Fifty concurrent callers each get their own decision, although the
// decider answers in reverse order; every request carried its id as
// Nats-Msg-Id, its caller's bearer token and a reply subject in the
// platform's inbox, and conforms to event.json.
func TestAuthorizeRoutesDecisionsToCallers(t *testing.T) {
	t.Parallel()
	b := startBus(t)
	c := b.newClient(t, client.Options{Source: "ml-platform/test"})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 50
	observed := b.decider(ctx, t, n, true)
	eventSchema := compileEventSchema(t)

	type result struct {
		call client.Call
		d    schemas.Decision
		err  error
	}
	results := make([]result, n)
	var wg sync.WaitGroup
	for i := range n {
		call := client.Call{
			Token:   fmt.Sprintf("token-%d", i),
			Request: schemas.Request{Action: "model.retrain", Resource: schemas.Resource{Type: "Model", ID: fmt.Sprintf("m-%d", i)}, Context: map[string]any{"i": float64(i)}},
		}
		if i%5 != 0 { // every fifth call lets the client choose the id
			call.ID = fmt.Sprintf("req-%02d", i)
		}
		wg.Go(func() {
			d, err := c.Authorize(ctx, call)
			results[i] = result{call, d, err}
		})
	}
	wg.Wait()

	byResource := map[string]seen{}
	for s := range observed {
		if s.err != nil {
			t.Fatalf("decider: %v", s.err)
		}
		byResource[s.request.Resource.ID] = s
	}
	if len(byResource) != n {
		t.Fatalf("decider saw %d distinct requests, want %d", len(byResource), n)
	}
	for i, r := range results {
		if r.err != nil {
			t.Errorf("call %d: %v", i, r.err)
			continue
		}
		s, ok := byResource[r.call.Request.Resource.ID]
		if !ok {
			t.Errorf("call %d: its request never reached the stream", i)
			continue
		}
		if r.call.ID != "" && s.event.ID != r.call.ID {
			t.Errorf("call %d: request id %q, want %q", i, s.event.ID, r.call.ID)
		}
		if s.msgID != s.event.ID || s.msgID == "" {
			t.Errorf("call %d: Nats-Msg-Id %q, event id %q", i, s.msgID, s.event.ID)
		}
		if want := "Bearer " + r.call.Token; s.authorization != want {
			t.Errorf("call %d: Authorization %q, want %q", i, s.authorization, want)
		}
		if !strings.HasPrefix(s.replyTo, schemas.InboxPrefix(schemas.RolePlatform)+".") {
			t.Errorf("call %d: reply subject %q is not in the platform's inbox", i, s.replyTo)
		}
		if s.subject != "aigov.request.model.retrain" || s.event.Type != schemas.TypeRequest || s.event.Source != "ml-platform/test" {
			t.Errorf("call %d: subject %s, type %s, source %s", i, s.subject, s.event.Type, s.event.Source)
		}
		if strings.Contains(string(s.body), r.call.Token) {
			t.Errorf("call %d: the token is in the event body", i)
		}
		doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(s.body))
		if err != nil {
			t.Fatal(err)
		}
		if err := eventSchema.Validate(doc); err != nil {
			t.Errorf("call %d: request does not conform to event.json: %v", i, err)
		}
		want := decide(s.event, s.request)
		if r.d.RequestID != s.event.ID || r.d.Resource != r.call.Request.Resource || r.d.Decision != want.Decision || r.d.Code != want.Code {
			t.Errorf("call %d (%s) got decision %+v, want request %s %s %s", i, r.call.Request.Resource.ID, r.d, s.event.ID, want.Decision, want.Code)
		}
	}
}

// With no decision, Authorize ends with ErrTimeout at the caller's
// deadline, or at Options.Timeout when the context has none; the request
// stays queued. Retrying with the same id publishes nothing new (it is
// de-duplicated) and receives the decision of the original.
func TestAuthorizeTimeoutAndRetry(t *testing.T) {
	t.Parallel()
	b := startBus(t)
	c := b.newClient(t, client.Options{Timeout: 150 * time.Millisecond})
	call := client.Call{ID: "req-retry", Token: "token", Request: schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m-2"}}}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	start := time.Now()
	_, err := c.Authorize(ctx, call)
	cancel()
	if !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("Authorize with a 300ms deadline: %v, want ErrTimeout", err)
	}
	if el := time.Since(start); el < 250*time.Millisecond || el > 5*time.Second {
		t.Errorf("timed out after %v, want about 300ms", el)
	}

	start = time.Now()
	_, err = c.Authorize(context.Background(), call)
	if !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("Authorize without a deadline: %v, want ErrTimeout", err)
	}
	if el := time.Since(start); el < 100*time.Millisecond || el > 5*time.Second {
		t.Errorf("timed out after %v, want about Options.Timeout (150ms)", el)
	}
	if st := b.requestStream(t); st.Msgs != 1 || st.LastSeq != 1 {
		t.Fatalf("request stream holds %d messages (last seq %d), want the one request de-duplicated", st.Msgs, st.LastSeq)
	}

	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	observed := b.decider(ctx, t, 1, false)
	d, err := c.Authorize(ctx, call)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if d.RequestID != call.ID || !d.Allowed() {
		t.Fatalf("retry got %+v, want the allow of %s", d, call.ID)
	}
	cancel()
	for s := range observed {
		if s.err != nil || s.event.ID != call.ID {
			t.Fatalf("decider saw %+v", s)
		}
	}
	if st := b.requestStream(t); st.LastSeq != 1 {
		t.Fatalf("request stream last seq %d after the retry, want 1 (de-duplicated)", st.LastSeq)
	}
}

// A decision that arrives after its caller gave up goes to
// Options.Unclaimed (a gateway keeps it for the caller's retry), verified
// like any other.
func TestUnclaimedDecision(t *testing.T) {
	t.Parallel()
	b := startBus(t)
	late := make(chan schemas.Decision, 1)
	c := b.newClient(t, client.Options{Timeout: 100 * time.Millisecond, Unclaimed: func(d schemas.Decision) {
		select {
		case late <- d:
		default:
		}
	}})
	call := client.Call{ID: "req-late", Token: "token", Request: schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m-3"}}}
	if _, err := c.Authorize(context.Background(), call); !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("Authorize: %v, want ErrTimeout", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for range b.decider(ctx, t, 1, true) {
	}
	select {
	case d := <-late:
		if d.RequestID != call.ID || d.Action != call.Request.Action || d.Resource != call.Request.Resource {
			t.Errorf("unclaimed %+v, want the decision of %s", d, call.ID)
		}
	case <-ctx.Done():
		t.Fatal("the late decision never reached Options.Unclaimed")
	}
}

// After Close, Authorize fails with ErrClosed and publishes nothing.
func TestAuthorizeAfterClose(t *testing.T) {
	t.Parallel()
	b := startBus(t)
	c := b.newClient(t, client.Options{})
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Authorize(ctx, client.Call{Token: "t", Request: schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m"}}})
	if !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Authorize after Close: %v, want ErrClosed", err)
	}
	if st := b.requestStream(t); st.Msgs != 0 {
		t.Fatalf("request stream holds %d messages after a closed client's call", st.Msgs)
	}
}

// An invalid request fails at once with ErrInvalidEvent, before anything is
// published.
func TestAuthorizeRejectsInvalidRequest(t *testing.T) {
	t.Parallel()
	b := startBus(t)
	c := b.newClient(t, client.Options{Timeout: 10 * time.Second})
	bad := []schemas.Request{
		{Action: "retrain", Resource: schemas.Resource{Type: "Model", ID: "m"}},
		{Action: "model.>", Resource: schemas.Resource{Type: "Model", ID: "m"}},
		{Action: "model.deploy", Resource: schemas.Resource{Type: "model", ID: "m"}},
		{Action: "model.deploy", Resource: schemas.Resource{Type: "Model"}},
	}
	for _, req := range bad {
		start := time.Now()
		_, err := c.Authorize(context.Background(), client.Call{Token: "t", Request: req})
		if !errors.Is(err, schemas.ErrInvalidEvent) || errors.Is(err, client.ErrTimeout) {
			t.Errorf("Authorize(%+v) = %v, want ErrInvalidEvent", req, err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Errorf("Authorize(%+v) took %v; it must fail before publishing", req, el)
		}
		if _, err := c.Message(client.Call{Request: req}, ""); !errors.Is(err, schemas.ErrInvalidEvent) {
			t.Errorf("Message(%+v) = %v, want ErrInvalidEvent", req, err)
		}
	}
	if st := b.requestStream(t); st.Msgs != 0 || st.LastSeq != 0 {
		t.Fatalf("request stream holds %d messages (last seq %d) after invalid calls", st.Msgs, st.LastSeq)
	}
}

// NewRequestMessage builds the message a platform may publish itself.
func TestNewRequestMessage(t *testing.T) {
	t.Parallel()
	req := schemas.Request{Action: "dataset.promote", Resource: schemas.Resource{Type: "Dataset", ID: "d1"}}
	m, err := client.NewRequestMessage(schemas.NewSubjects("acme"), "src", client.Call{ID: "r1", Token: "jwt", Request: req}, "")
	if err != nil {
		t.Fatal(err)
	}
	if m.Subject != "acme.request.dataset.promote" || m.Header.Get(schemas.HeaderMsgID) != "r1" || m.Header.Get(schemas.HeaderAuthorization) != "Bearer jwt" {
		t.Errorf("message %s %v", m.Subject, m.Header)
	}
	if _, ok := m.Header[schemas.HeaderReplyTo]; ok {
		t.Errorf("reply header set without a reply subject: %v", m.Header)
	}
	ev, err := schemas.ParseEvent(m.Data)
	if err != nil {
		t.Fatal(err)
	}
	if ev.ID != "r1" || ev.Subject != `Dataset::"d1"` {
		t.Errorf("event %+v", ev)
	}
	anon, err := client.NewRequestMessage(schemas.NewSubjects(""), "src", client.Call{Request: req}, "_INBOX.platform.x.y")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := anon.Header[schemas.HeaderAuthorization]; ok {
		t.Error("Authorization header set without a token")
	}
	if anon.Header.Get(schemas.HeaderReplyTo) != "_INBOX.platform.x.y" || anon.Header.Get(schemas.HeaderMsgID) == "" {
		t.Errorf("headers %v", anon.Header)
	}
}

func TestNewRejectsNilConn(t *testing.T) {
	t.Parallel()
	if _, err := client.New(nil, client.Options{}); err == nil {
		t.Fatal("New(nil) succeeded")
	}
	b := startBus(t)
	if _, err := client.New(b.connect(t, schemas.RolePlatform), client.Options{}); err == nil {
		t.Fatal("New without a trust file succeeded: it could not tell a decision from a forgery")
	}
}

// TestAuthorizeRejectsForgedReplies: anyone who can publish on the
// platform's inbox (a stolen platform or service credential) sends an
// allow first; unsigned, signed by a role that does not decide, signed for
// a subject that is not a decision's, signed by a key nobody trusts, or
// altered after signing, none is taken, and the genuine (signed) deny is.
func TestAuthorizeRejectsForgedReplies(t *testing.T) {
	t.Parallel()
	b := startBus(t)
	c := b.newClient(t, client.Options{Source: "ml-platform/test", Timeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call := client.Call{ID: "job-forged", Token: "tok",
		Request: schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m-1"}}}

	nc := b.connect(t, schemas.RoleAuthn)
	cons, err := b.topo.Bind(ctx, b.js(t, nc), schemas.ConsumerAuthn)
	if err != nil {
		t.Fatal(err)
	}
	_, outsiderKey, _ := ed25519.GenerateKey(rand.Reader)
	outsider, _ := signing.NewSigner(outsiderKey)
	const forgeries = 7
	go func() {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			return
		}
		for m := range batch.Messages() {
			_ = m.Ack()
			replyTo := m.Headers().Get(schemas.HeaderReplyTo)
			allow := schemas.Decision{RequestID: call.ID, Action: call.Request.Action, Resource: call.Request.Resource,
				Decision: schemas.Allow, Stage: schemas.StagePolicy, TokenFingerprint: schemas.Fingerprint(call.Token)}
			ev, _ := schemas.NewEvent(schemas.NewID(), "aigov/policy", schemas.TypeDecision, time.Now(), allow)
			body, _ := json.Marshal(ev)

			unsigned := nats.NewMsg(replyTo)
			unsigned.Data = body
			_ = nc.PublishMsg(unsigned)

			_ = nc.PublishMsg(b.signed(t, schemas.RoleReaper, replyTo, ev, allow))

			// authn's key, but authn decides only denies: an allow it
			// signed is not a decision.
			_ = nc.PublishMsg(b.signed(t, schemas.RoleAuthn, replyTo, ev, allow))

			wrongSubject := b.signed(t, schemas.RolePolicy, replyTo, ev, allow)
			stored := nats.NewMsg(b.topo.Subjects.Session("revoked"))
			stored.Data = body
			stored.Header.Set(schemas.HeaderMsgID, ev.ID)
			stored.Header.Set(signing.Header, b.signers[schemas.RolePolicy].Sign(stored.Subject, ev.ID, body))
			wrongSubject = schemas.ReplyMessage(replyTo, stored)
			_ = nc.PublishMsg(wrongSubject)

			foreign := b.signed(t, schemas.RolePolicy, replyTo, ev, allow)
			foreign.Header.Set(signing.Header, outsider.Sign(b.topo.Subjects.Decision(allow.Action), ev.ID, body))
			_ = nc.PublishMsg(foreign)

			// A genuine deny, its body then changed to an allow.
			deny := allow
			deny.Decision, deny.Code = schemas.Deny, schemas.CodePolicyDenied
			dev, _ := schemas.NewEvent(schemas.NewID(), "aigov/policy", schemas.TypeDecision, time.Now(), deny)
			altered := b.signed(t, schemas.RolePolicy, replyTo, dev, deny)
			altered.Data = []byte(strings.Replace(string(altered.Data), `"decision":"deny"`, `"decision":"allow"`, 1))
			_ = nc.PublishMsg(altered)

			// The signed subject claimed by the reply header, moved.
			moved := b.signed(t, schemas.RolePolicy, replyTo, ev, allow)
			moved.Header.Set(signing.HeaderSubject, b.topo.Subjects.Decision("model.retrain"))
			_ = nc.PublishMsg(moved)

			_ = nc.PublishMsg(b.signed(t, schemas.RolePolicy, replyTo, dev, deny))
		}
	}()
	d, err := c.Authorize(ctx, call)
	if err != nil {
		t.Fatal(err)
	}
	if d.Allowed() || d.Code != schemas.CodePolicyDenied {
		t.Fatalf("the client took a forged reply: %s/%s", d.Decision, d.Code)
	}
	if got := c.Rejected(); got != forgeries {
		t.Fatalf("%d replies rejected, want the %d forgeries", got, forgeries)
	}
}

// TestAuthorizeIgnoresAnotherRequestsDecision: authn and policy reply to
// whatever _INBOX. subject a request names, so anyone who may publish
// requests can have a genuine decision of its own request (same request id,
// which the caller may choose predictably, its own token and action) sent
// to another caller's reply subject. The client must take only a decision
// about its own call: same action and resource, and its token.
func TestAuthorizeIgnoresAnotherRequestsDecision(t *testing.T) {
	t.Parallel()
	b := startBus(t)
	c := b.newClient(t, client.Options{Source: "ml-platform/test", Timeout: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	call := client.Call{ID: "job-42", Token: "victim-token",
		Request: schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m-1"}}}

	nc := b.connect(t, schemas.RoleAuthn)
	cons, err := b.topo.Bind(ctx, b.js(t, nc), schemas.ConsumerAuthn)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
		if err != nil {
			return
		}
		for m := range batch.Messages() {
			_ = m.Ack()
			replyTo := m.Headers().Get(schemas.HeaderReplyTo)
			ev, err := schemas.ParseEvent(m.Data())
			if err != nil {
				return
			}
			send := func(d schemas.Decision) {
				out, _ := schemas.NewEvent(schemas.NewID(), "aigov/policy", schemas.TypeDecision, time.Now(), d)
				_ = nc.PublishMsg(b.signed(t, schemas.RolePolicy, replyTo, out, d))
			}
			// First: the allow of another caller's request under the same
			// id (its own token; once for another action, once for this one).
			other := schemas.Decision{RequestID: ev.ID, Action: "model.retrain", Resource: call.Request.Resource,
				Decision: schemas.Allow, Stage: schemas.StagePolicy, TokenFingerprint: schemas.Fingerprint("attacker-token")}
			send(other)
			other.Action = call.Request.Action
			send(other)
			// Then the call's own decision.
			send(schemas.Decision{RequestID: ev.ID, Action: call.Request.Action, Resource: call.Request.Resource,
				Decision: schemas.Deny, Code: schemas.CodePolicyDenied, Stage: schemas.StagePolicy,
				TokenFingerprint: schemas.Fingerprint(call.Token)})
		}
	}()
	d, err := c.Authorize(ctx, call)
	if err != nil {
		t.Fatal(err)
	}
	if d.Allowed() || d.Code != schemas.CodePolicyDenied {
		t.Fatalf("the client took another request's decision: %s %s on %s (token %s)", d.Decision, d.Action, d.Resource, d.TokenFingerprint)
	}
}

// A retry of a request already decided, whose decision never reached the
// caller (issue 18 a), is resent under a new Nats-Msg-Id with the same
// request id, so that authn can answer it with the stored decision; the
// retry of a request still queued is not (TestAuthorizeTimeoutAndRetry).
func TestRetryOfADecidedRequestIsResent(t *testing.T) {
	t.Parallel()
	b := startBus(t)
	c := b.newClient(t, client.Options{})
	call := client.Call{ID: "req-lost-reply", Token: "token", Request: schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m-4"}}}

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err := c.Authorize(ctx, call)
	cancel()
	if !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("first copy: %v, want ErrTimeout", err)
	}
	// Decided (consumed and acked) after the caller gave up: the one
	// reply goes to no one.
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for s := range b.decider(ctx, t, 1, true) {
		if s.err != nil || s.msgID != call.ID {
			t.Fatalf("first copy seen as %+v", s)
		}
	}
	time.Sleep(300 * time.Millisecond) // the lost reply has come and gone

	observed := b.decider(ctx, t, 1, true)
	d, err := c.Authorize(ctx, call)
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if d.RequestID != call.ID || !d.Allowed() {
		t.Fatalf("retry got %+v, want the allow of %s", d, call.ID)
	}
	for s := range observed {
		if s.err != nil || s.event.ID != call.ID || s.msgID == call.ID || s.msgID == "" {
			t.Fatalf("resent copy: event id %q, Nats-Msg-Id %q (%v); want the request id under a new Nats-Msg-Id", s.event.ID, s.msgID, s.err)
		}
	}
	if st := b.requestStream(t); st.LastSeq != 2 {
		t.Fatalf("request stream last seq %d, want 2: the first copy and the resent one", st.LastSeq)
	}
}

// Each call brings the client's connection two messages, the request's
// PubAck and the decision, not four: the decision inbox is not the
// connection's request/reply mux, which would have the server deliver
// each PubAck and each decision to both subscriptions.
func TestAuthorizeReceivesEachReplyOnce(t *testing.T) {
	t.Parallel()
	b := startBus(t)
	nc := b.connect(t, schemas.RolePlatform)
	c, err := client.New(nc, client.Options{Source: "ml-platform/test", Trust: b.trust})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const n = 20
	observed := b.decider(ctx, t, n, true)
	before := nc.Stats().InMsgs
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			_, errs[i] = c.Authorize(ctx, client.Call{Token: "t", Request: schemas.Request{Action: "model.retrain", Resource: schemas.Resource{Type: "Model", ID: fmt.Sprintf("m-%d", i)}}})
		})
	}
	wg.Wait()
	for s := range observed {
		if s.err != nil {
			t.Fatalf("decider: %v", s.err)
		}
	}
	for i, err := range errs {
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if got := nc.Stats().InMsgs - before; got != 2*n {
		t.Errorf("the connection received %d messages for %d calls, want %d (a PubAck and a decision each)", got, n, 2*n)
	}
}
