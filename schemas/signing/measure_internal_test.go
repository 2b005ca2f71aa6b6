package signing

import (
	"sync/atomic"
	"testing"
	"time"
)

// An empty measurement counts (close to) nothing, and a real one about
// what it costs: the clock's own cost is taken off, no more.
func TestMeasureTakesOffOnlyTheClock(t *testing.T) {
	var empty atomic.Int64
	for range 1000 {
		measure(&empty, func() {})
	}
	if per := time.Duration(empty.Load() / 1000); per > time.Microsecond {
		t.Errorf("an empty measurement counts %s", per)
	}
	var busy atomic.Int64
	start := time.Now()
	measure(&busy, func() {
		for time.Since(start) < 20*time.Millisecond {
		}
	})
	if got := time.Duration(busy.Load()); got < 10*time.Millisecond {
		t.Errorf("20ms of spinning measured as %s", got)
	}
	t.Logf("clock overhead taken off: %s", clockOverhead())
}
