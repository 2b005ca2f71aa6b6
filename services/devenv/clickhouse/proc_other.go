//go:build !linux

package clickhouse

import (
	"errors"
	"syscall"
	"time"
)

// sysProcAttr returns nil off Linux: there is no parent-death signal, so
// the server stays in the caller's process group, where at least a
// terminal's Ctrl-C reaches it and it does not outlive an interactive run.
func sysProcAttr() *syscall.SysProcAttr { return nil }

// cpuTime is only implemented on Linux, where /proc reports it.
func cpuTime(int) (time.Duration, error) {
	return 0, errors.New("process cpu time is only read on linux")
}
