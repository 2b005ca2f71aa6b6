package revocation

import (
	"context"
	"encoding/json"
	"errors"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// revEnv is an embedded JetStream with the topology, a revocation set on
// it as the authn user, and the bucket opened as admin to write to.
type revEnv struct {
	set *Set
	kv  jetstream.KeyValue
	reg *prometheus.Registry
}

func startRevocations(t *testing.T, max int, preload ...string) *revEnv {
	return startRevocationsB(t, max, preload...)
}

func startRevocationsB(t testing.TB, max int, preload ...string) *revEnv {
	t.Helper()
	ctx := context.Background()
	srv := natsdev.StartT(t, natsdev.Options{})
	topo := topology.New("")
	nc, js := srv.ConnectT(t, schemas.RoleAuthn)
	// natsdev.Start provisioned the topology (as aigov bus provision does).
	_, ajs := srv.ConnectT(t, natsdev.AdminUser)
	kv, err := ajs.KeyValue(ctx, topo.BucketRevocations())
	if err != nil {
		t.Fatal(err)
	}
	e := &revEnv{kv: kv, reg: prometheus.NewRegistry()}
	for _, k := range preload {
		e.put(t, k, "preloaded")
	}
	if e.set, err = New(Options{JS: js, NC: nc, Bucket: topo.BucketRevocations(), Max: max, MaxSetting: "AIGOV_TEST_REVOCATIONS_MAX",
		MetricPrefix: "aigov_test", Log: zerolog.Nop(), Registry: e.reg}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-e.set.Loaded():
		t.Fatal("the set reports loaded before it ran")
	default:
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); e.set.Run(rctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-e.set.Loaded():
	case <-time.After(10 * time.Second):
		t.Fatal("the revocation set did not load within 10s")
	}
	return e
}

func (e *revEnv) put(t testing.TB, key, reason string) uint64 {
	t.Helper()
	b, _ := json.Marshal(schemas.Revocation{SessionKey: key, Code: schemas.CodeSessionRevoked, Reason: reason, At: time.Now()})
	rev, err := e.kv.Put(context.Background(), key, b)
	if err != nil {
		t.Fatal(err)
	}
	return rev
}

// revoked looks key up and reports its reason, "" when not revoked.
func (e *revEnv) revoked(t *testing.T, key string) string {
	t.Helper()
	recs, err := e.set.Lookup(context.Background(), key)
	if err != nil {
		t.Fatal(err)
	}
	if recs[0] == nil {
		return ""
	}
	return recs[0].Reason
}

// TestRevocationSetFollowsTheBucket: initial values, puts, deletes and
// purges are all seen by the very next lookup after the write returned,
// with no wait, and answered from memory.
func TestRevocationSetFollowsTheBucket(t *testing.T) {
	t.Parallel()
	e := startRevocations(t, 100, "pre-1", "pre-2")
	if got := e.revoked(t, "pre-1"); got != "preloaded" {
		t.Fatalf("initial value: %q", got)
	}
	for i := range 200 {
		key := "k" + string(rune('a'+i%26)) + time.Now().Format("150405.000000000")
		if got := e.revoked(t, key); got != "" {
			t.Fatalf("%s revoked before the put: %q", key, got)
		}
		rev := e.put(t, key, "r")
		if got := e.revoked(t, key); got != "r" {
			t.Fatalf("iteration %d: a revocation put just before the lookup was missed", i)
		}
		if last, _ := e.set.LastRevision(); last < rev {
			t.Fatalf("lookup answered before the set applied revision %d (at %d)", rev, last)
		}
		switch i % 2 {
		case 0:
			err := e.kv.Delete(context.Background(), key)
			if err != nil {
				t.Fatal(err)
			}
		default:
			if err := e.kv.Purge(context.Background(), key); err != nil {
				t.Fatal(err)
			}
		}
		if got := e.revoked(t, key); got != "" {
			t.Fatalf("iteration %d: still revoked after delete/purge", i)
		}
	}
	if n := testutil.ToFloat64(e.set.lookupsKV); n != 0 {
		t.Fatalf("%v lookups read the bucket; the set should have answered all", n)
	}
	if n := testutil.ToFloat64(e.set.lookupsSet); n < 600 {
		t.Fatalf("set answered %v lookups", n)
	}
	if n := e.set.Len(); n != 2 {
		t.Fatalf("set holds %d entries; want the 2 preloaded", n)
	}
}

// TestRevocationSetOverflowFailsClosed: a bucket with more keys than the
// limit never makes a lookup say "not revoked" for a revoked key: the set
// lets go of its map and lookups read the bucket.
func TestRevocationSetOverflowFailsClosed(t *testing.T) {
	t.Parallel()
	// Over the limit at load: Loaded still ends (readiness), lookups read KV.
	e := startRevocations(t, 2, "a", "b", "c")
	if got := e.revoked(t, "c"); got != "preloaded" {
		t.Fatalf("over the limit at load: %q", got)
	}
	if testutil.ToFloat64(e.set.overflowsCt) < 1 || testutil.ToFloat64(e.set.lookupsKV) < 1 || e.set.Len() != 0 {
		t.Fatalf("overflows %v, kv lookups %v, entries %d", testutil.ToFloat64(e.set.overflowsCt), testutil.ToFloat64(e.set.lookupsKV), e.set.Len())
	}
	// Under the limit at load, over it by an update.
	e = startRevocations(t, 2, "a")
	e.put(t, "b", "r")
	e.put(t, "c", "r")
	e.put(t, "d", "r")
	for _, k := range []string{"a", "b", "c", "d"} {
		if e.revoked(t, k) == "" {
			t.Fatalf("%s: not revoked after the set overflowed", k)
		}
	}
	if e.revoked(t, "e") != "" {
		t.Fatal("an absent key is revoked")
	}
}

// The benchmark's set is sized and loaded as authn's and policy's are by
// default (AIGOV_AUTHN_REVOCATIONS_MAX, AIGOV_AUTHN_WORKERS).
const (
	benchMax     = 500000
	benchWorkers = 32
)

// BenchmarkRevocationLookup measures the revocation check authn does on
// every request, cache hit or miss, on embedded JetStream (file storage),
// for a session that is not revoked, with 1,000 other keys in the bucket:
//   - kv-get: a KV Get per request (what authn did before the set);
//   - set: one request at a time through the set (a freshness barrier
//     round trip each, then a map read);
//   - set-parallel: 32 requests at once (the authn worker count), which
//     share barriers.
func BenchmarkRevocationLookup(b *testing.B) {
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = schemas.SessionKey(schemas.Principal{Issuer: "https://idp.example", SessionID: "sid-" + strconv.Itoa(i), Subject: "alice"})
	}
	e := startRevocationsB(b, benchMax, keys...)
	ctx := context.Background()
	key := schemas.SessionKey(schemas.Principal{Issuer: "https://idp.example", SessionID: "not-revoked", Subject: "alice"})
	b.Run("kv-get", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := e.kv.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
				b.Fatal(err)
			}
		}
	})
	lookup := func(b *testing.B) {
		recs, err := e.set.Lookup(ctx, key, "")
		if err != nil || recs[0] != nil {
			b.Fatal(err, recs[0])
		}
	}
	b.Run("set", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			lookup(b)
		}
	})
	b.Run("set-parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.SetParallelism(benchWorkers / runtime.GOMAXPROCS(0))
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				lookup(b)
			}
		})
	})
	if testutil.ToFloat64(e.set.lookupsKV) != 0 {
		b.Fatal("the set fell back to the bucket")
	}
}
