package schemas_test

import (
	"errors"
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

func TestAccounts(t *testing.T) {
	t.Parallel()
	topo := schemas.NewTopology("")
	accs, err := topo.Accounts()
	if err != nil || len(accs) != 1 || accs[0].Name != schemas.AccountAigov || len(accs[0].Exports) != 0 {
		t.Fatalf("no tenants: %+v, %v; want the aigov account alone", accs, err)
	}
	topo.Tenants = schemas.ExampleTenants()
	if accs, err = topo.Accounts(); err != nil {
		t.Fatal(err)
	}
	if len(accs) != 3 || len(accs[0].Exports) != 4 {
		t.Fatalf("accounts %+v: want aigov with two exports per tenant, then one account per tenant", accs)
	}
	for _, acc := range accs[1:] {
		if acc.JetStream || len(acc.Users) != 1 || acc.Users[0].Name != acc.Name || len(acc.Exports) != 0 {
			t.Errorf("tenant account %+v: want one user of its name, no JetStream, no exports", acc)
		}
		for _, im := range acc.Imports {
			if im.Account != schemas.AccountAigov {
				t.Errorf("tenant %s imports from %s", acc.Name, im.Account)
			}
		}
	}
	for _, e := range accs[0].Exports {
		if len(e.Accounts) != 1 {
			t.Errorf("export %+v is open to %d accounts, want its tenant's alone", e, len(e.Accounts))
		}
	}
	for _, bad := range [][]string{{"authn"}, {"AIGOV"}, {"a.b"}, {""}, {"platform-a", "platform-a"}} {
		topo.Tenants = bad
		if _, err := topo.Accounts(); !errors.Is(err, schemas.ErrInvalidTenant) {
			t.Errorf("tenants %q: error %v, want ErrInvalidTenant", bad, err)
		}
	}
}
