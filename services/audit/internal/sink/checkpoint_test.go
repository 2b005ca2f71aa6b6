package sink

import (
	"context"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/audit/chain"
)

// TestQuietStreamIsSignedWithinTheInterval (issue 18 b): a stream with
// one event and then no traffic (sessions) is checkpointed up to that
// event within the checkpoint interval, while another stream
// (decisions) takes a steady flow; before, a lane signed only when a
// batch arrived, so the quiet stream stayed "signed up to seq 0" until
// its next event, minutes later.
func TestQuietStreamIsSignedWithinTheInterval(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{batchSize: 50}) // checkpoint interval 100ms
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	store, err := chain.OpenStore(ctx, h.admin, h.topo, false)
	if err != nil {
		t.Fatal(err)
	}
	s, id, typ := sessionEventN(1, schemas.SessionStarted)
	h.publish(h.subjects.Session(schemas.SessionStarted), encode(t, id, typ, decidedAt, s), id)
	h.waitAcked(h.topo.AuditConsumer(h.topo.StreamSessions()), 10*time.Second)
	acked := time.Now()

	// Decisions keep coming while the sessions stream stays quiet.
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ctx.Err() == nil && time.Since(acked) < 2*time.Second; i++ {
			h.publishDecision(decisionN(i))
			time.Sleep(2 * time.Millisecond)
		}
	}()
	defer func() { cancel(); <-done }()

	for {
		c, ok, err := store.Latest(ctx, h.topo.StreamSessions())
		if err != nil {
			t.Fatal(err)
		}
		if ok && c.Head.Seq >= 1 {
			break
		}
		// The interval (100ms) plus a flush: one second is generous.
		if time.Since(acked) > time.Second {
			t.Fatalf("the sessions stream is signed up to seq %d %s after its one event was written, want seq 1 within the 100ms interval",
				c.Head.Seq, time.Since(acked).Round(time.Millisecond))
		}
		time.Sleep(20 * time.Millisecond)
	}
}
