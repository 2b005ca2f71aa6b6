package sessions_test

import (
	"context"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit"
)

// kvOps counts the KV operations the reaper makes, by operation and
// bucket: reads (get) and writes (create, update, put, delete, and the
// compare-and-set publishes kvttl makes on $KV subjects). It wraps the
// reaper's real JetStream context on a real server; nothing is faked.
type kvOps struct {
	mu sync.Mutex
	n  map[string]int
}

func (o *kvOps) add(op string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.n[op]++
}

// take returns the counts since the last take and resets them.
func (o *kvOps) take() map[string]int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := o.n
	o.n = map[string]int{}
	return n
}

type countingJS struct {
	jetstream.JetStream
	ops *kvOps
}

func (c countingJS) KeyValue(ctx context.Context, bucket string) (jetstream.KeyValue, error) {
	kv, err := c.JetStream.KeyValue(ctx, bucket)
	if err != nil {
		return nil, err
	}
	return countingKV{KeyValue: kv, ops: c.ops}, nil
}

func (c countingJS) PublishMsg(ctx context.Context, m *nats.Msg, opts ...jetstream.PublishOpt) (*jetstream.PubAck, error) {
	if rest, ok := strings.CutPrefix(m.Subject, "$KV."); ok {
		c.ops.add("write " + strings.SplitN(rest, ".", 2)[0])
	}
	return c.JetStream.PublishMsg(ctx, m, opts...)
}

type countingKV struct {
	jetstream.KeyValue
	ops *kvOps
}

func (k countingKV) Get(ctx context.Context, key string) (jetstream.KeyValueEntry, error) {
	k.ops.add("get " + k.Bucket())
	return k.KeyValue.Get(ctx, key)
}

func (k countingKV) GetRevision(ctx context.Context, key string, rev uint64) (jetstream.KeyValueEntry, error) {
	k.ops.add("get " + k.Bucket())
	return k.KeyValue.GetRevision(ctx, key, rev)
}

func (k countingKV) Create(ctx context.Context, key string, v []byte, opts ...jetstream.KVCreateOpt) (uint64, error) {
	k.ops.add("write " + k.Bucket())
	return k.KeyValue.Create(ctx, key, v, opts...)
}

func (k countingKV) Update(ctx context.Context, key string, v []byte, rev uint64) (uint64, error) {
	k.ops.add("write " + k.Bucket())
	return k.KeyValue.Update(ctx, key, v, rev)
}

func (k countingKV) Put(ctx context.Context, key string, v []byte) (uint64, error) {
	k.ops.add("write " + k.Bucket())
	return k.KeyValue.Put(ctx, key, v)
}

func (k countingKV) Delete(ctx context.Context, key string, opts ...jetstream.KVDeleteOpt) error {
	k.ops.add("write " + k.Bucket())
	return k.KeyValue.Delete(ctx, key, opts...)
}

// No KV round trip per event (issue 12 item 2): once a session is known,
// its verified requests are tracked from memory. Requests of a known token
// within the touch granularity make no KV operation at all, neither a read
// of the session nor of its revocation; a new token or a stale last_seen
// makes exactly one write (the compare-and-set update) and no read.
func TestNoKVRoundTripPerEvent(t *testing.T) {
	t.Parallel()
	ops := &kvOps{n: map[string]int{}}
	cfg := testConfig()
	cfg.TouchGranularity = time.Second
	h := newHarnessJS(t, cfg, func(js jetstream.JetStream) jetstream.JetStream { return countingJS{JetStream: js, ops: ops} })
	sessionsBucket, revocationsBucket := h.topo.BucketSessions(), h.topo.BucketRevocations()
	auth := t0
	p := principal("alice", "sid-kvops", &auth)

	// The first request starts the session: the bucket path (a new
	// session is read from the buckets, then created).
	h.track(verified("req-0", "token-1", p))
	if got := ops.take(); got["write "+sessionsBucket] != 1 {
		t.Fatalf("start: %v, want one create of the session", got)
	}

	const n = 200
	for i := range n {
		h.track(verified("req-hot-"+strconv.Itoa(i), "token-1", p))
	}
	if got := ops.take(); len(got) != 0 {
		t.Errorf("%d requests of a known token within the granularity made KV operations %v, want none", n, got)
	}

	// A new token: one write, no read.
	h.track(verified("req-new-token", "token-2", p))
	if got := ops.take(); got["write "+sessionsBucket] != 1 || got["get "+sessionsBucket] != 0 || got["get "+revocationsBucket] != 0 || len(got) != 1 {
		t.Errorf("a new token: %v, want exactly one write of the session", got)
	}
	// last_seen older than the granularity: one write, no read; then
	// coalesced again.
	h.clock.Set(1500 * time.Millisecond)
	h.track(verified("req-later", "token-1", p))
	h.track(verified("req-later-2", "token-1", p))
	if got := ops.take(); got["write "+sessionsBucket] != 1 || len(got) != 1 {
		t.Errorf("a request past the granularity: %v, want exactly one write of the session", got)
	}
	rec, _ := h.record(schemas.SessionKey(p))
	if !rec.LastSeen.Equal(t0.Add(1500*time.Millisecond)) || rec.LastTokenFingerprint != schemas.Fingerprint("token-1") || len(rec.TokenFingerprints) != 2 {
		t.Errorf("record after the writes: %+v", rec)
	}
	if got := metric(t, h.reg, "aigov_reaper_session_lookups_total", "via", "memory"); got != n+3 {
		t.Errorf("requests tracked from memory: %v, want %d", got, n+3)
	}
}

