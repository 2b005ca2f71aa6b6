package revocation

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestRevocationSetLoadsALargeBucket: an initial load and a burst of
// updates far beyond the watcher's flow-control window arrive whole (the
// authn user may answer JetStream flow control).
func TestRevocationSetLoadsALargeBucket(t *testing.T) {
	t.Parallel()
	const n = 20000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "pre-" + strconv.Itoa(i)
	}
	e := startRevocationsB(t, 100000, keys...)
	if got := e.set.Len(); got != n {
		t.Fatalf("loaded %d of %d keys", got, n)
	}
	reason := strings.Repeat("r", 250)
	ctx := context.Background()
	for i := range n {
		if _, err := e.kv.Put(ctx, "new-"+strconv.Itoa(i), []byte(`{"code":"session_revoked","reason":"`+reason+`"}`)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(20 * time.Second)
	for e.set.Len() != 2*n {
		if time.Now().After(deadline) {
			t.Fatalf("set holds %d of %d keys 20s after the burst", e.set.Len(), 2*n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if got := e.revoked(t, "new-"+strconv.Itoa(n-1)); got != reason {
		t.Fatalf("last key: %q", got)
	}
}
