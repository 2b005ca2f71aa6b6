package natsdev_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

const tenantA, tenantB = "platform-a", "platform-b"

// apiCall sends a raw JetStream API request: an error unless some
// JetStream answered it without an error (an account without JetStream
// answers that it has none).
func apiCall(ctx context.Context, nc *nats.Conn, subject string) error {
	m, err := nc.RequestWithContext(ctx, subject, nil)
	if err != nil {
		return err
	}
	if st := m.Header.Get("Status"); st != "" {
		return errors.New("status " + st + " " + m.Header.Get("Description"))
	}
	var resp struct {
		Error *struct {
			Description string `json:"description"`
		} `json:"error"`
	}
	if err := json.Unmarshal(m.Data, &resp); err == nil && resp.Error != nil {
		return errors.New(resp.Error.Description)
	}
	return nil
}

// respond plays authn on the aigov side of a server with tenants: it takes
// each request from authn's consumer and answers it, as the services do,
// on the request's reply header if schemas.ReplyAllowed lets it answer
// there. It returns the subjects the requests were stored under.
func respond(ctx context.Context, t *testing.T, srv *natsdev.Server, keys *devkeys.Set) <-chan string {
	t.Helper()
	nc, js := srv.ConnectT(t, schemas.RoleAuthn)
	topo := topology.New("")
	cons, err := topo.Bind(ctx, js, schemas.ConsumerAuthn)
	if err != nil {
		t.Fatal(err)
	}
	stored := make(chan string, 16)
	cc, err := cons.Consume(func(m jetstream.Msg) {
		defer func() { _ = m.Ack() }()
		stored <- m.Subject()
		tenant, action, err := topo.Subjects.RequestOf(m.Subject())
		ev, perr := schemas.ParseEvent(m.Data())
		var req schemas.Request
		if err != nil || perr != nil || ev.DecodeData(&req) != nil {
			return
		}
		reply := m.Headers().Get(schemas.HeaderReplyTo)
		if !schemas.ReplyAllowed(tenant, reply) {
			return
		}
		d := schemas.Decision{RequestID: ev.ID, Action: action, Resource: req.Resource, Decision: schemas.Deny, Code: "test", Reason: "tenant " + tenant}
		out, err := schemas.NewEvent(schemas.DerivedID(ev.ID, schemas.KindDecision), "test", schemas.TypeDecision, time.Now(), d)
		if err != nil {
			return
		}
		// Signed for its decision subject, as authn signs its denies.
		msg, err := schemas.EventMessage(topo.Subjects.Decision(action), out)
		if err != nil {
			return
		}
		keys.Signer(schemas.RoleAuthn).SignMsgs([]*nats.Msg{msg})
		_ = nc.PublishMsg(schemas.ReplyMessage(reply, msg))
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cc.Stop)
	return stored
}

// A tenant's SDK works unchanged from its own account: its request is
// stored in the aigov account under the tenant's subject (the server, not
// the sender, names the tenant), the JetStream ack comes back through the
// service import, and the decision reaches the tenant's inbox through its
// stream import. The other tenant sees nothing of it.
func TestTenantRequestGetsItsDecision(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{Tenants: []string{tenantA, tenantB}})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	keys := devkeys.New(t)
	stored := respond(ctx, t, srv, keys)

	b, _ := srv.ConnectT(t, tenantB)
	bSub, err := b.SubscribeSync(schemas.TenantInboxPrefix(tenantB) + ".>")
	if err != nil {
		t.Fatal(err)
	}

	nc, _ := srv.ConnectT(t, tenantA)
	c, err := client.New(nc, client.Options{Timeout: 20 * time.Second, Trust: keys.Trust()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res := schemas.Resource{Type: "Model", ID: "m1"}
	d, err := c.Authorize(ctx, client.Call{Token: "t", Request: schemas.Request{Action: "model.deploy", Resource: res}})
	if err != nil {
		t.Fatal(err)
	}
	if d.Reason != "tenant "+tenantA || d.Resource != res {
		t.Fatalf("decision %+v: want the responder's answer to %s", d, tenantA)
	}
	if got := <-stored; got != schemas.NewSubjects("").TenantRequest(tenantA, "model.deploy") {
		t.Fatalf("request stored as %s, want under %s's tenant subject", got, tenantA)
	}
	if m, err := bSub.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("%s received %s's traffic on %s", tenantB, tenantA, m.Subject)
	}

	// The aigov account's own platform keeps working beside the tenants.
	pc, _ := srv.ConnectT(t, schemas.RolePlatform)
	pcl, err := client.New(pc, client.Options{Timeout: 20 * time.Second, Trust: keys.Trust()})
	if err != nil {
		t.Fatal(err)
	}
	defer pcl.Close()
	if d, err := pcl.Authorize(ctx, client.Call{Request: schemas.Request{Action: "model.deploy", Resource: res}}); err != nil || d.Reason != "tenant " {
		t.Fatalf("same-account platform: decision %+v, %v", d, err)
	}
}

// Stolen tenant credentials are tried against the real server. Each attack
// is refused, and its effect is checked from the aigov side: nothing read,
// nothing changed. The attacks fail twice over: the tenant user's
// permissions refuse them, and with no permissions at all (unrestricted)
// the account boundary alone still holds, since the aigov account exports
// nothing else and the tenant's account has no JetStream.
func TestTenantCannotReachBeyondItsAccount(t *testing.T) {
	t.Parallel()
	for _, unrestricted := range []bool{false, true} {
		name := "permissions"
		if unrestricted {
			name = "account boundary alone"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			tenantAttacks(t, unrestricted)
		})
	}
}

