package signing

import (
	"runtime"
	"sync/atomic"
)

// measure runs f and adds the CPU time it took to acc. The goroutine stays
// on its thread meanwhile, so the thread's CPU clock is f's alone.
func measure(acc *atomic.Int64, f func()) {
	runtime.LockOSThread()
	start := threadCPU()
	f()
	d := threadCPU() - start
	runtime.UnlockOSThread()
	if d > 0 {
		acc.Add(int64(d))
	}
}
