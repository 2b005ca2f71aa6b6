// Command natsnode runs one nats-server node from a configuration file, as
// a child process of natsdev.StartCluster: a test can then SIGKILL it,
// SIGSTOP/SIGCONT it, or start it again on the same store, which an
// in-process server cannot undergo. It logs to stderr and shuts down
// cleanly on SIGTERM or SIGINT.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/nats-io/nats-server/v2/server"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: natsnode CONFIG_FILE")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "natsnode:", err)
		os.Exit(1)
	}
}

func run(config string) error {
	opts, err := server.ProcessConfigFile(config)
	if err != nil {
		return fmt.Errorf("config %s: %w", config, err)
	}
	// Signals are handled here, so that SIGTERM is a clean shutdown and
	// nothing else reacts to SIGUSR1 or SIGHUP.
	opts.NoSigs = true
	srv, err := server.NewServer(opts)
	if err != nil {
		return fmt.Errorf("new server: %w", err)
	}
	srv.ConfigureLogger()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	go srv.Start()
	done := make(chan struct{})
	go func() {
		srv.WaitForShutdown()
		close(done)
	}()
	select {
	case <-sigs:
		srv.Shutdown()
		<-done
	case <-done:
	}
	return nil
}
