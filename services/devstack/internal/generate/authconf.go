package generate

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// AdminUser may do anything (setup and inspection), like natsdev.AdminUser.
const AdminUser = "admin"

// AuthConfFiles hold the NATS accounts of docker-compose.yml and of the
// Kubernetes cluster; both are generated from topology.Topology.Accounts.
var AuthConfFiles = []string{"deploy/nats/auth.conf", "deploy/k8s/nats/auth.conf"}

// DeployTopology is the topology of the compose and Kubernetes configs:
// the default one with the example tenants (schemas.ExampleTenants).
func DeployTopology() topology.Topology {
	topo := topology.New("")
	topo.Tenants = schemas.ExampleTenants()
	return topo
}

// NATSPasswordVar is the nats service's environment variable holding a
// user's password (the auth.conf files read it): NATS_PLATFORM_A_PASSWORD
// for tenant platform-a.
func NATSPasswordVar(user string) string {
	return "NATS_" + strings.ToUpper(strings.ReplaceAll(user, "-", "_")) + "_PASSWORD"
}

// AuthConf writes the NATS accounts of the deploy topology: the
// aigov account with a user per role, its JetStream and its exports, and
// one account per tenant; passwords read from $NATS_<USER>_PASSWORD.
func AuthConf() ([]Output, error) {
	accs, err := DeployTopology().Accounts()
	if err != nil {
		return nil, fmt.Errorf("the deploy topology's accounts: %w", err)
	}
	var b strings.Builder
	b.WriteString(`# GENERATED from topology.Topology.Accounts by
# services/devstack/internal/generate; do not edit. After a change of the
# topology's roles, permissions or tenants (DeployTopology:
# schemas.ExampleTenants), regenerate:
#   make generate
#
# Account AIGOV holds every stream and bucket (the only account with
# JetStream) and one NATS user per aigov role with exactly the role's
# permissions, plus an admin for setup and inspection that no service uses.
# Every user may subscribe only to its own inbox (_INBOX.<role>.>), so no
# one reads another's replies; the platform may publish requests and
# nothing else.
#
# Each tenant (an ML platform) has an account of its own with one user. It
# imports two things from AIGOV, each exported to it alone: a service,
# through which its requests (aigov.request.> in its account) land in the
# request stream as aigov.tenant.<tenant>.request.> with the JetStream ack
# mapped back, and the stream of its own inbox, _INBOX.tenant.<tenant>.>,
# on which decisions come. It sees nothing else of AIGOV: no stream,
# bucket, decision or other tenant's traffic. See docs/security.md.
#
# Subjects are quoted (unquoted, $JS would be read as a variable); passwords
# are variables, resolved from the server's environment.
accounts {
`)
	quote := func(ss []string) string {
		q := make([]string, len(ss))
		for i, s := range ss {
			q[i] = strconv.Quote(s)
		}
		return strings.Join(q, ", ")
	}
	for _, a := range accs {
		fmt.Fprintf(&b, "  %s: {\n", strconv.Quote(a.Name))
		if a.JetStream {
			b.WriteString("    jetstream: enabled\n")
		}
		b.WriteString("    users: [\n")
		if a.Name == schemas.AccountAigov {
			fmt.Fprintf(&b, "      {user: %s, password: $%s}\n", AdminUser, NATSPasswordVar(AdminUser))
		}
		for _, u := range a.Users {
			fmt.Fprintf(&b, "      {\n        user: %s, password: $%s\n        permissions: {\n", strconv.Quote(u.Name), NATSPasswordVar(u.Name))
			fmt.Fprintf(&b, "          publish: {allow: [%s]}\n", quote(u.Permissions.Publish))
			fmt.Fprintf(&b, "          subscribe: {allow: [%s]}\n        }\n      }\n", quote(u.Permissions.Subscribe))
		}
		b.WriteString("    ]\n")
		if len(a.Exports) > 0 {
			b.WriteString("    exports: [\n")
			for _, e := range a.Exports {
				kind := "stream"
				if e.Service {
					kind = "service"
				}
				fmt.Fprintf(&b, "      {%s: %s, accounts: [%s]}\n", kind, strconv.Quote(e.Subject), quote(e.Accounts))
			}
			b.WriteString("    ]\n")
		}
		if len(a.Imports) > 0 {
			b.WriteString("    imports: [\n")
			for _, im := range a.Imports {
				kind := "stream"
				if im.Service {
					kind = "service"
				}
				fmt.Fprintf(&b, "      {%s: {account: %s, subject: %s}", kind, strconv.Quote(im.Account), strconv.Quote(im.Subject))
				if im.To != "" {
					fmt.Fprintf(&b, ", to: %s", strconv.Quote(im.To))
				}
				b.WriteString("}\n")
			}
			b.WriteString("    ]\n")
		}
		b.WriteString("  }\n")
	}
	b.WriteString("}\n")
	out := make([]Output, len(AuthConfFiles))
	for i, p := range AuthConfFiles {
		out[i] = Output{Path: p, Content: []byte(b.String()), From: "topology.Topology.Accounts"}
	}
	return out, nil
}
