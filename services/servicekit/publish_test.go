package servicekit_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
)

func TestPublisherDeduplicatesAndRepliesOnlyToInboxes(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{Open: true})
	nc, js := srv.ConnectT(t, "test")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "E", Subjects: []string{"e.>"}, Duplicates: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	keys := devkeys.New(t)
	signer := keys.Signer(schemas.RolePolicy)
	if _, err := servicekit.NewPublisher(nil, nc, signer, "s", zerolog.Nop()); err == nil {
		t.Fatal("nil jetstream accepted")
	}
	if _, err := servicekit.NewPublisher(js, nc, nil, "s", zerolog.Nop()); err == nil {
		t.Fatal("a publisher without a signing key was accepted")
	}
	p, err := servicekit.NewPublisher(js, nc, signer, "aigov/test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	out := servicekit.Outgoing{NATSSubject: "e.x", ID: "ev-1", Type: "t.v1", Subject: "about", Time: time.Now(), Data: map[string]int{"n": 1}}
	stored, err := p.Publish(ctx, out)
	if err != nil {
		t.Fatal(err)
	}
	body := stored.Data
	if _, err := p.Publish(ctx, out); err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages after publishing one event twice, want 1", info.State.Msgs)
	}
	ev, err := schemas.ParseEvent(body)
	if err != nil || ev.ID != "ev-1" || ev.Source != "aigov/test" || ev.Subject != "about" {
		t.Fatalf("published event %+v (%v)", ev, err)
	}

	sub, _ := nc.SubscribeSync("_INBOX.t.reply")
	bad, _ := nc.SubscribeSync("elsewhere.>")
	p.Reply(ctx, "r1", "", "elsewhere.x", stored)
	p.Reply(ctx, "r1", "", "_INBOX.t.reply", stored)
	m, err := sub.NextMsg(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var got schemas.Event
	if err := json.Unmarshal(m.Data, &got); err != nil || got.ID != "ev-1" {
		t.Fatalf("reply %s (%v)", m.Data, err)
	}
	// The stored event and the reply carry the same signature, made for the
	// stream subject, which the reply names.
	if m.Header.Get(signing.HeaderSubject) != "e.x" {
		t.Fatalf("reply signed for %q, want e.x", m.Header.Get(signing.HeaderSubject))
	}
	if _, err := keys.Trust().VerifyMsg("e.x", m.Header, m.Data, schemas.RolePolicy); err != nil {
		t.Fatalf("reply signature: %v", err)
	}
	sm, err := st.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Trust().VerifyMsg(sm.Subject, sm.Header, sm.Data, schemas.RolePolicy); err != nil {
		t.Fatalf("stored event's signature: %v", err)
	}
	if _, err := keys.Trust().VerifyMsg(sm.Subject, sm.Header, sm.Data, schemas.RoleAuthn); err == nil {
		t.Fatal("policy's signature was accepted as authn's")
	}
	if _, err := bad.NextMsg(200 * time.Millisecond); err == nil {
		t.Fatal("a reply went to a non-inbox subject")
	}
}

// Reply across tenant accounts, on the real server: a decision for a
// tenant's request reaches that tenant's connection in its own account;
// one whose reply header names another tenant's inbox, or a request from
// the aigov account naming a tenant's inbox, is not sent, so no requester
// can have a decision delivered into an account that is not its own.
func TestReplyStaysWithinTheRequestersTenant(t *testing.T) {
	t.Parallel()
	const a, b = "platform-a", "platform-b"
	srv := natsdev.StartT(t, natsdev.Options{Tenants: []string{a, b}})
	nc, js := srv.ConnectT(t, schemas.RoleAuthn)
	p, err := servicekit.NewPublisher(js, nc, devkeys.New(t).Signer(schemas.RoleAuthn), "aigov/test", zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	decision := func(text string) *nats.Msg {
		m := nats.NewMsg("aigov.decision.model.retrain")
		m.Data = []byte(text)
		return m
	}
	inbox := map[string]string{}
	subs := map[string]*nats.Subscription{}
	for _, tenant := range []string{a, b} {
		tc, err := srv.Connect(tenant)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(tc.Close)
		inbox[tenant] = schemas.TenantInboxPrefix(tenant) + ".c1.r1"
		s, err := tc.SubscribeSync(schemas.TenantInboxPrefix(tenant) + ".>")
		if err != nil {
			t.Fatal(err)
		}
		if err := tc.Flush(); err != nil {
			t.Fatal(err)
		}
		subs[tenant] = s
	}
	p.Reply(ctx, "r1", a, inbox[b], decision("a's decision, sent to b"))
	p.Reply(ctx, "r2", "", inbox[b], decision("aigov's decision, sent to b"))
	p.Reply(ctx, "r3", a, inbox[a], decision("a's decision"))
	m, err := subs[a].NextMsg(5 * time.Second)
	if err != nil || string(m.Data) != "a's decision" || m.Subject != inbox[a] {
		t.Fatalf("tenant %s: got %v, %v; want its own decision on %s", a, m, err, inbox[a])
	}
	if m, err := subs[b].NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("tenant %s received %q", b, m.Data)
	}
}
