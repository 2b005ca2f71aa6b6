package e2e

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// A retried request id gets its existing decision (issue 18 a): a request
// is decided allow but its reply is lost (sent to an inbox nobody reads
// any more, as when the platform's connection dropped), and the caller's
// retry with the same request id, inside the request stream's duplicate
// window, gets that same decision, signed by policy, and the audit holds
// one row for the id. The same id sent with another token is denied
// request_id_reused under the retry's own id, also when authn would deny
// that token, and the first decision stays the id's only row.
func TestRetriedRequestGetsItsDecision(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{Root: built.root, Dir: t.TempDir(), BinDir: built.bin})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if t.Failed() {
			if b, err := os.ReadFile(st.LogPath("authn")); err == nil {
				t.Logf("authn's log:\n%s", b[max(0, len(b)-4000):])
			}
		}
		if !stopped {
			st.Stop()
		}
	})
	topo := topology.New("")
	token, err := st.IdP.Token(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	id := "e2e-retry-" + schemas.NewID()
	call := client.Call{ID: id, Token: token, Request: retrain}
	lost := schemas.InboxPrefix(schemas.RolePlatform) + ".gone." + schemas.NewID()
	m, err := client.NewRequestMessage(topo.Subjects, "e2e", call, lost)
	if err != nil {
		t.Fatal(err)
	}
	pjs, err := jetstream.New(st.Platform)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pjs.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	if err := demo.WaitAudited(ctx, st.DB, []string{id}, 60*time.Second); err != nil {
		t.Fatal(err)
	}

	rctx, rcancel := context.WithTimeout(ctx, 15*time.Second)
	defer rcancel()
	d, err := st.Client.Authorize(rctx, call)
	if err != nil {
		t.Fatalf("retry of a decided request: %v", err)
	}
	if !d.Allowed() || d.RequestID != id || d.Stage != schemas.StagePolicy {
		t.Fatalf("retry: %s/%s from %s for %q, want policy's allow of %q", d.Decision, d.Code, d.Stage, d.RequestID, id)
	}

	other, err := st.IdP.Token(ctx, "carol")
	if err != nil {
		t.Fatal(err)
	}
	octx, ocancel := context.WithTimeout(ctx, 15*time.Second)
	defer ocancel()
	reused, err := st.Client.Authorize(octx, client.Call{ID: id, Token: other, Request: retrain})
	if err != nil {
		t.Fatalf("the same id from another token: %v", err)
	}
	if reused.Allowed() || reused.Code != schemas.CodeRequestIDReused || reused.RequestID == id {
		t.Fatalf("the same id from another token: %s/%s for %q, want a deny request_id_reused under the retry's own id",
			reused.Decision, reused.Code, reused.RequestID)
	}

	// A token authn denies (here not even a JWT) does not decide the id
	// again either: what it would deny under the request id would replace
	// the recorded allow.
	jctx, jcancel := context.WithTimeout(ctx, 15*time.Second)
	defer jcancel()
	junk, err := st.Client.Authorize(jctx, client.Call{ID: id, Token: "not-a-jwt", Request: retrain})
	if err != nil {
		t.Fatalf("the same id with a bad token: %v", err)
	}
	if junk.Allowed() || junk.Code != schemas.CodeRequestIDReused || junk.RequestID == id {
		t.Fatalf("the same id with a bad token: %s/%s for %q, want a deny request_id_reused under the retry's own id",
			junk.Decision, junk.Code, junk.RequestID)
	}

	// The reuse denies come after the retry on the decision stream: once
	// they are audited, anything the retry stored would be too.
	if err := demo.WaitAudited(ctx, st.DB, []string{reused.RequestID, junk.RequestID}, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	// Without FINAL, which would fold a second decision of the id into
	// the first: distinct events, not merged rows, are counted.
	var events, denies uint64
	if err := st.DB.QueryRow(ctx, `SELECT uniqExact(event_id), countIf(decision != 'allow') FROM aigov.decisions WHERE request_id = ?`, id).Scan(&events, &denies); err != nil {
		t.Fatal(err)
	}
	if events != 1 || denies != 0 {
		t.Fatalf("%d decisions (%d rows not allow) audited for request %s, want the one allow", events, denies, id)
	}
	stopped = true
	if errs := st.Stop(); len(errs) > 0 {
		t.Fatalf("unclean shutdown: %v", errs)
	}
}
