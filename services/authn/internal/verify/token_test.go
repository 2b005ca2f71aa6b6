package verify

import (
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
)

func TestBearer(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		values []string
		token  string
		code   schemas.Code
	}{
		{"absent", nil, "", schemas.CodeMissingToken},
		{"bearer", []string{"Bearer abc.def.ghi"}, "abc.def.ghi", ""},
		{"scheme is case-insensitive", []string{"bearer abc"}, "abc", ""},
		{"surrounding space", []string{"  Bearer   abc  "}, "abc", ""},
		{"basic", []string{"Basic dXNlcjpwdw=="}, "", schemas.CodeMissingToken},
		{"scheme only", []string{"Bearer"}, "", schemas.CodeMissingToken},
		{"empty credential", []string{"Bearer   "}, "", schemas.CodeMissingToken},
		{"two headers", []string{"Bearer a", "Bearer b"}, "", schemas.CodeMalformedToken},
		{"inner space", []string{"Bearer a b"}, "", schemas.CodeMalformedToken},
		{"oversized", []string{"Bearer " + strings.Repeat("a", DefaultMaxTokenBytes+1)}, "", schemas.CodeTokenTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tok, d := bearer(tc.values, DefaultMaxTokenBytes)
			var code schemas.Code
			if d != nil {
				code = d.Code
			}
			if tok != tc.token || code != tc.code {
				t.Fatalf("bearer(%q) = %q, %v; want %q, %q", tc.values, tok, d, tc.token, tc.code)
			}
		})
	}
}
