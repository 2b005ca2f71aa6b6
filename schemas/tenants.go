package schemas

import (
	"errors"
	"fmt"
	"slices"
	"strings"
)

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
