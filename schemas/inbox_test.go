package schemas_test

import (
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
)

func TestValidInbox(t *testing.T) {
	t.Parallel()
	for subject, want := range map[string]bool{
		"_INBOX.platform.abc":                true,
		"_INBOX.x":                           true,
		"":                                   false,
		"_INBOX.":                            false,
		"_INBOX..a":                          false,
		"_INBOX.platform.*":                  false,
		"_INBOX.platform.>":                  false,
		"_INBOX.a b":                         false,
		"aigov.decision.model.deploy":        false,
		"_inbox.platform.abc":                false,
		"_INBOX." + strings.Repeat("a", 300): false,
	} {
		if got := schemas.ValidInbox(subject); got != want {
			t.Errorf("ValidInbox(%q) = %v, want %v", subject, got, want)
		}
	}
}

func TestAMRProvesMFA(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		amr  []string
		want bool
	}{
		{nil, false},
		{[]string{"pwd"}, false},
		{[]string{"pwd", "otp"}, true},
		{[]string{"hwk"}, true},
		{[]string{"mfa"}, true},
		{[]string{"MFA"}, false},
	} {
		if got := schemas.AMRProvesMFA(tc.amr); got != tc.want {
			t.Errorf("AMRProvesMFA(%q) = %v, want %v", tc.amr, got, tc.want)
		}
	}
}
