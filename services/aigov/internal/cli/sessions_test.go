package cli_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/aigov/internal/cli"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// killBus is an embedded JetStream with the topology and two of alice's
// sessions, one of bob's and a job lease in alice's first session, as the
// reaper records them.
type killBus struct {
	srv            *natsdev.Server
	js             jetstream.JetStream
	topo           topology.Topology
	alice1, alice2 string
	bob            string
	sessions, revs jetstream.KeyValue
	leases         jetstream.KeyValue
	flags          []string
}

func newKillBus(t *testing.T) *killBus {
	t.Helper()
	srv := natsdev.StartT(t, natsdev.Options{})
	_, js := srv.ConnectT(t, natsdev.AdminUser)
	ctx := context.Background()
	b := &killBus{srv: srv, js: js, topo: topology.New("")}
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	b.sessions, _ = js.KeyValue(ctx, b.topo.BucketSessions())
	b.revs, _ = js.KeyValue(ctx, b.topo.BucketRevocations())
	b.leases, _ = js.KeyValue(ctx, b.topo.BucketLeases())
	put := func(sub, sid string) string {
		key := schemas.SessionKey(schemas.Principal{Issuer: "https://idp.test", SessionID: sid, Subject: sub})
		at := time.Date(2026, 11, 25, 9, 0, 0, 0, time.UTC)
		v, _ := json.Marshal(killswitch.Session{SessionKey: key, Issuer: "https://idp.test", Subject: sub,
			PrincipalID: schemas.PrincipalID("https://idp.test", sub), SessionID: sid, FirstSeen: at, LastSeen: at, TokenCount: 3})
		if _, err := b.sessions.Create(ctx, key, v); err != nil {
			t.Fatal(err)
		}
		return key
	}
	b.alice1, b.alice2, b.bob = put("alice", "sid-a1"), put("alice", "sid-a2"), put("bob", "sid-b1")
	lv, _ := json.Marshal(killswitch.Lease{LeaseID: "lease-1", SessionKey: b.alice1, PrincipalID: schemas.PrincipalID("https://idp.test", "alice"),
		Issuer: "https://idp.test", Subject: "alice", Resource: schemas.Resource{Type: "Model", ID: "fraud-detector"},
		StartedAt: time.Now(), Deadline: time.Now().Add(time.Hour), MaxDeadline: time.Now().Add(4 * time.Hour), Heartbeats: 2})
	if _, err := b.leases.Create(ctx, schemas.LeaseRevocationKey("lease-1"), lv); err != nil {
		t.Fatal(err)
	}
	// The commands connect as the reaper's user, as operators run them.
	b.flags = []string{"--nats", srv.URL(), "--tls-ca", srv.CAFile(), "--user", schemas.RoleReaper, "--password", srv.Password(schemas.RoleReaper), "--timeout", "10s"}
	return b
}

func (b *killBus) run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code := cli.Run(context.Background(), append(args, b.flags...), &out, &errOut, func(string) (string, bool) { return "", false })
	return code, out.String(), errOut.String()
}

func (b *killBus) revocation(t *testing.T, key string) (schemas.Revocation, bool) {
	t.Helper()
	r, ok, err := natsdev.GetJSON[schemas.Revocation](context.Background(), b.revs, key)
	if err != nil {
		t.Fatal(err)
	}
	return r, ok
}

// `aigov sessions list` prints the live sessions as a table or JSON.
func TestSessionsList(t *testing.T) {
	t.Parallel()
	b := newKillBus(t)
	code, out, errOut := b.run(t, "sessions", "list", "--json")
	if code != cli.ExitAllow {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var list []killswitch.Session
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("output %q: %v", out, err)
	}
	got := map[string]string{}
	for _, s := range list {
		got[s.SessionKey] = s.Subject
	}
	if len(list) != 3 || got[b.alice1] != "alice" || got[b.alice2] != "alice" || got[b.bob] != "bob" {
		t.Errorf("listed %+v", list)
	}
	code, out, _ = b.run(t, "sessions", "list")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != cli.ExitAllow || len(lines) != 4 || !strings.HasPrefix(lines[0], "SESSION") || !strings.Contains(out, b.bob) ||
		!strings.Contains(out, schemas.PrincipalID("https://idp.test", "bob")) {
		t.Errorf("table (exit %d):\n%s", code, out)
	}
	if code, _, _ := b.run(t, "sessions", "list", "--limit", "1", "--json"); code != cli.ExitAllow {
		t.Errorf("list --limit: exit %d", code)
	}
}

