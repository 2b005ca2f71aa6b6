package deploycheck

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The Go snippet of docs/publishing.md compiles and vets as printed, with the imports it
// needs: a user who pastes it gets a program that handles every error.
func TestReadmeGoSnippetCompiles(t *testing.T) {
	t.Parallel()
	readme := string(readFile(t, "docs/publishing.md"))
	start := strings.Index(readme, "```go\n")
	if start < 0 {
		t.Fatal("docs/publishing.md has no Go snippet")
	}
	snippet := readme[start+len("```go\n"):]
	snippet = snippet[:strings.Index(snippet, "```")]
	// Under testdata: inside the module, so its dependencies resolve, and
	// never part of ./... .
	parent := repoPath(t, "services/devstack/internal/deploycheck/testdata")
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp(parent, "readme-go-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	src := `package main

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/schemas/signing"
)

func main() { _ = authorize }

` + snippet
	if err := os.WriteFile(filepath.Join(dir, "main.go"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("go", "vet", ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the README's Go snippet does not vet: %v\n%s\n%s", err, out, snippet)
	}
}
