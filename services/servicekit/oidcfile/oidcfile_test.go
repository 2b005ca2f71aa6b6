package oidcfile

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

type env struct {
	vars map[string]string
	errs []string
}

func (e *env) String(k string) string { return e.vars[k] }
func (e *env) List(k string) []string {
	if e.vars[k] == "" {
		return nil
	}
	return strings.Split(e.vars[k], ",")
}
func (e *env) Fail(format string, args ...any) { e.errs = append(e.errs, fmt.Sprintf(format, args...)) }

// The file or the list, never both; neither only when not required.
func TestLoad(t *testing.T) {
	file := filepath.Join(t.TempDir(), "issuers.yaml")
	if err := os.WriteFile(file, []byte("issuers:\n  - url: https://idp.example\n    audiences: [aigov]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name     string
		vars     map[string]string
		required string
		fromFile bool
		urls     int
		err      string
	}{
		{"file", map[string]string{"AIGOV_OIDC_CONFIG": file}, "need one", true, 0, ""},
		{"list", map[string]string{"AIGOV_OIDC_ISSUERS": "https://a,https://b"}, "need one", false, 2, ""},
		{"both", map[string]string{"AIGOV_OIDC_CONFIG": file, "AIGOV_OIDC_ISSUERS": "https://a"}, "", false, 0, "not both"},
		{"neither, required", map[string]string{}, "need one", false, 0, "need one"},
		{"neither, optional", map[string]string{}, "", false, 0, ""},
		{"bad file", map[string]string{"AIGOV_OIDC_CONFIG": file + ".missing"}, "", false, 0, "AIGOV_OIDC_CONFIG:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := &env{vars: tc.vars}
			d, urls, fromFile := Load(e, tc.required)
			if fromFile != tc.fromFile || len(urls) != tc.urls {
				t.Errorf("fromFile %v, urls %q; want %v, %d", fromFile, urls, tc.fromFile, tc.urls)
			}
			if fromFile && (len(d.Issuers) != 1 || d.Issuers[0].URL != "https://idp.example") {
				t.Errorf("document %+v", d)
			}
			switch {
			case tc.err == "" && len(e.errs) > 0:
				t.Errorf("errors %q", e.errs)
			case tc.err != "" && (len(e.errs) != 1 || !strings.Contains(e.errs[0], tc.err)):
				t.Errorf("errors %q, want one with %q", e.errs, tc.err)
			}
		})
	}
}
