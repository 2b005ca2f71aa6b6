package decide

import (
	"context"
	"testing"
	"time"
)

func TestRevisionsWait(t *testing.T) {
	r := newRevisions()
	r.advance(3)
	if !r.wait(context.Background(), 2) || !r.wait(context.Background(), 3) {
		t.Fatal("an applied revision is waited for")
	}
	go func() {
		time.Sleep(50 * time.Millisecond)
		r.advance(4)
		r.advance(5)
	}()
	start := time.Now()
	if !r.wait(context.Background(), 5) {
		t.Fatal("revision 5 was applied")
	}
	if time.Since(start) > seenWait/2 {
		t.Fatalf("waited %s for a revision applied after 50ms", time.Since(start))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if r.wait(ctx, 6) {
		t.Fatal("revision 6 was never applied")
	}
}
