package deploycheck

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
)

const (
	codesBegin = "<!-- deny codes: generated from schemas/codes.go by TestDenyCodesDoc (-update) -->\n"
	codesEnd   = "<!-- end of deny codes -->"
)

// renderCodes is the deny code table: every code of schemas.Codes, with
// the stage that decides it and its meaning, by name.
func renderCodes(t *testing.T) string {
	t.Helper()
	codes := make([]string, 0, len(schemas.Codes))
	for c := range schemas.Codes {
		codes = append(codes, string(c))
	}
	slices.Sort(codes)
	var b strings.Builder
	b.WriteString("| code | stage | meaning |\n|---|---|---|\n")
	for _, c := range codes {
		stage, ok := schemas.CodeStages[schemas.Code(c)]
		if !ok {
			t.Errorf("code %s has no stage in schemas.CodeStages", c)
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", c, stage, schemas.Codes[schemas.Code(c)])
	}
	if len(schemas.CodeStages) != len(schemas.Codes) {
		t.Errorf("schemas.CodeStages has %d codes, schemas.Codes %d", len(schemas.CodeStages), len(schemas.Codes))
	}
	return b.String()
}

// docs/decisions.md lists exactly the codes of schemas/codes.go.
func TestDenyCodesDoc(t *testing.T) {
	checkGeneratedSection(t, "docs/decisions.md", codesBegin, codesEnd, renderCodes(t), "deny codes differ from schemas/codes.go")
}

// checkGeneratedSection compares the part of the file rel between the
// markers begin and end with generated, or writes it with -update.
func checkGeneratedSection(t *testing.T, rel, begin, end, generated, differ string) {
	t.Helper()
	doc := string(readFile(t, rel))
	i, j := strings.Index(doc, begin), strings.Index(doc, end)
	if i < 0 || j < i {
		t.Fatalf("%s has no generated section (markers %q … %q)", rel, begin, end)
	}
	want := doc[:i+len(begin)] + generated + doc[j:]
	if *update {
		if err := os.WriteFile(repoPath(t, rel), []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	if doc != want {
		t.Errorf("%s: %s; regenerate with\n  make generate", rel, differ)
	}
}
