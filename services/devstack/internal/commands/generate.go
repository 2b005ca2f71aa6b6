package commands

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/aigov/aigov/services/devstack/internal/generate"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// Generate writes the files generated from code (make generate) or, with
// -check, fails naming each one that differs (make generate-check). The
// replicated ClickHouse schema is read from a dev stack's audit database,
// which this starts unless -clickhouse=false.
func Generate(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devstack generate", flag.ContinueOnError)
	fs.SetOutput(out)
	check := fs.Bool("check", false, "write nothing: fail when a generated file differs from what the code generates")
	withCH := fs.Bool("clickhouse", true, "also generate the replicated schema, from a dev stack's ClickHouse (started and stopped here)")
	dir := fs.String("dir", ".run-generate", "working directory of the dev stack (wiped at start and at the end)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("devstack generate: unexpected arguments %q", fs.Args())
	}
	root, err := stack.FindRoot()
	if err != nil {
		return err
	}
	gens := generate.Generators()
	if *withCH {
		gens = append(gens, generate.Generator{Name: "replicated schema", Render: func(ctx context.Context, root string) ([]generate.Output, error) {
			return replicatedSchema(ctx, root, *dir)
		}})
	}
	if err := generate.Run(ctx, root, gens, *check, out); err != nil {
		return err
	}
	if *check {
		fmt.Fprintln(out, "generated files are up to date")
	}
	return nil
}

// replicatedSchema starts a dev stack, whose audit service applies the
// migrations, and renders the replicated schema from its tables.
func replicatedSchema(ctx context.Context, root, dir string) ([]generate.Output, error) {
	work, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	_ = os.RemoveAll(work)
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "bin")
	if err := stack.Build(ctx, root, bin); err != nil {
		return nil, err
	}
	st, err := stack.Start(ctx, stack.Options{Root: root, Dir: work, BinDir: bin, LogLevel: "warn"})
	if err != nil {
		return nil, fmt.Errorf("start the dev stack: %w", err)
	}
	defer st.Stop()
	return generate.ReplicatedSchema(ctx, st.DB)
}
