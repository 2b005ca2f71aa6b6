// Command devstack runs aigov on one machine for `make run` (the demo) and
// `make bench` (the load generator) and `make chaos` (fault injection), and
// writes the files generated from code (`make generate`).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/aigov/aigov/services/devstack/internal/commands"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cmd, args := "run", os.Args[1:]
	if len(args) > 0 {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "run":
		err = commands.Demo(ctx, args, os.Stdout)
	case "bench":
		err = commands.Bench(ctx, args, os.Stdout)
	case "chaos":
		err = commands.Chaos(ctx, args, os.Stdout)
	case "generate":
		err = commands.Generate(ctx, args, os.Stdout)
	case commands.BenchClientCommand:
		// The platform process of bench -gateway-rate.
		err = commands.BenchClient(ctx, args, os.Stdout)
	default:
		err = fmt.Errorf("unknown command %q: want run, bench, chaos or generate", cmd)
	}
	if err != nil && ctx.Err() != nil {
		// Ctrl-C is how the demo ends: whatever it interrupted, the stack
		// was stopped, so it is no failure.
		fmt.Fprintln(os.Stderr, "devstack: interrupted:", err)
		return
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}
