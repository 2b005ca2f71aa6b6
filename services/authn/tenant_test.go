package main

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// The real authn against a server with two tenant accounts: platform-a's
// SDK, unchanged, gets authn's deny in its own account; a request whose
// reply header names platform-b's inbox is decided (and audited) but not
// answered there; a verified request carries the tenant the server named,
// so policy answers in the same account.
func TestRunWithTenants(t *testing.T) {
	t.Parallel()
	const a, b = "platform-a", "platform-b"
	srv := natsdev.StartT(t, natsdev.Options{Tenants: []string{a, b}})
	p, err := idp.Start(context.Background(), idp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	keys := devkeys.New(t)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(runCtx, servicekit.MapLookup(map[string]string{
			"AIGOV_NATS_URL":      srv.URL(),
			"AIGOV_NATS_TLS_CA":   srv.CAFile(),
			"AIGOV_NATS_PASSWORD": srv.Password(schemas.RoleAuthn),
			"AIGOV_HTTP_ADDR":     "127.0.0.1:0",
			"AIGOV_OIDC_ISSUERS":  p.Issuer(),
			"AIGOV_LOG_LEVEL":     "error",
			"AIGOV_SIGNING_KEY":   keys.KeyFile(schemas.RoleAuthn),
		}))
	}()
	defer func() {
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("run did not return after cancel")
		}
	}()

	bc, _ := srv.ConnectT(t, b)
	bSub, err := bc.SubscribeSync(schemas.TenantInboxPrefix(b) + ".>")
	if err != nil {
		t.Fatal(err)
	}
	if err := bc.Flush(); err != nil {
		t.Fatal(err)
	}
	nc, _ := srv.ConnectT(t, a)
	c, err := client.New(nc, client.Options{Timeout: 30 * time.Second, Trust: keys.Trust()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	expired, err := p.Token(ctx, "oscar", idp.WithIssuedAt(time.Now().Add(-time.Hour)), idp.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	req := schemas.Request{Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m1"}}
	d, err := c.Authorize(ctx, client.Call{Token: expired, Request: req})
	if err != nil {
		t.Fatal(err)
	}
	if d.Allowed() || d.Code != schemas.CodeTokenExpired || d.Stage != schemas.StageAuthn {
		t.Fatalf("decision %s %s from %s, want an authn token_expired deny", d.Decision, d.Code, d.Stage)
	}

	// Forged reply header: the deny is published, never sent to b.
	_, ajs := srv.ConnectT(t, natsdev.AdminUser)
	topo := topology.New("")
	forged, err := c.Message(client.Call{ID: "forged-1", Token: expired, Request: req}, schemas.TenantInboxPrefix(b)+".x.forged")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.PublishMsg(ctx, forged); err != nil {
		t.Fatal(err)
	}
	awaitEvent(ctx, t, ajs, topo.StreamDecisions(), topo.Subjects.Decision(req.Action), "forged-1")
	if m, err := bSub.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("%s received %s on %s", b, m.Data, m.Subject)
	}

	// A valid token: the verified event names the tenant, for policy.
	valid, err := p.Token(ctx, "oscar")
	if err != nil {
		t.Fatal(err)
	}
	ok, err := c.Message(client.Call{ID: "valid-1", Token: valid, Request: req}, schemas.TenantInboxPrefix(a)+".x.valid")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.PublishMsg(ctx, ok); err != nil {
		t.Fatal(err)
	}
	data := awaitEvent(ctx, t, ajs, topo.StreamVerified(), topo.Subjects.Verified(req.Action), "valid-1")
	var v schemas.Verified
	if err := json.Unmarshal(data, &v); err != nil || v.Tenant != a || v.ReplyTo != schemas.TenantInboxPrefix(a)+".x.valid" {
		t.Fatalf("verified %+v (%v): want tenant %s and its reply subject", v, err, a)
	}
}

// waitFor returns the data of the last event on subject of stream once it
// is the one for request id.
func awaitEvent(ctx context.Context, t *testing.T, js jetstream.JetStream, stream, subject, id string) json.RawMessage {
	t.Helper()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	for {
		m, err := st.GetLastMsgForSubject(ctx, subject)
		if err == nil {
			if ev, err := schemas.ParseEvent(m.Data); err == nil {
				var ids struct {
					RequestID string `json:"request_id"`
				}
				if json.Unmarshal(ev.Data, &ids) == nil && ids.RequestID == id {
					return ev.Data
				}
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no event for request %s on %s", id, subject)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
