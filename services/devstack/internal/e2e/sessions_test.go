package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Sessions end, people do not (issue 17), and max age holds without the
// reaper (issue 18), against the whole stack as processes.
//
// With the dev IdP issuing tokens as Dex and Google do (no sid, no
// auth_time), alice works, her session reaches its max age and the reaper
// ends it: that token stays denied session_expired, but her next login is
// a new session and is allowed. Then the reaper is killed (SIGKILL), and a
// token whose session is past its max age by its auth_time is denied
// session_expired by authn with no revocation written, and the deny is in
// ClickHouse.
func TestSessionEndsNotThePersonEndToEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const maxAge = 4 * time.Second
	st, err := stack.Start(ctx, stack.Options{
		Root: built.root, Dir: t.TempDir(), BinDir: built.bin,
		SessionMaxAge: maxAge, ReaperInterval: 200 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			st.Stop()
		}
	})
	revocations, err := st.AdminJS.KeyValue(ctx, topology.New("").BucketRevocations())
	if err != nil {
		t.Fatal(err)
	}
	revocation := func(key string) (schemas.Revocation, bool) {
		t.Helper()
		e, err := revocations.Get(ctx, key)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return schemas.Revocation{}, false
		}
		if err != nil {
			t.Fatal(err)
		}
		var r schemas.Revocation
		if err := json.Unmarshal(e.Value(), &r); err != nil {
			t.Fatal(err)
		}
		return r, true
	}
	login := func(opts ...idp.TokenOption) (string, string) {
		t.Helper()
		tok, err := st.IdP.Token(ctx, "alice", opts...)
		if err != nil {
			t.Fatal(err)
		}
		key, err := demo.SessionKeyOf(tok)
		if err != nil {
			t.Fatal(err)
		}
		return tok, key
	}
	var ids []string

	// A Dex-like token: its session is the token's own.
	first, firstKey := login(idp.WithoutSessionClaims())
	d := authorize(ctx, t, st, first, retrain)
	ids = append(ids, d.RequestID)
	if !d.Allowed() || d.SessionKey != firstKey {
		t.Fatalf("alice's first login: %s/%s in session %s, want allow in %s", d.Decision, d.Code, d.SessionKey, firstKey)
	}
	// The reaper ends it at its max age.
	natsdev.WaitFor(t, 30*time.Second, "the reaper ends alice's first session", func() bool {
		r, ok := revocation(firstKey)
		return ok && r.Code == schemas.CodeSessionExpired && r.By == schemas.ByReaper
	})
	d = authorize(ctx, t, st, first, retrain)
	ids = append(ids, d.RequestID)
	if d.Decision != schemas.Deny || d.Code != schemas.CodeSessionExpired {
		t.Fatalf("alice's first token after its session ended: %s/%s, want deny session_expired", d.Decision, d.Code)
	}
	// Her next login is a new session, not locked out by the old one.
	second, secondKey := login(idp.WithoutSessionClaims())
	if secondKey == firstKey {
		t.Fatalf("a new login has the ended session's key %s", firstKey)
	}
	d = authorize(ctx, t, st, second, retrain)
	ids = append(ids, d.RequestID)
	if !d.Allowed() || d.SessionKey != secondKey {
		t.Fatalf("alice's new login after the max age: %s/%s (%s) in session %s, want allow in %s", d.Decision, d.Code, d.Reason, d.SessionKey, secondKey)
	}
	d = authorize(ctx, t, st, first, retrain)
	ids = append(ids, d.RequestID)
	if d.Code != schemas.CodeSessionExpired {
		t.Fatalf("the ended session's token after a new login: %s/%s, want deny session_expired", d.Decision, d.Code)
	}

	// The reaper dies; max age still holds.
	if err := st.KillService("reaper"); err != nil {
		t.Fatal(err)
	}
	old, oldKey := login(idp.WithSessionID("sid-outage"), idp.WithIssuedAt(time.Now().Add(-2*maxAge)), idp.WithTTL(time.Hour))
	d = authorize(ctx, t, st, old, retrain)
	ids = append(ids, d.RequestID)
	if d.Decision != schemas.Deny || d.Code != schemas.CodeSessionExpired || d.Stage != schemas.StageAuthn {
		t.Fatalf("a session past its max age with the reaper down: %s/%s at %s (%s), want deny session_expired at authn", d.Decision, d.Code, d.Stage, d.Reason)
	}
	if _, ok := revocation(oldKey); ok {
		t.Fatal("a revocation exists for the outage session: the test would not show that authn denies it on its own")
	}
	if err := demo.WaitAudited(ctx, st.DB, ids, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	var code, stage string
	if err := st.DB.QueryRow(ctx, `SELECT code, stage FROM aigov.decisions FINAL WHERE request_id = ?`, d.RequestID).Scan(&code, &stage); err != nil ||
		code != string(schemas.CodeSessionExpired) || stage != schemas.StageAuthn {
		t.Errorf("audited decision of the outage request: code %q stage %q (%v), want session_expired at authn", code, stage, err)
	}
	if err := st.StartService(ctx, "reaper"); err != nil {
		t.Fatal(err)
	}
	stopped = true
	if errs := st.Stop(); len(errs) > 0 {
		t.Fatalf("unclean shutdown: %v", errs)
	}
}
