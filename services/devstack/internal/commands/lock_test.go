package commands

import (
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// A second make run on the same directory refuses, naming the first's
// pid, and leaves the directory alone; once the first ends, it may start.
func TestSecondRunRefusesAndLeavesTheFirstAlone(t *testing.T) {
	t.Parallel()
	work := filepath.Join(t.TempDir(), ".run")
	first, err := lockRun(work)
	if err != nil {
		t.Fatal(err)
	}
	// lockRun opens the file again, a new open file description: flock
	// conflicts between two of them even within one process.
	_, err = lockRun(work)
	if err == nil || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) || !strings.Contains(err.Error(), work) {
		t.Fatalf("second lock: %v; want a refusal naming pid %d and %s", err, os.Getpid(), work)
	}
	first.release()
	again, err := lockRun(work)
	if err != nil {
		t.Fatalf("after the first released: %v", err)
	}
	again.release()
}

// A port something else holds is named before anything starts.
func TestPortsFreeNamesTheTakenPort(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	if err := portsFree(port); err == nil || !strings.Contains(err.Error(), "port "+strconv.Itoa(port)) {
		t.Fatalf("portsFree(%d) = %v", port, err)
	}
}