// Past AIGOV_REAPER_SESSIONS_MAX the in-memory view is dropped and every
// request reads its session from the bucket: slower, never wrong.
func TestSessionViewOverflowFallsBackToTheBucket(t *testing.T) {
	t.Parallel()
	ops := &kvOps{n: map[string]int{}}
	cfg := testConfig()
	cfg.TouchGranularity = time.Second
	cfg.SessionsMax = 2
	h := newHarnessJS(t, cfg, func(js jetstream.JetStream) jetstream.JetStream { return countingJS{JetStream: js, ops: ops} })
	auth := t0
	for _, who := range []string{"alice", "bob", "carol"} {
		h.track(verified("req-"+who, "token-"+who, principal(who, "sid-"+who, &auth)))
	}
	deadline := time.Now().Add(10 * time.Second)
	for metric(t, h.reg, "aigov_reaper_session_cache_overflows_total") < 1 {
		if time.Now().After(deadline) {
			t.Fatal("the view did not overflow with 3 sessions and a maximum of 2")
		}
		time.Sleep(20 * time.Millisecond)
	}
	ops.take()
	p := principal("alice", "sid-alice", &auth)
	h.track(verified("req-alice-2", "token-alice-2", p))
	if got := ops.take(); got["get "+h.topo.BucketSessions()] != 1 || got["write "+h.topo.BucketSessions()] != 1 {
		t.Errorf("a request with the view overflowed: %v, want one read and one write of the session", got)
	}
	if rec, _ := h.record(schemas.SessionKey(p)); rec.LastTokenFingerprint != schemas.Fingerprint("token-alice-2") {
		t.Errorf("record not updated through the bucket: %+v", rec)
	}
	if got := metric(t, h.reg, "aigov_reaper_session_cache_entries"); got != 0 {
		t.Errorf("entries held after the overflow: %v, want 0", got)
	}
}

// Two replicas, each with its own in-memory view, share the consumer and
// track one session's requests concurrently, each a new token (so each
// writes): compare-and-set on the revisions held in memory loses none. A
// replica whose view is behind conflicts, reloads from the bucket and
// retries.
func TestReplicasWithViewsLoseNoWrite(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	cfg.Workers = 4
	h := newHarness(t, cfg)
	js := h.connectReaper()
	second, reg := h.newReaper(js)
	cons, err := h.topo.Bind(h.ctx, js, schemas.ConsumerReaper)
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 2)
	go func() { done <- second.RunViews(runCtx) }()
	if err := second.ViewsLoaded(h.ctx); err != nil {
		t.Fatal(err)
	}
	runner := servicekit.NewRunner(schemas.ConsumerReaper, zerolog.Nop(), reg, cfg.Workers)
	go func() { done <- runner.Run(runCtx, cons, second.Track) }()
	t.Cleanup(func() {
		stop()
		for range 2 {
			if err := <-done; err != nil {
				t.Errorf("second replica: %v", err)
			}
		}
	})

	auth := t0
	p := principal("frank", "sid-frank", &auth)
	h.track(verified("req-first", "token-first", p)) // both views learn the session
	const n = 60
	var last uint64
	for i := range n {
		last = h.publishVerified(verified("req-"+strconv.Itoa(i), "token-"+strconv.Itoa(i), p))
	}
	h.waitHandled(last)
	rec, ok := h.record(schemas.SessionKey(p))
	if !ok {
		t.Fatal("no session record")
	}
	if rec.TokenCount != n+1 {
		t.Errorf("token_count %d, want %d: a write was lost", rec.TokenCount, n+1)
	}
	if got := len(h.sessionEvents(schemas.TypeSessionTokenSeen)); got != n {
		t.Errorf("%d token_issued events, want %d", got, n)
	}
	mem := metric(t, h.reg, "aigov_reaper_session_lookups_total", "via", "memory") + metric(t, reg, "aigov_reaper_session_lookups_total", "via", "memory")
	if mem == 0 {
		t.Error("no request was tracked from memory")
	}
	t.Logf("write conflicts retried: %v", metric(t, h.reg, "aigov_reaper_session_write_conflicts_total")+metric(t, reg, "aigov_reaper_session_write_conflicts_total"))
}
