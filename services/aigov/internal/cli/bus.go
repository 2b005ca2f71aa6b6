package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// busCmd is `aigov bus provision`: the provisioning step that creates or
// updates every stream, bucket and durable consumer with the provisioner's
// credentials, before any service starts (services cannot create them).
func busCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 || args[0] != "provision" {
		fmt.Fprintln(stderr, "usage: aigov bus provision [flags]   (create or update the streams, buckets and consumers)")
		return ExitUsage
	}
	fs := flag.NewFlagSet("aigov bus provision", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bus := addConnFlags(fs, lookup, schemas.RoleProvisioner)
	replicas := fs.Int("replicas", 1, "replicas of every stream and bucket (3 on a cluster)")
	timeout := fs.Duration("timeout", 30*time.Second, "how long provisioning may take")
	if err := parseArgs(fs, args[1:]); err != nil {
		return ExitUsage
	}
	if *replicas < 1 {
		fmt.Fprintln(stderr, "aigov bus provision: --replicas must be at least 1")
		return ExitUsage
	}
	nc, js, err := bus.dialJS(*timeout)
	if err != nil {
		fmt.Fprintf(stderr, "aigov bus provision: %v\n", err)
		return ExitError
	}
	defer nc.Close()
	topo := topology.New(bus.prefix)
	topo.Replicas = *replicas
	cctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	if err := topo.Provision(cctx, js); err != nil {
		fmt.Fprintf(stderr, "aigov bus provision: %v\n", err)
		return ExitError
	}
	fmt.Fprintf(stdout, "provisioned %d streams, %d buckets and %d consumers (replicas %d)\n",
		len(topo.Streams()), len(topo.Buckets()), len(topo.ConsumerNames()), topo.Replicas)
	return ExitAllow
}
