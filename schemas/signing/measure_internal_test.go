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
	// Spin until this thread has run 20ms of CPU (bounded by wall time):
	// a wall-clock spin gets less CPU than that on a loaded machine.
	var busy atomic.Int64
	start := time.Now()
	measure(&busy, func() {
		for c := threadCPU(); threadCPU()-c < 20*time.Millisecond && time.Since(start) < 10*time.Second; {
		}
	})
	if got := time.Duration(busy.Load()); got < 19*time.Millisecond {
		t.Errorf("20ms of spinning on the CPU measured as %s", got)
	}
	t.Logf("clock overhead taken off: %s", clockOverhead())
}
