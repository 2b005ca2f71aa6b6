package generate

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/aigov/aigov/schemas"
)

// The markers of the deny code table in docs/decisions.md.
const (
	CodesBegin = "<!-- deny codes: generated from schemas/codes.go; make generate -->\n"
	CodesEnd   = "<!-- end of deny codes -->"
)

// DenyCodes is the deny code table of docs/decisions.md: every code of
// schemas.Codes with the stage that decides it and its meaning, by name.
func DenyCodes() ([]Output, error) {
	codes := make([]string, 0, len(schemas.Codes))
	for c := range schemas.Codes {
		codes = append(codes, string(c))
	}
	slices.Sort(codes)
	var errs []error
	var b strings.Builder
	b.WriteString("| code | stage | meaning |\n|---|---|---|\n")
	for _, c := range codes {
		stage, ok := schemas.CodeStages[schemas.Code(c)]
		if !ok {
			errs = append(errs, fmt.Errorf("code %s has no stage in schemas.CodeStages", c))
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", c, stage, schemas.Codes[schemas.Code(c)])
	}
	if len(schemas.CodeStages) != len(schemas.Codes) {
		errs = append(errs, fmt.Errorf("schemas.CodeStages has %d codes, schemas.Codes %d", len(schemas.CodeStages), len(schemas.Codes)))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return []Output{{Path: "docs/decisions.md", Begin: CodesBegin, End: CodesEnd, Content: []byte(b.String()), From: "schemas/codes.go"}}, nil
}
