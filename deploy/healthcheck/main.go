// Command healthcheck is the container health probe of the aigov images.
//
// The images are distroless (no shell, no curl), so docker-compose cannot
// probe a service's /readyz with a shell command; it runs this instead:
//
//	healthcheck http://127.0.0.1:8080/readyz
//
// It exits 0 when the URL answers 200 within the timeout, and 1 otherwise,
// printing why. It uses only the standard library and is built by
// deploy/Dockerfile outside the Go workspace (its own module).
package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

// timeout bounds the whole probe; docker's own health check timeout should
// be longer.
const timeout = 3 * time.Second

func main() {
	os.Exit(run(os.Args[1:], os.Stderr))
}

func run(args []string, stderr io.Writer) int {
	if len(args) != 1 {
		fmt.Fprintln(stderr, "usage: healthcheck URL")
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, args[0], nil)
	if err != nil {
		fmt.Fprintln(stderr, "healthcheck:", err)
		return 2
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		fmt.Fprintln(stderr, "healthcheck:", err)
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "healthcheck: %s answered %s: %s\n", args[0], resp.Status, body)
		return 1
	}
	return 0
}
