package servicekit

import (
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

type readyFuture struct {
	ok  chan *jetstream.PubAck
	err chan error
}

func (f readyFuture) Ok() <-chan *jetstream.PubAck { return f.ok }
func (f readyFuture) Err() <-chan error            { return f.err }
func (f readyFuture) Msg() *nats.Msg               { return nats.NewMsg("x") }

func acked() readyFuture {
	f := readyFuture{ok: make(chan *jetstream.PubAck, 1), err: make(chan error, 1)}
	f.ok <- &jetstream.PubAck{Sequence: 1}
	return f
}

// A future that has settled wins over a batch deadline that has fired, and
// after the deadline each pending future still gets its millisecond.
func TestAwaitAckPrefersSettledFutures(t *testing.T) {
	deadline := time.NewTimer(time.Millisecond)
	time.Sleep(5 * time.Millisecond) // fired, not drained
	expired := false
	for range 100 {
		if ack, err, timedOut := awaitAck(acked(), deadline, &expired); ack == nil || err != nil || timedOut {
			t.Fatalf("settled future lost to the deadline: %v %v %v", ack, err, timedOut)
		}
	}
	pending := readyFuture{ok: make(chan *jetstream.PubAck), err: make(chan error)}
	if _, _, timedOut := awaitAck(pending, deadline, &expired); !timedOut || !expired {
		t.Fatal("pending future did not time out on the fired deadline")
	}
	start := time.Now()
	if _, _, timedOut := awaitAck(pending, deadline, &expired); !timedOut {
		t.Fatal("pending future after the deadline did not time out")
	} else if d := time.Since(start); d < time.Millisecond {
		t.Fatalf("after the deadline a future waited %s, want at least 1ms", d)
	}
	failed := failedFuture{m: nats.NewMsg("x"), err: errors.New("refused")}
	if _, err, timedOut := awaitAck(failed, deadline, &expired); err == nil || timedOut {
		t.Fatalf("failed future: %v %v", err, timedOut)
	}
}

// BenchmarkAwaitAck is settleBatch's wait for one stored event: one timer
// per batch (awaitAck) against the timer per event it replaced.
func BenchmarkAwaitAck(b *testing.B) {
	futs := make([]readyFuture, 256)
	b.Run("batch-timer", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			for i := range futs {
				futs[i] = acked()
			}
			b.StartTimer()
			deadline := time.NewTimer(10 * time.Second)
			expired := false
			for _, f := range futs {
				awaitAck(f, deadline, &expired)
			}
			deadline.Stop()
		}
	})
	b.Run("timer-per-event", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			for i := range futs {
				futs[i] = acked()
			}
			b.StartTimer()
			end := time.Now().Add(10 * time.Second)
			for _, f := range futs {
				wait := time.NewTimer(max(time.Until(end), time.Millisecond))
				select {
				case <-f.Ok():
				case <-f.Err():
				case <-wait.C:
				}
				wait.Stop()
			}
		}
	})
}
