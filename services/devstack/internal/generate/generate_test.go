package generate

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A file or section that drifted is reported by Check, rewritten by Write,
// and then checks clean; the prose around a section is kept.
func TestCheckAndWrite(t *testing.T) {
	root := t.TempDir()
	write := func(rel, s string) {
		t.Helper()
		if err := os.MkdirAll(filepath.Dir(filepath.Join(root, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, rel), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("docs/a.md", "intro\n<!-- b -->\nold table\n<!-- e -->\noutro\n")
	write("deploy/x.conf", "hand-edited\n")
	outs := []Output{
		{Path: "docs/a.md", Begin: "<!-- b -->\n", End: "<!-- e -->", Content: []byte("new table\n"), From: "the code"},
		{Path: "deploy/x.conf", Content: []byte("generated\n"), From: "the topology"},
		{Path: "deploy/new/y.json", Content: []byte("{}\n"), From: "the scenarios"},
	}
	gen := []Generator{{Name: "test", Render: func(context.Context, string) ([]Output, error) { return outs, nil }}}
	err := Run(context.Background(), root, gen, true, io.Discard)
	if err == nil {
		t.Fatal("check passed on drifted files")
	}
	for _, want := range []string{"docs/a.md differs from the code", "deploy/x.conf differs from the topology", "deploy/new/y.json"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("check error %q does not name %q", err, want)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(root, "deploy/x.conf")); string(got) != "hand-edited\n" {
		t.Errorf("check wrote %q", got)
	}
	if err := Run(context.Background(), root, gen, false, io.Discard); err != nil {
		t.Fatal(err)
	}
	if err := Run(context.Background(), root, gen, true, io.Discard); err != nil {
		t.Errorf("check after write: %v", err)
	}
	if got, _ := os.ReadFile(filepath.Join(root, "docs/a.md")); string(got) != "intro\n<!-- b -->\nnew table\n<!-- e -->\noutro\n" {
		t.Errorf("section rewritten as %q", got)
	}
}

// A section whose markers are gone is an error, not a silent append.
func TestMissingMarkers(t *testing.T) {
	root := t.TempDir()
	if err := os.WriteFile(filepath.Join(root, "a.md"), []byte("no markers\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	o := Output{Path: "a.md", Begin: "<!-- b -->\n", End: "<!-- e -->", Content: []byte("x\n")}
	if err := o.Check(root); err == nil || !strings.Contains(err.Error(), "no generated section") {
		t.Errorf("check: %v", err)
	}
	if _, err := o.Write(root); err == nil {
		t.Error("write into a file without markers succeeded")
	}
}
