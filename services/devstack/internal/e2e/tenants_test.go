package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// Two platforms in tenant accounts of their own, through the real binaries
// (authn's token check and policy's Cedar decision): each gets its own
// decision, allow and deny, in its own account; neither sees the other's,
// and the aigov account's platform keeps working beside them.
func TestTenantsEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const a, b = "platform-a", "platform-b"
	st, err := stack.Start(ctx, stack.Options{Root: built.root, Dir: t.TempDir(), BinDir: built.bin, Tenants: []string{a, b}, LogLevel: "warn"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })

	training := schemas.Resource{Type: "Dataset", ID: "transactions-training"}
	req := schemas.Request{Action: "dataset.update", Resource: training, Context: map[string]any{"environment": "staging"}}
	clients := map[string]*client.Client{}
	for _, tenant := range []string{a, b} {
		nc, err := st.NATS.Connect(tenant)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		c, err := client.New(nc, client.Options{Source: tenant, Timeout: 30 * time.Second, Trust: st.Keys.Trust()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Close() })
		clients[tenant] = c
	}
	// Spy on b's inbox from b's own account: a's traffic must never show.
	bnc, _ := st.NATS.ConnectT(t, b)
	spy, err := bnc.SubscribeSync(schemas.TenantInboxPrefix(b) + ".>")
	if err != nil {
		t.Fatal(err)
	}
	if err := bnc.Flush(); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		tenant, persona, want string
	}{
		{a, "carol", schemas.Allow},
		{a, "alice", schemas.Deny},
	} {
		tok, err := st.IdP.Token(ctx, tc.persona)
		if err != nil {
			t.Fatal(err)
		}
		d, err := clients[tc.tenant].Authorize(ctx, client.Call{Token: tok, Request: req})
		if err != nil {
			t.Fatalf("%s as %s: %v", tc.tenant, tc.persona, err)
		}
		if d.Decision != tc.want || d.Stage != schemas.StagePolicy {
			t.Errorf("%s as %s: %s from %s (%s), want %s from policy", tc.tenant, tc.persona, d.Decision, d.Stage, d.Reason, tc.want)
		}
	}
	if m, err := spy.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("%s saw %s on %s", b, m.Data, m.Subject)
	}
	tok, err := st.IdP.Token(ctx, "carol")
	if err != nil {
		t.Fatal(err)
	}
	if d, err := clients[b].Authorize(ctx, client.Call{Token: tok, Request: req}); err != nil || !d.Allowed() {
		t.Fatalf("%s as carol: %+v, %v; want an allow", b, d, err)
	}
	// The aigov account's own platform (stack.Client) still gets decisions.
	if d, err := st.Client.Authorize(ctx, client.Call{Token: tok, Request: req}); err != nil || !d.Allowed() {
		t.Fatalf("aigov platform as carol: %+v, %v; want an allow", d, err)
	}
}
