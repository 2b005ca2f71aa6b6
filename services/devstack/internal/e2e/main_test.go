package e2e

import (
	"context"
	"flag"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// built is what TestMain compiled once for every test of the package: the
// repository root and the directory holding the service binaries.
var built struct{ root, bin string }

func TestMain(m *testing.M) {
	os.Exit(buildAndRun(m))
}

func buildAndRun(m *testing.M) int {
	flag.Parse()
	if testing.Short() {
		// Each test starts the whole stack as processes: minutes, not
		// the quick run's seconds.
		fmt.Fprintln(os.Stderr, "e2e: -short skips the end-to-end tests")
		return 0
	}
	root, err := stack.FindRoot()
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	bin, err := os.MkdirTemp("", "aigov-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(bin)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := stack.Build(ctx, root, bin); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: build the services:", err)
		return 1
	}
	built.root, built.bin = root, bin
	return m.Run()
}
