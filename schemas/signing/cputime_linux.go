//go:build linux

package signing

import (
	"time"

	"golang.org/x/sys/unix"
)

// threadCPU is the calling thread's CPU time: unlike the wall clock it does
// not count the time the thread waited for a core, which on a busy machine
// is most of a signature's wall time.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}
