package signing

import (
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// measure runs f and adds the CPU time it took to acc. The goroutine stays
// on its thread meanwhile, so the thread's CPU clock is f's alone. What
// reading the clock itself costs (part of it lands between the two
// readings) is taken off, as a benchmark harness takes off its timer's
// cost: the least of many empty measurements, so never more than it is.
func measure(acc *atomic.Int64, f func()) {
	overhead := clockOverhead()
	runtime.LockOSThread()
	start := threadCPU()
	f()
	d := threadCPU() - start
	runtime.UnlockOSThread()
	if d -= overhead; d > 0 {
		acc.Add(int64(d))
	}
}

// clockOverhead is the CPU time an empty measurement reads, computed once.
var clockOverhead = sync.OnceValue(func() time.Duration {
	least := time.Duration(1<<63 - 1)
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for range 256 {
		start := threadCPU()
		d := threadCPU() - start
		if d >= 0 && d < least {
			least = d
		}
	}
	if least == time.Duration(1<<63-1) {
		return 0
	}
	return least
})
