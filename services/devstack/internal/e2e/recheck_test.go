package e2e

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// The decision-time recheck end to end (issue 11 part 4), with the real
// services: the policy process is stopped, 200 requests of one session
// pass the real authn and wait in AIGOV_VERIFIED, the session is revoked
// with the kill switch as the reaper's user, policy is started again, and
// ClickHouse holds 200 denies session_revoked decided by policy and no
// allow. Then the same with a token that expires while its 200 requests
// wait: 200 denies token_expired.
func TestQueuedRequestsAreRecheckedEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{Root: built.root, Dir: t.TempDir(), BinDir: built.bin})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			st.Stop()
		}
	})
	const n = 200

	token, err := st.IdP.Token(ctx, "alice", idp.WithSessionID("e2e-recheck-"+schemas.NewID()))
	if err != nil {
		t.Fatal(err)
	}
	key, err := demo.SessionKeyOf(token)
	if err != nil {
		t.Fatal(err)
	}
	if d := authorize(ctx, t, st, token, retrain); !d.Allowed() {
		t.Fatalf("alice before the revocation: %s/%s, want allow", d.Decision, d.Code)
	}
	ids := queueVerified(ctx, t, st, token, "revoked", n)
	_, rjs := st.NATS.ConnectT(t, schemas.RoleReaper)
	sw, err := killswitch.New(ctx, rjs, topology.New(""), nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if res, err := sw.Revoke(ctx, killswitch.Selector{SessionKey: key}, "e2e-operator", "e2e: revoked while queued"); err != nil || len(res.Revoked) != 1 {
		t.Fatalf("revoke: %+v (%v)", res, err)
	}
	if err := st.StartService(ctx, "policy"); err != nil {
		t.Fatal(err)
	}
	assertAudited(ctx, t, st, ids, schemas.CodeSessionRevoked)

	// A short-lived token: its requests pass authn, then it expires while
	// they wait for policy.
	const ttl = 5 * time.Second
	short, err := st.IdP.Token(ctx, "alice", idp.WithSessionID("e2e-short-"+schemas.NewID()), idp.WithTTL(ttl))
	if err != nil {
		t.Fatal(err)
	}
	issued := time.Now()
	ids = queueVerified(ctx, t, st, short, "expired", n)
	if time.Since(issued) >= ttl-time.Second {
		t.Fatal("the token (nearly) expired before its requests were queued; the test proves nothing")
	}
	time.Sleep(time.Until(issued.Add(ttl + 1500*time.Millisecond))) // exp is whole seconds
	if err := st.StartService(ctx, "policy"); err != nil {
		t.Fatal(err)
	}
	assertAudited(ctx, t, st, ids, schemas.CodeTokenExpired)

	stopped = true
	if errs := st.Stop(); len(errs) > 0 {
		t.Fatalf("unclean shutdown: %v", errs)
	}
}

// queueVerified stops policy, publishes n requests with token as the
// platform and waits until authn has passed all of them into
// AIGOV_VERIFIED, where they wait. It returns their request ids.
func queueVerified(ctx context.Context, t *testing.T, st *stack.Stack, token, tag string, n int) []string {
	t.Helper()
	if err := st.StopService("policy"); err != nil {
		t.Fatalf("stop policy: %v", err)
	}
	topo := topology.New("")
	verified, err := st.AdminJS.Stream(ctx, topo.StreamVerified())
	if err != nil {
		t.Fatal(err)
	}
	before, err := verified.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pjs, err := jetstream.New(st.Platform)
	if err != nil {
		t.Fatal(err)
	}
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "e2e-queued-" + tag + "-" + strconv.Itoa(i) + "-" + schemas.NewID()
		m, err := client.NewRequestMessage(topo.Subjects, "e2e", client.Call{ID: ids[i], Token: token, Request: retrain}, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pjs.PublishMsg(ctx, m); err != nil {
			t.Fatalf("publish request %d: %v", i, err)
		}
	}
	natsdev.WaitFor(t, 30*time.Second, strconv.Itoa(n)+" requests verified and queued", func() bool {
		info, err := verified.Info(ctx)
		return err == nil && info.State.Msgs >= before.State.Msgs+uint64(n)
	})
	return ids
}

// assertAudited waits until ClickHouse holds a decision for every id and
// checks that each is a policy-stage deny with code: none was allowed.
func assertAudited(ctx context.Context, t *testing.T, st *stack.Stack, ids []string, code schemas.Code) {
	t.Helper()
	if err := demo.WaitAudited(ctx, st.DB, ids, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	rows, err := st.DB.Query(ctx, `SELECT decision, code, stage, count() FROM aigov.decisions FINAL WHERE has(?, request_id) GROUP BY decision, code, stage`, ids)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	got := map[string]uint64{}
	for rows.Next() {
		var decision, c, stage string
		var count uint64
		if err := rows.Scan(&decision, &c, &stage, &count); err != nil {
			t.Fatal(err)
		}
		got[decision+"/"+c+"/"+stage] = count
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := schemas.Deny + "/" + string(code) + "/" + schemas.StagePolicy
	if len(got) != 1 || got[want] != uint64(len(ids)) {
		t.Fatalf("decisions in ClickHouse of the %d queued requests: %v; want all %s", len(ids), got, want)
	}
}
