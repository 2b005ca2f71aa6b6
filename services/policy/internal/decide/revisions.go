package decide

import (
	"context"
	"sync"
	"time"
)

// seenWait bounds how long a handler that wrote a key waits for its own
// replica's watch to apply it.
const seenWait = 2 * time.Second

// revisions is the newest bucket revision a watch has applied. A replica
// that writes a key (an approval, an activation) waits for it before it
// answers, so the caller's next request on this replica is decided with
// what it just wrote, not a view a few milliseconds older.
type revisions struct {
	mu   sync.Mutex
	rev  uint64
	next chan struct{} // closed and replaced whenever rev advances
}

func newRevisions() *revisions { return &revisions{next: make(chan struct{})} }

// advance records that the watch applied rev.
func (r *revisions) advance(rev uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rev <= r.rev {
		return
	}
	r.rev = rev
	close(r.next)
	r.next = make(chan struct{})
}

// wait returns true once rev has been applied, false when seenWait passes
// or ctx ends first.
func (r *revisions) wait(ctx context.Context, rev uint64) bool {
	timer := time.NewTimer(seenWait)
	defer timer.Stop()
	for {
		r.mu.Lock()
		done, next := r.rev >= rev, r.next
		r.mu.Unlock()
		if done {
			return true
		}
		select {
		case <-next:
		case <-timer.C:
			return false
		case <-ctx.Done():
			return false
		}
	}
}
