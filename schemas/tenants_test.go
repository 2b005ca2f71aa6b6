package schemas_test

import (
	"testing"

	"github.com/aigov/aigov/schemas"
)

func TestRequestOf(t *testing.T) {
	t.Parallel()
	s := schemas.NewSubjects("")
	cases := []struct {
		subject, tenant, action string
		ok                      bool
	}{
		{"aigov.request.model.deploy", "", "model.deploy", true},
		{s.TenantRequest("platform-a", "model.deploy"), "platform-a", "model.deploy", true},
		{"aigov.tenant.platform-a.request.", "", "", false},
		{"aigov.tenant.Platform_A.request.model.deploy", "", "", false},
		{"aigov.tenant.authn.request.model.deploy", "", "", false},
		{"aigov.tenant.platform-a.model.deploy", "", "", false},
		{"aigov.decision.model.deploy", "", "", false},
	}
	for _, tc := range cases {
		tenant, action, err := s.RequestOf(tc.subject)
		if (err == nil) != tc.ok || tenant != tc.tenant || action != tc.action {
			t.Errorf("RequestOf(%q) = %q, %q, %v; want %q, %q, ok %v", tc.subject, tenant, action, err, tc.tenant, tc.action, tc.ok)
		}
	}
}

// A request is answered only inside its sender's own inbox space: a tenant
// cannot have its decision sent to another tenant or to an aigov role, and
// a request from the aigov account cannot reach into a tenant's account.
func TestReplyAllowed(t *testing.T) {
	t.Parallel()
	a := schemas.TenantInboxPrefix("platform-a")
	cases := []struct {
		tenant, reply string
		ok            bool
	}{
		{"", "_INBOX.platform.x.1", true},
		{"", a + ".x.1", false},
		{"platform-a", a + ".x.1", true},
		{"platform-a", schemas.TenantInboxPrefix("platform-b") + ".x.1", false},
		{"platform-a", schemas.TenantInboxPrefix("platform-ab") + ".x.1", false},
		{"platform-a", "_INBOX.authn.x", false},
		{"platform-a", a, false},
		{"platform-a", a + ".*", false},
		{"platform-a", "aigov.decision.x", false},
	}
	for _, tc := range cases {
		if got := schemas.ReplyAllowed(tc.tenant, tc.reply); got != tc.ok {
			t.Errorf("ReplyAllowed(%q, %q) = %v, want %v", tc.tenant, tc.reply, got, tc.ok)
		}
	}
}
