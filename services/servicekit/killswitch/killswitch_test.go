package killswitch_test

import (
	"context"
	"encoding/json"
	"errors"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// bus is an embedded JetStream with the topology's role users.
func bus(t testing.TB) (string, topology.Topology) {
	t.Helper()
	topo := topology.New("")
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true}
	for _, role := range schemas.Roles() {
		p, _ := topo.Permissions(role)
		opts.Users = append(opts.Users, &server.User{Username: role, Password: role + "-pw", Permissions: &server.Permissions{
			Publish: &server.SubjectPermission{Allow: p.Publish}, Subscribe: &server.SubjectPermission{Allow: p.Subscribe}}})
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	return srv.ClientURL(), topo
}

func connect(t testing.TB, url, role string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url, nats.UserInfo(role, role+"-pw"), nats.CustomInboxPrefix(schemas.InboxPrefix(role)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	return js
}

func putSession(t testing.TB, kv jetstream.KeyValue, iss, sub, sid string) string {
	t.Helper()
	key := schemas.SessionKey(schemas.Principal{Issuer: iss, SessionID: sid, Subject: sub})
	b, _ := json.Marshal(killswitch.Session{SessionKey: key, Issuer: iss, Subject: sub, PrincipalID: schemas.PrincipalID(iss, sub), SessionID: sid, FirstSeen: time.Now(), LastSeen: time.Now()})
	if _, err := kv.Create(context.Background(), key, b); err != nil {
		t.Fatal(err)
	}
	return key
}

// Revoke by session, by subject and by issuer writes session_revoked for
// exactly the matching sessions, ends their leases, and a second call is
// harmless.
func TestRevokeSelectors(t *testing.T) {
	t.Parallel()
	url, topo := bus(t)
	ctx := context.Background()
	if err := topo.Provision(ctx, connect(t, url, schemas.RoleProvisioner)); err != nil {
		t.Fatal(err)
	}
	js := connect(t, url, schemas.RoleReaper)
	sw, err := killswitch.New(ctx, js, topo, nil, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	sessions, _ := js.KeyValue(ctx, topo.BucketSessions())
	revs, _ := js.KeyValue(ctx, topo.BucketRevocations())
	a1 := putSession(t, sessions, "https://a", "alice", "s1")
	a2 := putSession(t, sessions, "https://a", "alice", "s2")
	b1 := putSession(t, sessions, "https://a", "bob", "s3")
	c1 := putSession(t, sessions, "https://c", "carol", "s4")
	leases, _ := js.KeyValue(ctx, topo.BucketLeases())
	lb, _ := json.Marshal(killswitch.Lease{LeaseID: "lease-a1", SessionKey: a1, PrincipalID: "https://a#alice", Issuer: "https://a", Subject: "alice", Deadline: time.Now().Add(time.Hour)})
	if _, err := leases.Create(ctx, schemas.LeaseRevocationKey("lease-a1"), lb); err != nil {
		t.Fatal(err)
	}

	if list, err := sw.Sessions(ctx, 0); err != nil || len(list) != 4 {
		t.Fatalf("Sessions = %d, %v; want 4", len(list), err)
	}
	res, err := sw.Revoke(ctx, killswitch.Selector{Subject: "alice", Issuer: "https://a"}, "ops", "stolen laptop")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(res.Revoked)
	want := []string{a1, a2}
	sort.Strings(want)
	if len(res.Revoked) != 2 || res.Revoked[0] != want[0] || res.Revoked[1] != want[1] || len(res.Leases) != 1 {
		t.Fatalf("revoke by subject = %+v", res)
	}
	for _, k := range []string{a1, a2} {
		e, err := revs.Get(ctx, k)
		if err != nil {
			t.Fatalf("no revocation for %s: %v", k, err)
		}
		var r schemas.Revocation
		_ = json.Unmarshal(e.Value(), &r)
		if r.Code != schemas.CodeSessionRevoked || r.By != "ops" || r.Reason != "stolen laptop" {
			t.Errorf("revocation %+v", r)
		}
	}
	if _, err := revs.Get(ctx, schemas.LeaseRevocationKey("lease-a1")); err != nil {
		t.Errorf("lease of the revoked session not ended: %v", err)
	}
	for _, k := range []string{b1, c1} {
		if _, err := revs.Get(ctx, k); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("session %s revoked by a subject selector that does not match it", k)
		}
	}
	if res, err := sw.Revoke(ctx, killswitch.Selector{Issuer: "https://c"}, "ops", "issuer compromised"); err != nil || len(res.Revoked) != 1 || res.Revoked[0] != c1 {
		t.Errorf("revoke by issuer = %+v, %v", res, err)
	}
	if res, err := sw.Revoke(ctx, killswitch.Selector{SessionKey: b1}, "ops", "done"); err != nil || len(res.Revoked) != 1 {
		t.Errorf("revoke by session = %+v, %v", res, err)
	}
	if _, err := sw.Revoke(ctx, killswitch.Selector{}, "ops", "x"); !errors.Is(err, killswitch.ErrNoSelector) {
		t.Errorf("empty selector: %v", err)
	}
	if list, _ := sw.Sessions(ctx, 0); len(list) != 0 {
		t.Errorf("%d sessions left after revoking all", len(list))
	}
}

// BenchmarkRevokeToDenyTwoReplicas measures how long after Revoke returns
// two other connections (standing in for two authn replicas, which look the
// session up in the revocation bucket on every request) both see it.
// Reported as ms/op (p50 over b.N revocations).
func BenchmarkRevokeToDenyTwoReplicas(b *testing.B) {
	url, topo := bus(b)
	ctx := context.Background()
	if err := topo.Provision(ctx, connect(b, url, schemas.RoleProvisioner)); err != nil {
		b.Fatal(err)
	}
	js := connect(b, url, schemas.RoleReaper)
	sw, _ := killswitch.New(ctx, js, topo, nil, time.Now)
	var replicas []jetstream.KeyValue
	for range 2 {
		kv, err := connect(b, url, schemas.RoleAuthn).KeyValue(ctx, topo.BucketRevocations())
		if err != nil {
			b.Fatal(err)
		}
		replicas = append(replicas, kv)
	}
	var worst time.Duration
	for i := 0; b.Loop(); i++ {
		key := schemas.SessionKey(schemas.Principal{Issuer: "https://bench", SessionID: "sid-" + strconv.Itoa(i)})
		start := time.Now()
		if _, err := sw.Revoke(ctx, killswitch.Selector{SessionKey: key}, "bench", "bench"); err != nil {
			b.Fatal(err)
		}
		for _, kv := range replicas {
			for {
				if _, err := kv.Get(ctx, key); err == nil {
					break
				}
			}
		}
		worst = max(worst, time.Since(start))
	}
	b.ReportMetric(float64(worst.Microseconds())/1000, "worst_ms")
}