func tenantAttacks(t *testing.T, unrestricted bool) {
	srv := natsdev.StartT(t, natsdev.Options{Tenants: []string{tenantA, tenantB}, UnrestrictedTenants: unrestricted})
	topo := topology.New("")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	_, ajs := srv.ConnectT(t, natsdev.AdminUser)
	authn, _ := srv.ConnectT(t, schemas.RoleAuthn)
	requests := func() uint64 {
		st, err := ajs.Stream(ctx, topo.StreamRequests())
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().State.Msgs
	}
	if _, err := ajs.Publish(ctx, topo.Subjects.Request("model.deploy"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}

	// reads: subscribe as the attacker, have aigov send what it must not
	// see, and check that nothing arrives.
	b, _ := srv.ConnectT(t, tenantB)
	bSub, err := b.SubscribeSync(schemas.TenantInboxPrefix(tenantB) + ".>")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	reads := []struct {
		name, subject string
		send          func() error
	}{
		{"read the other tenant's replies", schemas.TenantInboxPrefix(tenantB) + ".>", func() error {
			return authn.Publish(schemas.TenantInboxPrefix(tenantB)+".x.1", []byte("b's decision"))
		}},
		{"read decisions", topo.Subjects.All(schemas.KindDecision), func() error {
			_, err := ajs.Publish(ctx, topo.Subjects.Decision("model.deploy"), []byte(`{}`))
			return err
		}},
		{"read aigov's inboxes", "_INBOX.>", func() error {
			return authn.Publish(schemas.InboxPrefix(schemas.RolePlatform)+".x.1", []byte("platform's decision"))
		}},
		{"read everything", ">", func() error {
			return authn.Publish(schemas.TenantInboxPrefix(tenantB)+".x.2", []byte("b's decision"))
		}},
	}
	for _, r := range reads {
		t.Run(r.name, func(t *testing.T) {
			var violation error
			nc, err := srv.Connect(tenantA, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { violation = err }))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			sub, err := nc.SubscribeSync(r.subject)
			if err != nil {
				t.Fatal(err)
			}
			if err := nc.Flush(); err != nil {
				t.Fatal(err)
			}
			if err := r.send(); err != nil {
				t.Fatal(err)
			}
			if m, err := sub.NextMsg(300 * time.Millisecond); err == nil {
				t.Fatalf("%s received %s on %s", tenantA, m.Data, m.Subject)
			}
			// What the other tenant may read, it did: the message was sent.
			for {
				m, err := bSub.NextMsg(10 * time.Millisecond)
				if err != nil {
					break
				}
				if !strings.HasPrefix(m.Subject, schemas.TenantInboxPrefix(tenantB)+".") {
					t.Errorf("%s received %s", tenantB, m.Subject)
				}
			}
			if unrestricted {
				return
			}
			if violation == nil || !strings.Contains(strings.ToLower(violation.Error()), "permissions violation") {
				t.Errorf("subscribe to %s: got %v, want a permissions violation", r.subject, violation)
			}
		})
	}

	// changes: try as the attacker through JetStream, then check the aigov
	// account's state as the admin.
	changes := []struct {
		name   string
		try    func(ctx context.Context, nc *nats.Conn, js jetstream.JetStream) error
		effect func() bool
	}{
		{"read the request stream's info", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.Stream(ctx, topo.StreamRequests())
			return err
		}, func() bool { return false }},
		{"purge the request stream", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			// The raw API call: a client-side stream lookup would fail first.
			return apiCall(ctx, nc, "$JS.API.STREAM.PURGE."+topo.StreamRequests())
		}, func() bool { return requests() == 0 }},
		{"create a consumer on the decisions stream", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.CreateOrUpdateConsumer(ctx, topo.StreamDecisions(), jetstream.ConsumerConfig{Durable: "thief", AckPolicy: jetstream.AckExplicitPolicy})
			return err
		}, func() bool {
			_, err := ajs.Consumer(ctx, topo.StreamDecisions(), "thief")
			return err == nil
		}},
		{"read the active policy set", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			kv, err := js.KeyValue(ctx, topo.BucketPolicy())
			if err != nil {
				return err
			}
			_, err = kv.Get(ctx, topology.PolicyActiveKey)
			return err
		}, func() bool { return false }},
		{"read a revocation", func(ctx context.Context, nc *nats.Conn, _ jetstream.JetStream) error {
			return apiCall(ctx, nc, "$JS.API.DIRECT.GET.KV_"+topo.BucketRevocations()+".$KV."+topo.BucketRevocations()+".s1")
		}, func() bool { return false }},
		{"forge a verified event", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, topo.Subjects.Verified("model.deploy"), []byte(`{"forged":true}`))
			return err
		}, func() bool {
			st, err := ajs.Stream(ctx, topo.StreamVerified())
			return err == nil && st.CachedInfo().State.Msgs > 0
		}},
		{"send a request as the other tenant", func(ctx context.Context, _ *nats.Conn, js jetstream.JetStream) error {
			_, err := js.Publish(ctx, topo.Subjects.TenantRequest(tenantB, "model.deploy"), []byte(`{}`))
			return err
		}, func() bool {
			st, err := ajs.Stream(ctx, topo.StreamRequests())
			if err != nil {
				return false
			}
			_, err = st.GetLastMsgForSubject(ctx, topo.Subjects.TenantRequests(tenantB))
			return !errors.Is(err, jetstream.ErrMsgNotFound)
		}},
	}
	for _, c := range changes {
		t.Run(c.name, func(t *testing.T) {
			nc, err := srv.Connect(tenantA, nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
			if err != nil {
				t.Fatal(err)
			}
			defer nc.Close()
			js, _ := jetstream.New(nc)
			actx, acancel := context.WithTimeout(ctx, 500*time.Millisecond)
			err = c.try(actx, nc, js)
			acancel()
			if err == nil {
				t.Errorf("%s may not %s, but the server accepted it", tenantA, c.name)
			}
			t.Logf("refused: %v", err)
			if c.effect() {
				t.Errorf("%s may not %s, but it took effect", tenantA, c.name)
			}
		})
	}

	// The control: what a tenant may do, it can. Its request lands in the
	// aigov request stream under its own subject.
	_, js := srv.ConnectT(t, tenantA)
	ack, err := js.Publish(ctx, topo.Subjects.Request("model.deploy"), []byte(`{}`))
	if err != nil || ack.Stream != topo.StreamRequests() {
		t.Fatalf("tenant request: ack %+v, %v", ack, err)
	}
	st, _ := ajs.Stream(ctx, topo.StreamRequests())
	if _, err := st.GetLastMsgForSubject(ctx, topo.Subjects.TenantRequest(tenantA, "model.deploy")); err != nil {
		t.Fatalf("tenant request not stored under its tenant subject: %v", err)
	}
}

// With client certificates, a tenant's certificate maps to its user in its
// own account: its request reaches the aigov request stream.
func TestTenantWithClientCertificate(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{Tenants: []string{tenantA}, ClientCerts: true})
	if cert, _ := srv.ClientCert(tenantA); cert == "" {
		t.Fatal("no client certificate for the tenant")
	}
	_, js := srv.ConnectT(t, tenantA)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ack, err := js.Publish(ctx, schemas.NewSubjects("").Request("model.deploy"), []byte(`{}`))
	if err != nil || ack.Stream != topology.New("").StreamRequests() {
		t.Fatalf("tenant request over mutual TLS: ack %+v, %v", ack, err)
	}
}
