//go:build linux

package proc

import (
	"os"
	"testing"
)

// The peak RSS of this process is read and grows when memory is touched;
// a process that does not exist is an error, not a zero.
func TestPeakRSS(t *testing.T) {
	before, err := PeakRSS(0)
	if err != nil || before <= 0 {
		t.Fatalf("PeakRSS(self) = %d, %v", before, err)
	}
	buf := make([]byte, 64<<20)
	for i := range buf {
		if i%4096 == 0 {
			buf[i] = 1
		}
	}
	after, err := PeakRSS(os.Getpid())
	if err != nil || after < before+32<<20 {
		t.Errorf("PeakRSS after touching 64 MiB = %d (before %d), %v", after, before, err)
	}
	_ = buf[len(buf)-1]
	if _, err := PeakRSS(1 << 30); err == nil {
		t.Error("PeakRSS of a pid that does not exist: no error")
	}
}
