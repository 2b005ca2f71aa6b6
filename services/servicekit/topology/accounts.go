package topology

import (
	"fmt"

	"github.com/aigov/aigov/schemas"
)

// NATSUser is one user of a NATS account, with its permissions and the
// inbox prefix its connection must use.
type NATSUser struct {
	Name        string
	Inbox       string
	Permissions Permissions
}

// NATSExport is a subject an account exports. A service export takes
// requests (their responses are mapped back by the server); a stream
// export delivers every message on the subject to the importers.
type NATSExport struct {
	Service bool
	Subject string
	// Accounts are the only accounts that may import it.
	Accounts []string
}

// NATSImport is a subject an account imports from another.
type NATSImport struct {
	Service bool
	// Account is the exporting account, Subject the subject there.
	Account string
	Subject string
	// To is the subject in the importing account ("" means Subject).
	To string
}

// NATSAccount is one NATS account: its users, whether it has JetStream,
// what it exports and imports.
type NATSAccount struct {
	Name      string
	JetStream bool
	Users     []NATSUser
	Exports   []NATSExport
	Imports   []NATSImport
}

// Accounts returns the NATS accounts of the topology: the aigov account
// with one user per role, then one account per tenant with one user of
// the tenant's name. The dev stack's embedded server, compose and
// Kubernetes configs are all derived from it. Without tenants it is the
// aigov account alone, which servers may run as their global account.
func (t Topology) Accounts() ([]NATSAccount, error) {
	s := t.Subjects
	aigov := NATSAccount{Name: schemas.AccountAigov, JetStream: true}
	for _, role := range schemas.Roles() {
		p, err := t.Permissions(role)
		if err != nil {
			return nil, err
		}
		aigov.Users = append(aigov.Users, NATSUser{Name: role, Inbox: schemas.InboxPrefix(role), Permissions: p})
	}
	out := []NATSAccount{aigov}
	seen := map[string]bool{}
	for _, tenant := range t.Tenants {
		if err := schemas.ValidTenant(tenant); err != nil {
			return nil, err
		}
		if seen[tenant] {
			return nil, fmt.Errorf("%w %q: declared twice", schemas.ErrInvalidTenant, tenant)
		}
		seen[tenant] = true
		inbox := schemas.TenantInboxPrefix(tenant)
		out[0].Exports = append(out[0].Exports,
			NATSExport{Service: true, Subject: s.TenantRequests(tenant), Accounts: []string{tenant}},
			NATSExport{Subject: inbox + ".>", Accounts: []string{tenant}})
		out = append(out, NATSAccount{
			Name: tenant,
			Users: []NATSUser{{Name: tenant, Inbox: inbox, Permissions: Permissions{
				Publish:   []string{s.All(schemas.KindRequest)},
				Subscribe: []string{inbox + ".>"},
			}}},
			Imports: []NATSImport{
				{Service: true, Account: schemas.AccountAigov, Subject: s.TenantRequests(tenant), To: s.All(schemas.KindRequest)},
				{Account: schemas.AccountAigov, Subject: inbox + ".>"},
			},
		})
	}
	return out, nil
}
