//go:build !linux

package proc

import (
	"errors"
	"time"
)

// CPUTime is only implemented on Linux, where /proc reports it.
func CPUTime(int) (time.Duration, error) {
	return 0, errors.New("process cpu time is only read on linux")
}

// PeakRSS is only implemented on Linux, where /proc reports it.
func PeakRSS(int) (int64, error) {
	return 0, errors.New("process peak rss is only read on linux")
}
