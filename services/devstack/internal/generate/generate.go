// Package generate writes the files aigov derives from its code: the deny
// code table and the settings reference in docs/, the NATS accounts, the
// policies ConfigMap, the demo's scenarios, the dev overlay's webhooks and
// the replicated ClickHouse schema in deploy/. `devstack generate` writes
// them (make generate) or, with -check, reports each that differs (make
// generate-check); the deploy checks compare against the same renderers, so
// a file is generated in one place and checked against it.
package generate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// An Output is one generated piece: a whole file, or, with Begin and End,
// the part of a file between two marker lines that the rest of the file
// (prose) surrounds.
type Output struct {
	Path       string // relative to the repository root, slash-separated
	Begin, End string // markers of a generated section; empty for a whole file
	Content    []byte
	// From says what the file is generated from, for the message that
	// asks to regenerate it.
	From string
}

// Want is what the file at root/o.Path must hold.
func (o Output) Want(root string) ([]byte, error) {
	if o.Begin == "" {
		return o.Content, nil
	}
	doc, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(o.Path)))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", o.Path, err)
	}
	i, j := bytes.Index(doc, []byte(o.Begin)), bytes.Index(doc, []byte(o.End))
	if i < 0 || j < i {
		return nil, fmt.Errorf("%s has no generated section (markers %q … %q)", o.Path, o.Begin, o.End)
	}
	want := append([]byte{}, doc[:i+len(o.Begin)]...)
	want = append(want, o.Content...)
	return append(want, doc[j:]...), nil
}

// Check returns an error naming the file when it differs from what is
// generated.
func (o Output) Check(root string) error {
	want, err := o.Want(root)
	if err != nil {
		return err
	}
	got, err := os.ReadFile(filepath.Join(root, filepath.FromSlash(o.Path)))
	if err != nil {
		return fmt.Errorf("%s: %w; regenerate with\n  make generate", o.Path, err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s differs from %s; regenerate with\n  make generate", o.Path, o.From)
	}
	return nil
}

// Write writes the file (or its section) when it differs and reports
// whether it did.
func (o Output) Write(root string) (bool, error) {
	want, err := o.Want(root)
	if err != nil {
		return false, err
	}
	p := filepath.Join(root, filepath.FromSlash(o.Path))
	if got, err := os.ReadFile(p); err == nil && bytes.Equal(got, want) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return false, fmt.Errorf("write %s: %w", o.Path, err)
	}
	if err := os.WriteFile(p, want, 0o644); err != nil {
		return false, fmt.Errorf("write %s: %w", o.Path, err)
	}
	return true, nil
}

// A Generator renders some outputs from the repository at root.
type Generator struct {
	Name   string
	Render func(ctx context.Context, root string) ([]Output, error)
}

// Generators are every generator that needs no running server, in the
// order make generate runs them. The replicated schema needs a ClickHouse
// with the audit's migrations applied: see ReplicatedSchema.
func Generators() []Generator {
	return []Generator{
		{"deny codes", func(context.Context, string) ([]Output, error) { return DenyCodes() }},
		{"settings", Settings},
		{"NATS accounts", func(context.Context, string) ([]Output, error) { return AuthConf() }},
		{"policies ConfigMap", func(_ context.Context, root string) ([]Output, error) { return PoliciesConfigMap(root) }},
		{"demo scenarios", func(context.Context, string) ([]Output, error) { return Scenarios() }},
		{"approval webhooks", func(_ context.Context, root string) ([]Output, error) { return Webhooks(root) }},
	}
}

// Run renders every output of gens and writes them, or with check only
// compares them, printing one line per file to w. With check, the error
// lists every file that differs.
func Run(ctx context.Context, root string, gens []Generator, check bool, w io.Writer) error {
	var errs []error
	for _, g := range gens {
		outs, err := g.Render(ctx, root)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", g.Name, err))
			continue
		}
		for _, o := range outs {
			if check {
				if err := o.Check(root); err != nil {
					errs = append(errs, err)
				}
				continue
			}
			changed, err := o.Write(root)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			state := "unchanged"
			if changed {
				state = "written"
			}
			fmt.Fprintf(w, "%-10s %s (%s)\n", state, o.Path, g.Name)
		}
	}
	return errors.Join(errs...)
}
