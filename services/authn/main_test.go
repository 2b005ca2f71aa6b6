package main

import (
	"context"
	"testing"
	"time"

	"github.com/aigov/aigov/services/servicekit/topology"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
)

// TestRun wires the binary as main does, from environment variables, and
// checks that a platform using the SDK gets authn's deny as its reply, and
// that run returns cleanly on shutdown.
func TestRun(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	p, err := idp.Start(context.Background(), idp.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })

	keys := devkeys.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, servicekit.MapLookup(map[string]string{
			"AIGOV_NATS_URL":      srv.URL(),
			"AIGOV_NATS_TLS_CA":   srv.CAFile(),
			"AIGOV_NATS_PASSWORD": srv.Password(schemas.RoleAuthn),
			"AIGOV_HTTP_ADDR":     "127.0.0.1:0",
			"AIGOV_OIDC_ISSUERS":  p.Issuer(),
			"AIGOV_LOG_LEVEL":     "warn",
			"AIGOV_SIGNING_KEY":   keys.KeyFile(schemas.RoleAuthn),
		}))
	}()

	nc, _ := srv.ConnectT(t, schemas.RolePlatform)
	c, err := client.New(nc, client.Options{Timeout: 15 * time.Second, Trust: keys.Trust()})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tok, err := p.Token(ctx, "oscar", idp.WithIssuedAt(time.Now().Add(-time.Hour)), idp.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	// Publish once authn's consumer exists, i.e. run has started serving.
	_, ajs := srv.ConnectT(t, natsdev.AdminUser)
	topo := topology.New("")
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := ajs.Consumer(ctx, topo.StreamRequests(), schemas.ConsumerAuthn); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("authn consumer not created within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	d, err := c.Authorize(ctx, client.Call{Token: tok, Request: schemas.Request{
		Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "m1"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if d.Allowed() || d.Code != schemas.CodeTokenExpired || d.Stage != schemas.StageAuthn {
		t.Fatalf("decision %s %s from %s, want an authn token_expired deny", d.Decision, d.Code, d.Stage)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return after cancel")
	}
}