// `aigov sessions revoke` ends exactly the sessions selected, with who and
// why, ends their job leases and announces each on aigov.session.revoked.
func TestSessionsRevoke(t *testing.T) {
	t.Parallel()
	b := newKillBus(t)
	ctx := context.Background()
	code, out, errOut := b.run(t, "sessions", "revoke", "--subject", "alice", "--issuer", "https://idp.test", "--reason", "stolen laptop", "--by", "ops-oncall")
	if code != cli.ExitAllow {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, "revoked 2 session(s), 0 already ended, 1 job lease(s) ended") {
		t.Errorf("output %q", out)
	}
	for _, k := range []string{b.alice1, b.alice2} {
		r, ok := b.revocation(t, k)
		if !ok || r.Code != schemas.CodeSessionRevoked || r.By != "ops-oncall" || r.Reason != "stolen laptop" {
			t.Errorf("revocation of %s: %+v (found %v)", k, r, ok)
		}
		if _, err := b.sessions.Get(ctx, k); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("record of revoked session %s still live: %v", k, err)
		}
	}
	if _, ok := b.revocation(t, b.bob); ok {
		t.Error("bob's session revoked by a selector naming alice")
	}
	if r, ok := b.revocation(t, schemas.LeaseRevocationKey("lease-1")); !ok || r.Code != schemas.CodeLeaseExpired {
		t.Errorf("lease of the revoked session: %+v (found %v)", r, ok)
	}
	st, _ := b.js.Stream(ctx, b.topo.StreamSessions())
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(b.topo.Subjects.All(schemas.KindSession)))
	if err != nil {
		t.Fatal(err)
	}
	if n := info.State.Subjects[b.topo.Subjects.Session(schemas.SessionRevoked)]; n != 2 {
		t.Errorf("%d session.revoked events, want 2", n)
	}
	if n := info.State.Subjects[b.topo.Subjects.Session(schemas.SessionLeaseExpired)]; n != 1 {
		t.Errorf("%d lease_expired events, want 1", n)
	}

	// By session key, as JSON.
	code, out, errOut = b.run(t, "sessions", "revoke", "--session", b.bob, "--reason", "left the company", "--json")
	var res killswitch.Result
	if code != cli.ExitAllow || json.Unmarshal([]byte(out), &res) != nil || len(res.Revoked) != 1 || res.Revoked[0] != b.bob {
		t.Errorf("revoke --session: exit %d out %q err %q", code, out, errOut)
	}
	if code, out, _ := b.run(t, "sessions", "list", "--json"); code != cli.ExitAllow || strings.TrimSpace(out) != "null" && strings.TrimSpace(out) != "[]" {
		t.Errorf("sessions left after revoking all: %s", out)
	}

	// Usage errors: no reason, no selector, unknown subcommand.
	for _, args := range [][]string{
		{"sessions", "revoke", "--subject", "alice"},
		{"sessions", "revoke", "--reason", "x"},
		{"sessions", "purge"},
		{"leases", "show"},
	} {
		if code, _, _ := b.run(t, args...); code != cli.ExitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, cli.ExitUsage)
		}
	}
	// A bad password is an error exit, not a usage one.
	var outBuf, errBuf bytes.Buffer
	if code := cli.Run(ctx, []string{"sessions", "list", "--nats", b.srv.URL(), "--tls-ca", b.srv.CAFile(), "--user", schemas.RoleReaper, "--password", "wrong", "--timeout", "2s"},
		&outBuf, &errBuf, func(string) (string, bool) { return "", false }); code != cli.ExitError {
		t.Errorf("wrong password: exit %d (%s)", code, errBuf.String())
	}
}

// `aigov leases list` prints the live job leases.
func TestLeasesList(t *testing.T) {
	t.Parallel()
	b := newKillBus(t)
	code, out, errOut := b.run(t, "leases", "list", "--json")
	if code != cli.ExitAllow {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	var list []killswitch.Lease
	if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 {
		t.Fatalf("leases %q: %v", out, err)
	}
	if l := list[0]; l.LeaseID != "lease-1" || l.SessionKey != b.alice1 || l.Heartbeats != 2 || l.Resource.ID != "fraud-detector" {
		t.Errorf("lease %+v", l)
	}
	code, out, _ = b.run(t, "leases", "list")
	if code != cli.ExitAllow || !strings.HasPrefix(out, "LEASE") || !strings.Contains(out, "lease-1") {
		t.Errorf("table (exit %d):\n%s", code, out)
	}
}
