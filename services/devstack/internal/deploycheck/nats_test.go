package deploycheck

import (
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
)

// update rewrites the generated deploy files instead of failing on a
// difference.
var update = flag.Bool("update", false, "rewrite the generated deploy files (NATS users, policies ConfigMap, replicated schema)")

// adminUser may do anything (setup and inspection), like natsdev.AdminUser.
const adminUser = "admin"

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

// checkUsers compares a config's users with schemas.Topology.Permissions:
// one user per role with exactly the role's publish and subscribe allow
// lists (and no deny lists), plus an unrestricted admin, and nobody else.
// passwords, when not nil, are the expected password of each user.
func checkUsers(t *testing.T, where string, users []*server.User, passwords map[string]string) {
	t.Helper()
	topo := schemas.NewTopology("")
	want := append(schemas.Roles(), adminUser)
	var got []string
	for _, u := range users {
		got = append(got, u.Username)
		if passwords != nil && (u.Password == "" || u.Password != passwords[u.Username]) {
			t.Errorf("%s: user %s has password %q, want %q", where, u.Username, u.Password, passwords[u.Username])
		}
		if u.Username == adminUser {
			if u.Permissions != nil {
				t.Errorf("%s: admin has permissions %+v, want none (unrestricted)", where, u.Permissions)
			}
			continue
		}
		p, err := topo.Permissions(u.Username)
		if err != nil {
			t.Errorf("%s: user %q is not an aigov role: %v", where, u.Username, err)
			continue
		}
		if u.Permissions == nil || u.Permissions.Publish == nil || u.Permissions.Subscribe == nil {
			t.Errorf("%s: user %s has no publish and subscribe permissions", where, u.Username)
			continue
		}
		pub, sub := u.Permissions.Publish, u.Permissions.Subscribe
		if !slices.Equal(sortedCopy(pub.Allow), sortedCopy(p.Publish)) || len(pub.Deny) > 0 {
			t.Errorf("%s: user %s publish allow %q deny %q, want allow %q (schemas.Topology.Permissions)", where, u.Username, pub.Allow, pub.Deny, p.Publish)
		}
		if !slices.Equal(sortedCopy(sub.Allow), sortedCopy(p.Subscribe)) || len(sub.Deny) > 0 {
			t.Errorf("%s: user %s subscribe allow %q deny %q, want allow %q", where, u.Username, sub.Allow, sub.Deny, p.Subscribe)
		}
		if !slices.Equal(sub.Allow, []string{schemas.InboxPrefix(u.Username) + ".>"}) {
			t.Errorf("%s: user %s may subscribe to %q, want only its own inbox %s.>", where, u.Username, sub.Allow, schemas.InboxPrefix(u.Username))
		}
	}
	if !slices.Equal(sortedCopy(got), sortedCopy(want)) {
		t.Errorf("%s: users %q, want %q", where, sortedCopy(got), sortedCopy(want))
	}
}

// authConfFiles hold the NATS users of docker-compose.yml and of the
// Kubernetes cluster; both are generated from schemas.Topology.Permissions.
var authConfFiles = []string{"deploy/nats/auth.conf", "deploy/k8s/nats/auth.conf"}

// renderAuthConf writes the NATS authorization block for every role of the
// topology, passwords read from $NATS_<ROLE>_PASSWORD.
func renderAuthConf() string {
	topo := schemas.NewTopology("")
	var b strings.Builder
	b.WriteString(`# GENERATED from schemas.Topology.Permissions by
# services/devstack/internal/deploycheck (TestNATSAuthConfIsGenerated); do not
# edit. After a change of the topology's roles or permissions, regenerate:
#   cd services/devstack && go test ./internal/deploycheck -run TestNATSAuthConfIsGenerated -update
#
# One NATS user per aigov role with exactly the role's permissions, plus an
# admin for setup and inspection that no service uses. Every user may
# subscribe only to its own inbox (_INBOX.<role>.>), so no one reads another's
# replies; the platform may publish requests and nothing else.
#
# Subjects are quoted (unquoted, $JS would be read as a variable); passwords
# are variables, resolved from the server's environment.
authorization {
  users: [
`)
	fmt.Fprintf(&b, "    {user: %s, password: $%s}\n", adminUser, natsPasswordVar(adminUser))
	quote := func(ss []string) string {
		q := make([]string, len(ss))
		for i, s := range ss {
			q[i] = strconv.Quote(s)
		}
		return strings.Join(q, ", ")
	}
	for _, role := range schemas.Roles() {
		p, err := topo.Permissions(role)
		if err != nil {
			panic(err)
		}
		fmt.Fprintf(&b, "    {\n      user: %s, password: $%s\n      permissions: {\n", role, natsPasswordVar(role))
		fmt.Fprintf(&b, "        publish: {allow: [%s]}\n", quote(p.Publish))
		fmt.Fprintf(&b, "        subscribe: {allow: [%s]}\n      }\n    }\n", quote(p.Subscribe))
	}
	b.WriteString("  ]\n}\n")
	return b.String()
}

// TestNATSAuthConfIsGenerated keeps the users of both NATS configs equal to
// the topology; -update rewrites them.
func TestNATSAuthConfIsGenerated(t *testing.T) {
	want := renderAuthConf()
	for _, rel := range authConfFiles {
		if *update {
			if err := os.WriteFile(repoPath(t, rel), []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if got := string(readFile(t, rel)); got != want {
			t.Errorf("%s differs from schemas.Topology.Permissions; regenerate it with\n  cd services/devstack && go test ./internal/deploycheck -run TestNATSAuthConfIsGenerated -update", rel)
		}
	}
}

func TestComposeNATSConfig(t *testing.T) {
	c := compose(t)
	env := c.service(t, "nats").Environment
	opts := composeNATS(t)
	passwords := map[string]string{}
	for _, u := range append(schemas.Roles(), adminUser) {
		passwords[u] = env[natsPasswordVar(u)]
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
	connect := func(role, password string) (*nats.Conn, error) {
		return nats.Connect(srv.ClientURL(), nats.UserInfo(role, password), nats.CustomInboxPrefix(schemas.InboxPrefix(role)), nats.NoReconnect(),
			// Violations are read from LastError; do not print them.
			nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {}))
	}
	for _, role := range append(schemas.Roles(), adminUser) {
		nc, err := connect(role, env[natsPasswordVar(role)])
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

	nc, err := connect(schemas.RolePlatform, env[natsPasswordVar(schemas.RolePlatform)])
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
}
