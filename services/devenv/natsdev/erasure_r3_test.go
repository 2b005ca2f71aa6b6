package natsdev_test

import (
	"bytes"
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/personal"
)

// TestSubjectKeyErasureR3 erases a subject key on a 3-node cluster (the
// bucket at R3) and searches every node's store directory, the stream's
// block files and its raft log alike, for the key's raw bytes. The secure
// delete overwrites the stream's copy on every replica at once: asserted
// at once, in make test. The raft log keeps the put's append until the
// stream's raft group snapshots and compacts, which nats-server does on
// its own every compactInterval (2 min) plus a random 0-60 s per stream
// (server/jetstream_cluster.go monitorStream; sooner after 65,536 entries
// or 8 MiB; nothing a client can trigger). With AIGOV_TEST_R3_COMPACTION=1
// (make test-erasure-r3) it waits up to 4 min for the raft logs too,
// reporting how long each node kept the bytes.
func TestSubjectKeyErasureR3(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node cluster")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := natsdev.BuildNode(ctx, root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c, err := natsdev.StartCluster(ctx, natsdev.ClusterOptions{Dir: dir, NodeBin: bin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pids := make([]int, c.Nodes())
		for i := range pids {
			pids[i] = c.Pid(i)
		}
		c.Shutdown()
		for i, pid := range pids {
			if pid != 0 && syscall.Kill(pid, 0) == nil {
				t.Errorf("node %d (pid %d) still runs after Shutdown", i, pid)
			}
		}
	})
	_, js := c.ConnectT(t, natsdev.AdminUser)
	topo := c.Topology()
	kv, err := js.KeyValue(ctx, topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, "KV_"+topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	if info, err := stream.Info(ctx); err != nil || info.Config.Replicas != 3 {
		t.Fatalf("the subject keys' stream: %v, replicas %d, want 3", err, info.Config.Replicas)
	}
	keys := personal.NewSubjectKeys(kv).WithStream(stream)
	erased, id, err := keys.GetOrCreate(ctx, "https://idp.example", "erin-r3")
	if err != nil {
		t.Fatal(err)
	}
	kept, _, err := keys.GetOrCreate(ctx, "https://idp.example", "kim-r3")
	if err != nil {
		t.Fatal(err)
	}
	// where lists the store files holding b, relative to dir.
	where := func(b []byte) []string {
		t.Helper()
		var out []string
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if os.IsNotExist(err) {
					return nil // a block removed while walking
				}
				return err
			}
			if d.IsDir() {
				return nil
			}
			data, err := os.ReadFile(p)
			if os.IsNotExist(err) {
				return nil
			}
			if bytes.Contains(data, b) {
				rel, _ := filepath.Rel(dir, p)
				out = append(out, rel)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		sort.Strings(out)
		return out
	}
	natsdev.WaitFor(t, 30*time.Second, "the key on every node's store", func() bool {
		nodes := map[string]bool{}
		for _, p := range where(erased) {
			nodes[strings.SplitN(p, string(filepath.Separator), 2)[0]] = true
		}
		return len(nodes) >= 3
	})
	t.Logf("before the erasure the key is in: %v", where(erased))

	start := time.Now()
	if err := keys.EraseID(ctx, id); err != nil {
		t.Fatal(err)
	}
	// Followers apply the delete as they apply any entry: within
	// milliseconds, not in the leader's reply.
	notRaft := func() []string {
		var out []string
		for _, p := range where(erased) {
			if !strings.Contains(p, "/_js_/") {
				out = append(out, p)
			}
		}
		return out
	}
	natsdev.WaitFor(t, 10*time.Second, "the key overwritten in every replica's stream store", func() bool { return len(notRaft()) == 0 })
	first := where(erased)
	t.Logf("%v after the secure delete and purge, the key is in no stream store, still in the raft logs: %v", time.Since(start).Round(time.Millisecond), first)
	if os.Getenv("AIGOV_TEST_R3_COMPACTION") == "" {
		t.Logf("the raft logs above keep the key until their compaction (2-3 min); AIGOV_TEST_R3_COMPACTION=1 waits for it")
		return
	}
	seen := map[string]time.Duration{}
	for _, p := range first {
		seen[p] = 0
	}
	deadline := start.Add(4 * time.Minute)
	for {
		left := where(erased)
		now := time.Since(start)
		for p := range seen {
			if seen[p] == 0 && !strings.Contains(strings.Join(left, "\n"), p) {
				seen[p] = now
				t.Logf("gone after %v: %s", now.Round(time.Second), p)
			}
		}
		if len(left) == 0 {
			t.Logf("the erased key's bytes are gone from every node's store after %v", now.Round(time.Second))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %v the erased key's bytes are still in: %v", now.Round(time.Second), left)
		}
		time.Sleep(5 * time.Second)
	}
	if len(where(kept)) == 0 {
		t.Fatal("the other subject's key is gone too: the search finds nothing at all")
	}
}
