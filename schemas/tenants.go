package schemas

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Tenants are ML platforms that connect in NATS accounts of their own. The
// aigov account (AccountAigov) holds every stream, bucket and service; a
// tenant account holds one user and sees exactly two things of it:
//
//   - requests: the tenant publishes on <prefix>.request.<action> in its own
//     account; a service import maps that to <prefix>.tenant.<name>.request.<action>
//     in the aigov account, where the request stream captures it and the
//     JetStream ack flows back as the import's response. The server writes
//     the tenant's name into the subject, so authn knows the sender's
//     tenant from where the request was stored, not from anything the
//     sender wrote.
//   - replies: decisions come later, as separate messages, so the import's
//     response mapping cannot carry them. The aigov account exports the
//     stream _INBOX.tenant.<name>.> to that tenant's account alone; the
//     tenant's client uses that inbox prefix, and authn and policy answer
//     a tenant's request only under that tenant's prefix (ReplyAllowed).
//
// Nothing else is exported: a tenant's $JS.API, $KV and aigov.decision
// subjects stay in its own account, which has no JetStream, so it cannot
// read or change any aigov stream or bucket, nor see another tenant's
// requests, decisions or replies.

// AccountAigov is the NATS account of aigov's own users (every role) when
// the topology has tenants. Without tenants every user is in the server's
// global account, as before.
const AccountAigov = "AIGOV"

// KindTenant is the second token of tenant request subjects,
// <prefix>.tenant.<name>.request.<action>.
const KindTenant = "tenant"

// tenantInboxRoot starts every tenant's inbox. No role is named "tenant",
// so no role's inbox (_INBOX.<role>.) overlaps it.
const tenantInboxRoot = "_INBOX." + KindTenant + "."

// TenantInboxPrefix is the custom inbox prefix of a tenant's connection: the
// only subjects its replies come on.
func TenantInboxPrefix(tenant string) string { return tenantInboxRoot + tenant }

// ExampleTenants are the two platforms of the compose and Kubernetes
// example configs (deploy/nats/auth.conf).
func ExampleTenants() []string { return []string{"platform-a", "platform-b"} }

// MaxTenantName bounds a tenant's name, which is an account name, a user
// name and one subject token.
const MaxTenantName = 32

// ErrInvalidTenant is returned for a tenant name that cannot be used.
var ErrInvalidTenant = errors.New("invalid tenant")

// ValidTenant reports why name cannot be a tenant: a tenant's name is one
// subject token of lowercase letters, digits and '-', and neither a role
// nor the aigov account, whose users it would shadow.
func ValidTenant(name string) error {
	if name == "" || len(name) > MaxTenantName {
		return fmt.Errorf("%w %q: 1 to %d characters", ErrInvalidTenant, name, MaxTenantName)
	}
	for _, r := range name {
		if (r < 'a' || r > 'z') && (r < '0' || r > '9') && r != '-' {
			return fmt.Errorf("%w %q: only a-z, 0-9 and '-'", ErrInvalidTenant, name)
		}
	}
	if slices.Contains(Roles(), name) || strings.EqualFold(name, AccountAigov) || name == "admin" {
		return fmt.Errorf("%w %q: the name of an aigov user or account", ErrInvalidTenant, name)
	}
	return nil
}

// TenantRequest is the subject, in the aigov account, that a tenant's
// request for action arrives on.
func (s Subjects) TenantRequest(tenant, action string) string {
	return s.join(KindTenant, tenant+"."+KindRequest+"."+action)
}

// TenantRequests is the wildcard of one tenant's requests in the aigov
// account: what the tenant's service import maps to.
func (s Subjects) TenantRequests(tenant string) string { return s.TenantRequest(tenant, ">") }

// AllTenantRequests is the wildcard of every tenant's requests.
func (s Subjects) AllTenantRequests() string { return s.TenantRequest("*", ">") }

// RequestOf returns the tenant ("" for a request from the aigov account
// itself) and the action of a request subject.
func (s Subjects) RequestOf(subject string) (tenant, action string, err error) {
	if action, err := s.ActionOf(KindRequest, subject); err == nil {
		return "", action, nil
	}
	p := s.Prefix + "." + KindTenant + "."
	rest, ok := strings.CutPrefix(subject, p)
	tenant, action, ok2 := strings.Cut(rest, "."+KindRequest+".")
	if !ok || !ok2 || ValidTenant(tenant) != nil || action == "" {
		return "", "", fmt.Errorf("%w: subject %q is neither under %s.%s.> nor %s", ErrInvalidEvent, subject, s.Prefix, KindRequest, s.AllTenantRequests())
	}
	return tenant, action, nil
}

// ReplyAllowed reports whether aigov may answer a request of tenant ("" for
// the aigov account) on replyTo: a literal _INBOX. subject, under the
// tenant's own inbox for a tenant's request and under no tenant's inbox
// otherwise. So no requester can have its decision sent into another
// tenant's account.
func ReplyAllowed(tenant, replyTo string) bool {
	if !ValidInbox(replyTo) {
		return false
	}
	if tenant == "" {
		return !strings.HasPrefix(replyTo, tenantInboxRoot)
	}
	return strings.HasPrefix(replyTo, TenantInboxPrefix(tenant)+".")
}

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
	aigov := NATSAccount{Name: AccountAigov, JetStream: true}
	for _, role := range Roles() {
		p, err := t.Permissions(role)
		if err != nil {
			return nil, err
		}
		aigov.Users = append(aigov.Users, NATSUser{Name: role, Inbox: InboxPrefix(role), Permissions: p})
	}
	out := []NATSAccount{aigov}
	seen := map[string]bool{}
	for _, tenant := range t.Tenants {
		if err := ValidTenant(tenant); err != nil {
			return nil, err
		}
		if seen[tenant] {
			return nil, fmt.Errorf("%w %q: declared twice", ErrInvalidTenant, tenant)
		}
		seen[tenant] = true
		inbox := TenantInboxPrefix(tenant)
		out[0].Exports = append(out[0].Exports,
			NATSExport{Service: true, Subject: s.TenantRequests(tenant), Accounts: []string{tenant}},
			NATSExport{Subject: inbox + ".>", Accounts: []string{tenant}})
		out = append(out, NATSAccount{
			Name: tenant,
			Users: []NATSUser{{Name: tenant, Inbox: inbox, Permissions: Permissions{
				Publish:   []string{s.All(KindRequest)},
				Subscribe: []string{inbox + ".>"},
			}}},
			Imports: []NATSImport{
				{Service: true, Account: AccountAigov, Subject: s.TenantRequests(tenant), To: s.All(KindRequest)},
				{Account: AccountAigov, Subject: inbox + ".>"},
			},
		})
	}
	return out, nil
}
