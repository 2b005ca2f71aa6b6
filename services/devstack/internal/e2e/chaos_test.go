package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/aigov/aigov/services/devstack/internal/chaos"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// TestChaosShort is make chaos's short form: the stack on a 3-node NATS
// cluster under low steady load, with kill-policy, nats-node-kill and
// revoke-while-queued injected in turn. Every acknowledged request must be
// decided once and audited once, none wrongly allowed, and aigov audit
// verify must pass. (-short skips the whole package: see TestMain.)
func TestChaosShort(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const principals = 20
	st, err := stack.Start(ctx, stack.Options{Root: built.root, Dir: t.TempDir(), BinDir: built.bin, ClusterNodes: 3,
		Personas: chaos.Personas(principals), LogLevel: "warn"})
	if err != nil {
		t.Fatal(err)
	}
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			st.Stop()
		}
	})
	r, err := chaos.New(ctx, st, chaos.Options{Rate: 40, Principals: principals, BinDir: built.bin,
		Before: 2 * time.Second, After: 2 * time.Second, Outage: 3 * time.Second, Settle: 40 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, f := range chaos.ShortFaults {
		res, err := r.Run(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s (%s; %s)", res.Line(), res.Notes, res.Elapsed.Round(time.Second))
		if !res.OK() || res.Acked == 0 || res.Audited == 0 {
			t.Errorf("%s: %s", f, res.Line())
		}
	}
	r.Close()
	stopped = true
	if errs := st.Stop(); len(errs) > 0 {
		t.Fatalf("unclean shutdown: %v", errs)
	}
}
