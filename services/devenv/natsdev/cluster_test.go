package natsdev_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

func startCluster(t *testing.T) *natsdev.Cluster {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a 3-node cluster of processes")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	bin, err := natsdev.BuildNode(ctx, root, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c, err := natsdev.StartCluster(ctx, natsdev.ClusterOptions{Dir: t.TempDir(), NodeBin: bin})
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
	return c
}

// TestClusterSurvivesNodeKill forms a 3-node cluster with the topology
// provisioned at R3, publishes to an R3 stream while one node (the
// stream's leader) is SIGKILLed and later restarted on its store, and
// checks that every acknowledged message is in the stream.
func TestClusterSurvivesNodeKill(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nc, js := c.ConnectT(t, natsdev.AdminUser, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	topo := c.Topology()
	info, err := js.Stream(ctx, topo.StreamRequests())
	if err != nil {
		t.Fatal(err)
	}
	if r := info.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("requests stream has %d replicas, want 3", r)
	}

	s, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "CHAOS", Subjects: []string{"chaos.>"}, Replicas: 3, Storage: jetstream.FileStorage})
	if err != nil {
		t.Fatal(err)
	}
	leader, err := c.StreamLeader(ctx, js, "CHAOS")
	if err != nil {
		t.Fatal(err)
	}
	acked := map[string]bool{}
	const n = 600
	for i := range n {
		if i == n/3 {
			if err := c.Kill(leader); err != nil {
				t.Fatal(err)
			}
		}
		if i == 2*n/3 {
			if err := c.Restart(ctx, leader); err != nil {
				t.Fatal(err)
			}
		}
		id := fmt.Sprintf("m-%04d", i)
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.Publish(pctx, "chaos.x", []byte(id), jetstream.WithMsgID(id))
		pcancel()
		if err == nil {
			acked[id] = true
		}
	}
	if len(acked) < n/2 {
		t.Fatalf("only %d of %d publishes acknowledged", len(acked), n)
	}
	// Every acknowledged message is in the stream, read back by sequence
	// (retried: a node just restarted answers once it has caught up).
	var info2 *jetstream.StreamInfo
	for range 50 {
		if info2, err = s.Info(ctx); err == nil {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for seq := info2.State.FirstSeq; seq <= info2.State.LastSeq; seq++ {
		var m *jetstream.RawStreamMsg
		for range 20 {
			if m, err = s.GetMsg(ctx, seq); err == nil {
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		if seen[string(m.Data)] {
			t.Errorf("message %s stored twice", m.Data)
		}
		seen[string(m.Data)] = true
	}
	for id := range acked {
		if !seen[id] {
			t.Errorf("acknowledged message %s lost", id)
		}
	}
	t.Logf("%d of %d acknowledged across a leader kill and restart, %d read back", len(acked), n, len(seen))

	// A paused node (the stream's leader, unless the client is connected
	// to it) holds up nothing for long: the others elect a new leader
	// and keep accepting.
	paused, err := c.StreamLeader(ctx, js, "CHAOS")
	if err != nil {
		t.Fatal(err)
	}
	if c.NodeName(paused) == nc.ConnectedServerName() {
		paused = (paused + 1) % c.Nodes()
	}
	if err := c.Pause(paused); err != nil {
		t.Fatal(err)
	}
	for attempt := 0; ; attempt++ {
		pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
		_, err = js.Publish(pctx, "chaos.x", []byte("during-pause"))
		pcancel()
		if err == nil {
			break
		}
		if attempt == 5 {
			t.Fatalf("publish with node %d paused: %v", paused, err)
		}
	}
	if err := c.Resume(paused); err != nil {
		t.Fatal(err)
	}
}

// TestClusterRoles shows every node enforces the per-role permissions of
// a single server: a role's user cannot publish another's events.
func TestClusterRoles(t *testing.T) {
	c := startCluster(t)
	topo := topology.New("")
	nc, _ := c.ConnectT(t, schemas.RolePlatform)
	errs := make(chan error, 1)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	})
	if err := nc.Publish(topo.Subjects.Decision("model.deploy"), []byte("{}")); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errs:
		if !errors.Is(err, nats.ErrPermissionViolation) {
			t.Fatalf("got %v, want a permissions violation", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the platform published a decision without a permissions violation")
	}
	if _, err := os.Stat(c.NodeLog(0)); err != nil {
		t.Fatal(err)
	}
}
