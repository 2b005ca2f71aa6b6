package verify_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// TestRevokeThenRequestIsDenied: a revocation (or a lease tombstone)
// written to the bucket just before a request of that session is
// published denies it, with no wait in between, although authn answers
// from its in-memory set, and although the session's token is in the
// verification cache. Repeated, to give the watcher's lag every chance.
func TestRevokeThenRequestIsDenied(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	ctx := context.Background()
	kv, err := e.adminJS.KeyValue(ctx, e.topo.BucketRevocations())
	if err != nil {
		t.Fatal(err)
	}
	send := func(id, tok string, reqCtx map[string]any) schemas.Event {
		t.Helper()
		req := testRequest
		req.Context = reqCtx
		m, err := client.NewRequestMessage(schemas.NewSubjects(""), "test-platform", client.Call{ID: id, Token: tok, Request: req}, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.platJS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		return e.out.await(t, id).event
	}
	codeOf := func(ev schemas.Event) schemas.Code {
		var d schemas.Decision
		if ev.Type != schemas.TypeDecision || ev.DecodeData(&d) != nil {
			return ""
		}
		return d.Code
	}
	const rounds = 25
	for i := range rounds {
		sid := "sid-revoke-" + schemas.NewID()
		tok := e.token(t, e.good, "carol", idp.WithSessionID(sid))
		if ev := send(schemas.NewID(), tok, nil); ev.Type != schemas.TypeVerified {
			t.Fatalf("round %d: before the revocation: %s", i, ev.Type)
		}
		key := schemas.SessionKey(schemas.Principal{Issuer: e.good.Issuer(), SessionID: sid, Subject: "carol"})
		rev, _ := json.Marshal(schemas.Revocation{SessionKey: key, Code: schemas.CodeSessionRevoked, Reason: "revoked by test", At: time.Now()})
		if _, err := kv.Put(ctx, key, rev); err != nil {
			t.Fatal(err)
		}
		if c := codeOf(send(schemas.NewID(), tok, nil)); c != schemas.CodeSessionRevoked {
			t.Fatalf("round %d: a request published right after its session's revocation got %q", i, c)
		}
		// A lease ended just before a request naming it.
		lease := "lease-" + schemas.NewID()
		other := e.token(t, e.good, "carol", idp.WithSessionID(sid+"-job"))
		if ev := send(schemas.NewID(), other, map[string]any{schemas.ContextLeaseID: lease}); ev.Type != schemas.TypeVerified {
			t.Fatalf("round %d: before the lease ended: %s", i, ev.Type)
		}
		tomb, _ := json.Marshal(schemas.Revocation{SessionKey: schemas.LeaseRevocationKey(lease), Code: schemas.CodeLeaseExpired, Reason: "lease ended by test", At: time.Now()})
		if _, err := kv.Put(ctx, schemas.LeaseRevocationKey(lease), tomb); err != nil {
			t.Fatal(err)
		}
		if c := codeOf(send(schemas.NewID(), other, map[string]any{schemas.ContextLeaseID: lease})); c != schemas.CodeLeaseExpired {
			t.Fatalf("round %d: a request naming a lease ended just before got %q", i, c)
		}
		// A revocation removed (an operator's undo) lets the session in again.
		if err := kv.Delete(ctx, key); err != nil {
			t.Fatal(err)
		}
		if ev := send(schemas.NewID(), tok, nil); ev.Type != schemas.TypeVerified {
			t.Fatalf("round %d: after the revocation was deleted: %s", i, ev.Type)
		}
	}
	// The set answered, not the bucket.
	e.assertMetric(t, "aigov_authn_revocation_lookups_total", "via", "set", 5*rounds)
	e.assertCounter(t, string(schemas.CodeSessionRevoked), rounds)
	e.assertCounter(t, string(schemas.CodeLeaseExpired), rounds)
}

// TestNotReadyUntilRevocationsLoad: a verifier that has not loaded its
// revocation set is not ready.
func TestNotReadyUntilRevocationsLoad(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	nc, js := srv.ConnectT(t, schemas.RoleAuthn)
	topo := topology.New("")
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	v, err := verify.NewVerifier(verify.Config{Workers: 1, HTTPTimeout: time.Second, Issuers: []verify.Issuer{{URL: "https://idp.example", Audiences: []string{"aigov"}}}},
		servicekit.Deps{Log: zerolog.Nop(), NC: nc, JS: js, Topology: topo, HTTP: servicekit.NewUnboundServer(), Signer: devkeys.New(t).Signer(schemas.RoleAuthn)})
	if err != nil {
		t.Fatal(err)
	}
	if v.Ready(context.Background()) == nil {
		t.Fatal("ready before the revocation set was loaded")
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- v.Run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for v.Ready(ctx) != nil {
		if time.Now().After(deadline) {
			t.Fatal("not ready 10s after Run")
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
