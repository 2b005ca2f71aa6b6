package decider_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/gateway/internal/decider"
)

// counting decides every call allow after release is closed, counting
// the calls that reach it.
type counting struct {
	calls   atomic.Int64
	release chan struct{}
	fail    error
}

func (c *counting) Authorize(ctx context.Context, call client.Call) (schemas.Decision, error) {
	c.calls.Add(1)
	if c.release != nil {
		select {
		case <-c.release:
		case <-ctx.Done():
			return schemas.Decision{}, client.ErrTimeout
		}
	}
	if c.fail != nil {
		return schemas.Decision{}, c.fail
	}
	return schemas.Decision{RequestID: call.ID, Action: call.Request.Action, Decision: schemas.Allow}, nil
}

func call(id, action string) client.Call {
	return client.Call{ID: id, Token: "tok", Request: schemas.Request{Action: action, Resource: schemas.Resource{Type: "Model", ID: "m"},
		Context: map[string]any{"environment": "staging"}}}
}

func TestRetryIsTheSameRequest(t *testing.T) {
	t.Parallel()
	a := &counting{}
	d, err := decider.New(a, decider.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 3 {
		got, err := d.Authorize(ctx, call("r1", "model.retrain"))
		if err != nil || got.RequestID != "r1" || !got.Allowed() {
			t.Fatalf("Authorize = %+v, %v", got, err)
		}
	}
	if n := a.calls.Load(); n != 1 {
		t.Errorf("%d calls reached the bus, want 1", n)
	}
	if _, err := d.Authorize(ctx, call("r1", "model.deploy")); !errors.Is(err, decider.ErrIDConflict) {
		t.Errorf("reused id: %v, want ErrIDConflict", err)
	}
	other := call("r1", "model.retrain")
	other.Token = "someone-else"
	if _, err := d.Authorize(ctx, other); !errors.Is(err, decider.ErrIDConflict) {
		t.Errorf("reused id with another token: %v, want ErrIDConflict", err)
	}
	got, err := d.Authorize(ctx, call("", "model.retrain"))
	if err != nil || got.RequestID == "" {
		t.Errorf("empty id: %+v, %v; want a new id", got, err)
	}
}

func TestConcurrentRetriesJoinOneFlight(t *testing.T) {
	t.Parallel()
	a := &counting{release: make(chan struct{})}
	d, _ := decider.New(a, decider.Options{})
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range errs {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, errs[i] = d.Authorize(ctx, call("r2", "model.retrain"))
		})
	}
	time.Sleep(100 * time.Millisecond)
	close(a.release)
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := a.calls.Load(); n != 1 {
		t.Errorf("%d calls reached the bus, want 1", n)
	}
}

func TestFailuresAreNotRemembered(t *testing.T) {
	t.Parallel()
	a := &counting{fail: client.ErrTimeout}
	d, _ := decider.New(a, decider.Options{})
	for range 2 {
		if _, err := d.Authorize(context.Background(), call("r3", "model.retrain")); !errors.Is(err, client.ErrTimeout) {
			t.Fatalf("err %v, want ErrTimeout", err)
		}
	}
	if n := a.calls.Load(); n != 2 {
		t.Errorf("%d calls, want 2: a timed-out request is retried, not answered from memory", n)
	}
}

func TestMemoryIsBounded(t *testing.T) {
	t.Parallel()
	now := time.Unix(1000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	a := &counting{}
	d, _ := decider.New(a, decider.Options{MaxRemembered: 3, Remember: time.Minute, Now: clock})
	for _, id := range []string{"a", "b", "c", "d"} {
		if _, err := d.Authorize(context.Background(), call(id, "model.retrain")); err != nil {
			t.Fatal(err)
		}
	}
	if n := d.Remembered(); n != 3 {
		t.Errorf("remembered %d, want the bound 3", n)
	}
	mu.Lock()
	now = now.Add(2 * time.Minute)
	mu.Unlock()
	if _, err := d.Authorize(context.Background(), call("e", "model.retrain")); err != nil {
		t.Fatal(err)
	}
	if n := d.Remembered(); n != 1 {
		t.Errorf("remembered %d after expiry, want 1", n)
	}
	if _, err := decider.New(nil, decider.Options{}); err == nil {
		t.Error("New(nil) succeeded")
	}
}

func TestLateDecisionAnswersTheRetry(t *testing.T) {
	t.Parallel()
	a := &counting{}
	d, _ := decider.New(a, decider.Options{})
	c := call("r4", "model.retrain")
	d.Late(schemas.Decision{RequestID: "r4", Action: c.Request.Action, Resource: c.Request.Resource,
		TokenFingerprint: schemas.Fingerprint(c.Token), Decision: schemas.Deny, Code: schemas.CodePolicyDenied})
	got, err := d.Authorize(context.Background(), c)
	if err != nil || got.Code != schemas.CodePolicyDenied {
		t.Fatalf("retry after a late decision: %+v %v, want the late deny", got, err)
	}
	if n := a.calls.Load(); n != 0 {
		t.Errorf("%d calls reached the bus; the late decision answers the retry", n)
	}
	other := c
	other.Token = "another-token"
	if _, err := d.Authorize(context.Background(), other); !errors.Is(err, decider.ErrIDConflict) {
		t.Errorf("another token's retry of a late decision: %v, want ErrIDConflict", err)
	}
}

// BenchmarkAuthorizeSteadyExpiry is the steady state of a gateway under a
// constant rate: the window holds MaxRemembered decisions and every call
// expires the oldest, which must cost O(1), not a copy of the window.
func BenchmarkAuthorizeSteadyExpiry(b *testing.B) {
	var now atomic.Int64
	t0 := time.Now()
	d, err := decider.New(&counting{}, decider.Options{Remember: 10 * time.Second, MaxRemembered: 20000,
		Now: func() time.Time { return t0.Add(time.Duration(now.Load()) * time.Millisecond) }})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	// Fill the window: 10,000 decisions one ms apart.
	for i := range 10000 {
		now.Store(int64(i))
		if _, err := d.Authorize(ctx, call("warm-"+strconv.Itoa(i), "model.retrain")); err != nil {
			b.Fatal(err)
		}
	}
	i := 10000
	b.ReportAllocs()
	for b.Loop() {
		now.Store(int64(i))
		if _, err := d.Authorize(ctx, call("id-"+strconv.Itoa(i), "model.retrain")); err != nil {
			b.Fatal(err)
		}
		i++
	}
	if n := d.Remembered(); n < 9000 || n > 10001 {
		b.Fatalf("%d remembered, want the 10 s window of about 10,000", n)
	}
}
