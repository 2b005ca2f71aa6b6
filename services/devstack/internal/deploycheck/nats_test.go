package deploycheck

import (
	"context"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devstack/internal/generate"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// envMu serializes the process environment changes parseNATSConf makes:
// nats-server resolves $VARS in a config from the environment.
var envMu sync.Mutex

// parseNATSConf reads a NATS config with nats-server's own parser, with env
// set for the duration of the parse (and restored after).
func parseNATSConf(t testing.TB, rel string, env map[string]string) *server.Options {
	t.Helper()
	envMu.Lock()
	defer envMu.Unlock()
	for k, v := range env {
		old, had := os.LookupEnv(k)
		os.Setenv(k, v)
		defer func() {
			if had {
				os.Setenv(k, old)
			} else {
				os.Unsetenv(k)
			}
		}()
	}
	opts, err := server.ProcessConfigFile(repoPath(t, rel))
	if err != nil {
		t.Fatalf("nats-server cannot read %s: %v", rel, err)
	}
	return opts
}

// composeNATS parses deploy/nats/nats.conf with the nats service's
// environment from docker-compose.yml.
func composeNATS(t testing.TB) *server.Options {
	return parseNATSConf(t, "deploy/nats/nats.conf", compose(t).service(t, "nats").Environment)
}

// natsClientPort is where the compose NATS server listens for clients.
func natsClientPort(t testing.TB) (string, int) {
	o := composeNATS(t)
	return o.Host, o.Port
}

// natsUser is a user of the deploy configs and the account it belongs to.
type natsUser struct {
	account string
	topology.NATSUser
}

// deployUsers are the users of the deploy configs, by name: one per role
// and the admin in the aigov account, one per tenant in its own.
func deployUsers(t testing.TB) map[string]natsUser {
	t.Helper()
	accs, err := generate.DeployTopology().Accounts()
	if err != nil {
		t.Fatal(err)
	}
	users := map[string]natsUser{generate.AdminUser: {account: schemas.AccountAigov, NATSUser: topology.NATSUser{Name: generate.AdminUser}}}
	for _, a := range accs {
		for _, u := range a.Users {
			users[u.Name] = natsUser{account: a.Name, NATSUser: u}
		}
	}
	return users
}

// deployUserNames lists deployUsers' names, sorted.
func deployUserNames(t testing.TB) []string {
	var names []string
	for n := range deployUsers(t) {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// checkUsers compares a config's users with topology.Topology.Accounts: one
// user per role with exactly the role's publish and subscribe allow lists
// (and no deny lists), plus an unrestricted admin, all in the aigov
// account, one user per tenant in the tenant's account, and nobody else.
// passwords, when not nil, are the expected password of each user.
func checkUsers(t *testing.T, where string, users []*server.User, passwords map[string]string) {
	t.Helper()
	wantUsers := deployUsers(t)
	var got []string
	for _, u := range users {
		got = append(got, u.Username)
		if passwords != nil && (u.Password == "" || u.Password != passwords[u.Username]) {
			t.Errorf("%s: user %s has password %q, want %q", where, u.Username, u.Password, passwords[u.Username])
		}
		w, ok := wantUsers[u.Username]
		if !ok {
			t.Errorf("%s: user %q is neither an aigov role nor a tenant", where, u.Username)
			continue
		}
		if u.Account == nil || u.Account.Name != w.account {
			t.Errorf("%s: user %s is in account %v, want %s", where, u.Username, u.Account, w.account)
		}
		if u.Username == generate.AdminUser {
			if u.Permissions != nil {
				t.Errorf("%s: admin has permissions %+v, want none (unrestricted)", where, u.Permissions)
			}
			continue
		}
		p := w.Permissions
		if u.Permissions == nil || u.Permissions.Publish == nil || u.Permissions.Subscribe == nil {
			t.Errorf("%s: user %s has no publish and subscribe permissions", where, u.Username)
			continue
		}
		pub, sub := u.Permissions.Publish, u.Permissions.Subscribe
		if !slices.Equal(sortedCopy(pub.Allow), sortedCopy(p.Publish)) || len(pub.Deny) > 0 {
			t.Errorf("%s: user %s publish allow %q deny %q, want allow %q (topology.Topology.Accounts)", where, u.Username, pub.Allow, pub.Deny, p.Publish)
		}
		if !slices.Equal(sub.Allow, []string{w.Inbox + ".>"}) || len(sub.Deny) > 0 {
			t.Errorf("%s: user %s may subscribe to %q deny %q, want only its own inbox %s.>", where, u.Username, sub.Allow, sub.Deny, w.Inbox)
		}
	}
	if want := deployUserNames(t); !slices.Equal(sortedCopy(got), want) {
		t.Errorf("%s: users %q, want %q", where, sortedCopy(got), want)
	}
}

// TestNATSAuthConfIsGenerated keeps the users of both NATS configs equal to
// the topology (make generate writes them).
func TestNATSAuthConfIsGenerated(t *testing.T) {
	outs, err := generate.AuthConf()
	checkGenerated(t, outs, err)
}

func TestComposeNATSConfig(t *testing.T) {
	c := compose(t)
	env := c.service(t, "nats").Environment
	opts := composeNATS(t)
	passwords := map[string]string{}
	for _, u := range deployUserNames(t) {
		passwords[u] = env[generate.NATSPasswordVar(u)]
	}
	checkUsers(t, "deploy/nats/nats.conf", opts.Users, passwords)
	if !opts.JetStream {
		t.Error("JetStream is off")
	}
	if src := c.service(t, "nats").mounts()["/data"]; !strings.HasPrefix(opts.StoreDir, "/data/") || src == "" {
		t.Errorf("JetStream store_dir %q is not on the /data volume (mounts %v)", opts.StoreDir, c.service(t, "nats").Volumes)
	}
	if int(opts.MaxPayload) < schemas.MaxPayloadBytes {
		t.Errorf("max_payload %d is below schemas.MaxPayloadBytes (%d)", opts.MaxPayload, schemas.MaxPayloadBytes)
	}
	ports := c.service(t, "nats").containerPorts()
	if !ports[opts.Port] || !ports[opts.HTTPPort] {
		t.Errorf("client port %d and monitoring port %d are not both published (%v)", opts.Port, opts.HTTPPort, c.service(t, "nats").Ports)
	}
	hc := c.service(t, "nats").Healthcheck
	if hc == nil || !strings.Contains(strings.Join(hc.Test, " "), "127.0.0.1:"+strconv.Itoa(opts.HTTPPort)+"/healthz") {
		t.Errorf("nats healthcheck %+v does not probe /healthz on the monitoring port %d", hc, opts.HTTPPort)
	}
}

// The compose NATS config, run: every role logs in with its compose
// password, and the platform cannot publish a decision or read another
// user's inbox.
func TestComposeNATSConfigEnforced(t *testing.T) {
	c := compose(t)
	env := c.service(t, "nats").Environment
	opts := composeNATS(t)
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.StoreDir = t.TempDir()
	opts.NoLog, opts.NoSigs = true, true
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server from deploy/nats/nats.conf did not start")
	}
	users := deployUsers(t)
	connect := func(role, password string) (*nats.Conn, error) {
		inbox := schemas.InboxPrefix(role)
		if u, ok := users[role]; ok && u.Inbox != "" {
			inbox = u.Inbox
		}
		return nats.Connect(srv.ClientURL(), nats.UserInfo(role, password), nats.CustomInboxPrefix(inbox), nats.NoReconnect(),
			// Violations are read from LastError; do not print them.
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	}
	for _, role := range deployUserNames(t) {
		nc, err := connect(role, env[generate.NATSPasswordVar(role)])
		if err != nil {
			t.Errorf("%s cannot log in with its compose password: %v", role, err)
			continue
		}
		nc.Close()
	}
	if nc, err := connect(schemas.RolePlatform, "wrong"); err == nil {
		nc.Close()
		t.Error("platform logged in with a wrong password")
	}

	nc, err := connect(schemas.RolePlatform, env[generate.NATSPasswordVar(schemas.RolePlatform)])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	subjects := schemas.NewSubjects("")
	violation := func(what string, do func() error) {
		t.Helper()
		if err := do(); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := nc.LastError(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Errorf("platform %s: got %v, want a permissions violation", what, err)
		}
	}
	violation("publishing a decision", func() error { return nc.Publish(subjects.Decision("model.deploy"), []byte("{}")) })
	violation("reading authn's inbox", func() error {
		_, err := nc.SubscribeSync(schemas.InboxPrefix(schemas.RoleAuthn) + ".x")
		return err
	})

	tenantsEnforced(t, func(user string) (*nats.Conn, error) { return connect(user, env[generate.NATSPasswordVar(user)]) })
}

// tenantsEnforced runs the two example tenants against a server of a
// deploy config: platform-a's request reaches the request stream under its
// tenant subject with its JetStream ack, a reply on its inbox reaches it
// and not platform-b, and it can neither read platform-b's inbox nor reach
// AIGOV's JetStream.
func tenantsEnforced(t *testing.T, connect func(user string) (*nats.Conn, error)) {
	t.Helper()
	topo := generate.DeployTopology()
	a, b := topo.Tenants[0], topo.Tenants[1]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn := func(user string) *nats.Conn {
		nc, err := connect(user)
		if err != nil {
			t.Fatalf("%s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		return nc
	}
	prov, _ := jetstream.New(conn(schemas.RoleProvisioner))
	if err := topo.Provision(ctx, prov); err != nil {
		t.Fatalf("provision as the provisioner: %v", err)
	}
	ac, bc, authn := conn(a), conn(b), conn(schemas.RoleAuthn)
	ajs, _ := jetstream.New(ac)
	ack, err := ajs.Publish(ctx, topo.Subjects.Request("model.deploy"), []byte(`{}`))
	if err != nil || ack.Stream != topo.StreamRequests() {
		t.Fatalf("%s request: ack %+v, %v; want one from %s", a, ack, err, topo.StreamRequests())
	}
	admin, _ := jetstream.New(conn(generate.AdminUser))
	st, err := admin.Stream(ctx, topo.StreamRequests())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.GetLastMsgForSubject(ctx, topo.Subjects.TenantRequest(a, "model.deploy")); err != nil {
		t.Errorf("%s's request is not stored under its tenant subject: %v", a, err)
	}
	aSub, _ := ac.SubscribeSync(schemas.TenantInboxPrefix(a) + ".>")
	bSub, _ := bc.SubscribeSync(schemas.TenantInboxPrefix(b) + ".>")
	for _, nc := range []*nats.Conn{ac, bc} {
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if err := authn.Publish(schemas.TenantInboxPrefix(a)+".c.1", []byte("a's decision")); err != nil {
		t.Fatal(err)
	}
	if m, err := aSub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "a's decision" {
		t.Errorf("%s's decision did not reach it: %v", a, err)
	}
	if m, err := bSub.NextMsg(200 * time.Millisecond); err == nil {
		t.Errorf("%s received %q, meant for %s", b, m.Data, a)
	}
	if _, err := ac.SubscribeSync(schemas.TenantInboxPrefix(b) + ".>"); err != nil {
		t.Fatal(err)
	}
	if err := ac.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := ac.LastError(); err == nil || !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
		t.Errorf("%s reading %s's inbox: got %v, want a permissions violation", a, b, err)
	}
	sctx, scancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer scancel()
	if _, err := ajs.Stream(sctx, topo.StreamDecisions()); err == nil {
		t.Errorf("%s read the decisions stream's info", a)
	}
}
