package commands

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// runLock is held by the `devstack run` that owns a working directory, so
// a second one refuses to start instead of wiping a live stack's data.
type runLock struct{ f *os.File }

// lockRun takes the lock of work (the file work+".lock", next to it: the
// directory itself is wiped at start). The kernel drops the lock when the
// process ends, however it ends.
func lockRun(work string) (*runLock, error) {
	path := strings.TrimRight(work, string(os.PathSeparator)) + ".lock"
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		b, _ := os.ReadFile(path)
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			pid := strings.TrimSpace(string(b))
			return nil, fmt.Errorf("another make run (pid %s) is serving from %s: stop it first (Ctrl-C in its terminal, or kill %s); its data is left as it is", pid, work, pid)
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return &runLock{f: f}, nil
}

func (l *runLock) release() {
	_ = syscall.Flock(int(l.f.Fd()), syscall.LOCK_UN)
	_ = l.f.Close()
}

// portsFree fails, naming the first port something else listens on: the
// stack would otherwise start half-way and time out waiting for it.
func portsFree(ports ...int) error {
	for _, p := range ports {
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			return fmt.Errorf("port %d on 127.0.0.1 is taken (%v): make run needs it; stop whatever listens there (ss -ltnp 'sport = :%d')", p, err, p)
		}
		ln.Close()
	}
	return nil
}
