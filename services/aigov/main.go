// Command aigov is the command line for aigov: send a request and print its
// decision.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/aigov/aigov/services/aigov/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv)
	stop()
	os.Exit(code)
}
