package servicekit_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
)

// bus is an embedded JetStream with one stream and one durable consumer.
type bus struct {
	js   jetstream.JetStream
	cons jetstream.Consumer
}

func newBus(t *testing.T, ackWait time.Duration) bus {
	t.Helper()
	srv := natsdev.StartT(t, natsdev.Options{Open: true})
	_, js := srv.ConnectT(t, "test")
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "T", Subjects: []string{"t.>"}}); err != nil {
		t.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, "T", jetstream.ConsumerConfig{Durable: "c", AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxDeliver: 5})
	if err != nil {
		t.Fatal(err)
	}
	return bus{js: js, cons: cons}
}

func (b bus) publish(t *testing.T, n int) {
	t.Helper()
	for i := range n {
		if _, err := b.js.Publish(context.Background(), fmt.Sprintf("t.%d", i), []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
}

// pending returns the consumer's unacknowledged and undelivered counts.
func (b bus) pending(t *testing.T) (ackPending int, undelivered uint64) {
	t.Helper()
	info, err := b.cons.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumAckPending, info.NumPending
}

func newRunner(workers int) *servicekit.Runner {
	r := servicekit.NewRunner("test", zerolog.Nop(), prometheus.NewRegistry(), workers)
	r.Backoff = func(uint64) time.Duration { return 10 * time.Millisecond }
	return r
}

func TestRunnerAcksNaksTermsAndRecoversPanics(t *testing.T) {
	t.Parallel()
	b := newBus(t, 5*time.Second)
	b.publish(t, 4)
	var (
		mu       sync.Mutex
		attempts = map[string]int{}
		done     = map[string]bool{}
	)
	h := func(_ context.Context, m jetstream.Msg) error {
		mu.Lock()
		defer mu.Unlock()
		attempts[m.Subject()]++
		switch m.Subject() {
		case "t.1": // transient: fails twice, then succeeds
			if attempts["t.1"] < 3 {
				return errors.New("transient")
			}
		case "t.2":
			return servicekit.Permanent(errors.New("bad payload"))
		case "t.3":
			if attempts["t.3"] == 1 {
				panic("boom")
			}
		}
		done[m.Subject()] = true
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- newRunner(2).Run(ctx, b.cons, h) }()
	natsdev.WaitFor(t, 10*time.Second, "all messages settled", func() bool {
		ack, undelivered := b.pending(t)
		mu.Lock()
		defer mu.Unlock()
		return ack == 0 && undelivered == 0 && done["t.0"] && done["t.1"] && done["t.3"] && attempts["t.2"] >= 1
	})
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if attempts["t.0"] != 1 || attempts["t.1"] != 3 || attempts["t.2"] != 1 || attempts["t.3"] != 2 {
		t.Fatalf("attempts %v: want t.0 once, t.1 three times (nak twice), t.2 once (terminated), t.3 twice (panic then ok)", attempts)
	}
	if done["t.2"] {
		t.Fatal("terminated message reported done")
	}
}

// On shutdown the runner finishes what it holds; an in-flight handler is
// not cut short and its message is acked.
func TestRunnerFinishesInFlightWorkOnShutdown(t *testing.T) {
	t.Parallel()
	b := newBus(t, 5*time.Second)
	b.publish(t, 1)
	started := make(chan struct{})
	var finished atomic.Bool
	h := func(ctx context.Context, _ jetstream.Msg) error {
		close(started)
		time.Sleep(300 * time.Millisecond)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		finished.Store(true)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- newRunner(1).Run(ctx, b.cons, h) }()
	<-started
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if !finished.Load() {
		t.Fatal("in-flight handler was cancelled by shutdown")
	}
	natsdev.WaitFor(t, 10*time.Second, "ack", func() bool { ack, undelivered := b.pending(t); return ack == 0 && undelivered == 0 })
}

func TestRunBatchesFlushesOnSizeAndTimeAndRetriesInPlace(t *testing.T) {
	t.Parallel()
	b := newBus(t, 2*time.Second)
	b.publish(t, 25)
	var (
		mu      sync.Mutex
		sizes   []int
		calls   int
		written int
	)
	h := func(_ context.Context, msgs []jetstream.Msg) error {
		mu.Lock()
		defer mu.Unlock()
		calls++
		if calls == 2 { // one failed flush: the same batch must come again
			return errors.New("sink down")
		}
		sizes = append(sizes, len(msgs))
		written += len(msgs)
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- newRunner(1).RunBatches(ctx, b.cons, servicekit.BatchOptions{MaxMessages: 10, MaxWait: 100 * time.Millisecond}, h)
	}()
	natsdev.WaitFor(t, 10*time.Second, "25 rows written", func() bool { mu.Lock(); defer mu.Unlock(); return written == 25 })
	natsdev.WaitFor(t, 10*time.Second, "all acked", func() bool { ack, undelivered := b.pending(t); return ack == 0 && undelivered == 0 })
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(sizes) != 3 || sizes[0] != 10 || sizes[1] != 10 || sizes[2] != 5 {
		t.Fatalf("batch sizes %v, want [10 10 5]: two full batches and one flushed by time", sizes)
	}
	if written != 25 {
		t.Fatalf("written %d, want 25 exactly: a retried batch must not be split or duplicated", written)
	}
}

// While the sink is down past AckWait, the batch is kept alive with
// InProgress: JetStream does not redeliver it behind the writer's back.
func TestRunBatchesHoldsMessagesWhileSinkIsDown(t *testing.T) {
	t.Parallel()
	b := newBus(t, 300*time.Millisecond)
	b.publish(t, 3)
	var down atomic.Bool
	down.Store(true)
	var seen sync.Map
	var dup atomic.Int32
	h := func(_ context.Context, msgs []jetstream.Msg) error {
		if down.Load() {
			return errors.New("sink down")
		}
		for _, m := range msgs {
			if _, loaded := seen.LoadOrStore(m.Subject(), true); loaded {
				dup.Add(1)
			}
		}
		return nil
	}
	r := newRunner(1)
	r.Backoff = func(uint64) time.Duration { return 100 * time.Millisecond }
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- r.RunBatches(ctx, b.cons, servicekit.BatchOptions{MaxMessages: 100, MaxWait: 50 * time.Millisecond}, h)
	}()
	time.Sleep(1200 * time.Millisecond) // four AckWaits
	if ack, _ := b.pending(t); ack != 3 {
		t.Fatalf("ack pending %d while the sink is down, want 3", ack)
	}
	down.Store(false)
	natsdev.WaitFor(t, 10*time.Second, "all acked", func() bool { ack, undelivered := b.pending(t); return ack == 0 && undelivered == 0 })
	cancel()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	if dup.Load() != 0 {
		t.Fatalf("%d messages were redelivered while held", dup.Load())
	}
}

func TestExponentialBackoff(t *testing.T) {
	t.Parallel()
	f := servicekit.ExponentialBackoff(100*time.Millisecond, time.Second)
	for delivered, want := range map[uint64]time.Duration{0: 100 * time.Millisecond, 1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 4: 800 * time.Millisecond, 5: time.Second, 1000: time.Second} {
		if got := f(delivered); got != want {
			t.Errorf("backoff(%d) = %v, want %v", delivered, got, want)
		}
	}
}

// On a backlog, BacklogWait lets batches fill instead of being cut by
// MaxWait; without it the same backlog is cut into many small batches.
func TestRunBatchesFillOnABacklog(t *testing.T) {
	t.Parallel()
	const n, max = 20000, 5000
	run := func(backlogWait time.Duration, maxAckPending int) ([]int, time.Duration) {
		b := newBus(t, 30*time.Second)
		cons, err := b.js.CreateOrUpdateConsumer(context.Background(), "T", jetstream.ConsumerConfig{Durable: "c",
			AckPolicy: jetstream.AckExplicitPolicy, AckWait: 30 * time.Second, MaxDeliver: 5, MaxAckPending: maxAckPending})
		if err != nil {
			t.Fatal(err)
		}
		b.cons = cons
		b.publish(t, n)
		var (
			mu      sync.Mutex
			sizes   []int
			written int
		)
		h := func(_ context.Context, msgs []jetstream.Msg) error {
			mu.Lock()
			defer mu.Unlock()
			sizes = append(sizes, len(msgs))
			written += len(msgs)
			return nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		start := time.Now() // the runner's part only: setup and publishing are not timed
		go func() {
			errc <- newRunner(1).RunBatches(ctx, b.cons, servicekit.BatchOptions{MaxMessages: max, MaxWait: time.Millisecond, BacklogWait: backlogWait}, h)
		}()
		natsdev.WaitFor(t, 10*time.Second, "every message written", func() bool { mu.Lock(); defer mu.Unlock(); return written == n })
		took := time.Since(start)
		cancel()
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return sizes, took
	}
	filled, _ := run(10*time.Second, 2*max)
	if len(filled) < 3 || filled[0] != max || filled[1] != max || filled[2] != max {
		t.Errorf("batch sizes with BacklogWait %v: the first three should be full (%d)", filled, max)
	}
	if cut, _ := run(0, 2*max); len(cut) <= len(filled) {
		t.Errorf("without BacklogWait the backlog made %d batches, with it %d: the 1ms MaxWait should cut it finer", len(cut), len(filled))
	}
	// MaxAckPending below the batch size: batches can never fill, so the
	// runner must not wait for them (waitFor gives up after 10s).
	if _, took := run(10*time.Second, max/5); took > 5*time.Second {
		t.Errorf("with MaxAckPending below the batch the backlog took %s: batches waited for a fill that cannot come", took)
	}
}
