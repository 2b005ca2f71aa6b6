package deploycheck

import (
	"testing"

	"github.com/aigov/aigov/services/devstack/internal/generate"
)

// docs/decisions.md lists exactly the codes of schemas/codes.go.
func TestDenyCodesDoc(t *testing.T) {
	outs, err := generate.DenyCodes()
	checkGenerated(t, outs, err)
}

// checkGenerated fails the test for each output that differs from the file
// it is generated into (or could not be rendered).
func checkGenerated(t *testing.T, outs []generate.Output, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
	if len(outs) == 0 {
		t.Fatal("nothing generated")
	}
	for _, o := range outs {
		if err := o.Check(repoRoot(t)); err != nil {
			t.Error(err)
		}
	}
}
