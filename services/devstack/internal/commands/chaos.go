package commands

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aigov/aigov/services/devstack/internal/chaos"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// Chaos runs the stack on a 3-node NATS cluster with ClickHouse and the
// four services as processes, injects each fault under steady load and
// prints one line per fault, then a summary. It fails if any fault lost,
// duplicated or wrongly allowed a request, or broke the audit chain.
func Chaos(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devstack chaos", flag.ContinueOnError)
	rate := fs.Int("rate", 200, "steady load, requests per second")
	principals := fs.Int("principals", 100, "distinct principals, each with its own token")
	faults := fs.String("faults", strings.Join(chaos.Faults, ","), "comma-separated faults to inject, in order")
	dir := fs.String("dir", ".run-chaos", "working directory (wiped at start)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	list := strings.Split(*faults, ",")
	root, err := stack.FindRoot()
	if err != nil {
		return err
	}
	began := time.Now()
	work, _ := filepath.Abs(*dir)
	_ = os.RemoveAll(work)
	bin := filepath.Join(work, "bin")
	if err := stack.Build(ctx, root, bin); err != nil {
		return err
	}
	st, err := stack.Start(ctx, stack.Options{Root: root, Dir: work, BinDir: bin, ClusterNodes: 3,
		Personas: chaos.Personas(*principals), LogLevel: "warn", Progress: out})
	if err != nil {
		return err
	}
	defer st.Stop()
	r, err := chaos.New(ctx, st, chaos.Options{Rate: *rate, Principals: *principals, BinDir: bin, Progress: out})
	if err != nil {
		return err
	}
	defer r.Close()
	fmt.Fprintf(out, "\n== chaos: %d faults, load %d/s from %d principals, NATS cluster of 3 (R3)\n", len(list), *rate, *principals)
	var results []chaos.Result
	failed := 0
	for _, f := range list {
		res, err := r.Run(ctx, strings.TrimSpace(f))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if err != nil {
			// A fault that could not be injected (or undone) counts as a
			// failure; the next faults still run.
			res.Fault, res.Verify, res.Notes = strings.TrimSpace(f), "error", err.Error()
		}
		results = append(results, res)
		if !res.OK() {
			failed++
		}
		fmt.Fprintln(out, res.Line())
		if res.Notes != "" {
			fmt.Fprintf(out, "   %s (%s)\n", res.Notes, res.Elapsed.Round(time.Second))
		}
	}
	fmt.Fprintf(out, "\n== summary (%s, %d cores, %s; %s in all)\n", cpuModel(), runtime.NumCPU(), runtime.Version(), time.Since(began).Round(time.Second))
	tw := tabwriter.NewWriter(out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FAULT\tSENT\tACKED\tDECIDED\tAUDITED\tLOST\tDUP\tWRONG_ALLOW\tVERIFY\tTIME")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", r.Fault, r.Sent, r.Acked, r.Decided, r.Audited, r.Lost, r.Dup, r.WrongAllow, r.Verify, r.Elapsed.Round(time.Second))
	}
	_ = tw.Flush()
	if failed > 0 {
		return fmt.Errorf("chaos: %d of %d faults lost, duplicated or wrongly allowed requests, or failed audit verify", failed, len(results))
	}
	return nil
}
