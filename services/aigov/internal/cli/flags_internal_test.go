package cli

import (
	"flag"
	"io"
	"slices"
	"testing"
)

func TestParseArgsAcceptsFlagsAnywhere(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		args      []string
		wantToken string
		wantJSON  bool
		wantPos   []string
	}{
		{"flags first", []string{"--token-file", "me.jwt", "policies"}, "me.jwt", false, []string{"policies"}},
		{"flags after the positional", []string{"policies", "--token-file", "me.jwt", "--json"}, "me.jwt", true, []string{"policies"}},
		{"flags between", []string{"a", "--json", "b", "-token-file=x"}, "x", true, []string{"a", "b"}},
		{"double dash ends flags", []string{"--json", "--", "--token-file", "y"}, "", true, []string{"--token-file", "y"}},
		{"stdin dash is positional", []string{"-", "--json"}, "", true, []string{"-"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			fs := flag.NewFlagSet("t", flag.ContinueOnError)
			fs.SetOutput(io.Discard)
			token := fs.String("token-file", "", "")
			asJSON := fs.Bool("json", false, "")
			if err := parseArgs(fs, tc.args); err != nil {
				t.Fatal(err)
			}
			if *token != tc.wantToken || *asJSON != tc.wantJSON || !slices.Equal(fs.Args(), tc.wantPos) {
				t.Fatalf("token %q json %v args %q, want %q %v %q", *token, *asJSON, fs.Args(), tc.wantToken, tc.wantJSON, tc.wantPos)
			}
		})
	}
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	if err := parseArgs(fs, []string{"x", "--nope"}); err == nil {
		t.Fatal("an undefined flag after a positional argument was accepted")
	}
}

func TestParseResourceForms(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		"Model:fraud-detector":  "Model/fraud-detector",
		`PolicySet::"active"`:   "PolicySet/active",
		"PolicySet::active":     "PolicySet/active", // what a shell leaves of PolicySet::"active"
		"Dataset:s3://bucket/x": "Dataset/s3://bucket/x",
		`Tool::"sql.query"`:     "Tool/sql.query",
	} {
		r, err := parseResource(in)
		if err != nil || r.Type+"/"+r.ID != want {
			t.Errorf("parseResource(%q) = %+v, %v; want %s", in, r, err, want)
		}
	}
	for _, bad := range []string{"fraud-detector", ":x", "Model:", "Model::"} {
		if _, err := parseResource(bad); err == nil {
			t.Errorf("parseResource(%q) accepted a malformed resource", bad)
		}
	}
}
