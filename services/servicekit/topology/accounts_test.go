package topology_test

import (
	"errors"
	"testing"

	"github.com/aigov/aigov/services/servicekit/topology"

	"github.com/aigov/aigov/schemas"
)

func TestAccounts(t *testing.T) {
	t.Parallel()
	topo := topology.New("")
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
