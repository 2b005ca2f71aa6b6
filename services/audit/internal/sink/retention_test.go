package sink

import (
	"context"
	"crypto/ed25519"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/audit/chain"
)

// TestRetentionDropsExpiredPartitions, on the real 18.16 server (no TTL):
// the retention job drops the expired monthly partition of decisions and
// event_log, keeps a partition under legal hold and the recent one, and
// `audit verify`'s check passes, reporting the dropped positions as retired
// by policy. A row deleted by hand afterwards is still reported missing.
func TestRetentionDropsExpiredPartitions(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{})
	ctx := context.Background()
	now := time.Now().UTC()
	old := time.Date(2020, 1, 15, 10, 0, 0, 0, time.UTC)
	heldAt := time.Date(2020, 2, 15, 10, 0, 0, 0, time.UTC)
	times := []time.Time{old, old.Add(time.Hour), old.Add(2 * time.Hour), heldAt, heldAt.Add(time.Hour), now, now.Add(time.Second)}
	for i, at := range times {
		d := decisionN(i + 1)
		d.Timings.DecidedAt = at
		h.publishDecision(d)
	}
	stream := h.topo.StreamDecisions()
	h.waitCount(uint64(len(times)), 20*time.Second, "SELECT count() FROM "+h.db+".event_log FINAL WHERE stream = ?", stream)
	store, err := chain.OpenStore(ctx, h.admin, h.topo, false)
	if err != nil {
		t.Fatal(err)
	}
	h.eventually(10*time.Second, "a checkpoint of the last decision", func() (bool, string) {
		c, ok, err := store.Latest(ctx, stream)
		return err == nil && ok && c.Seq == uint64(len(times)), "not yet"
	})
	hold, err := h.ch.PrepareBatch(ctx, "INSERT INTO "+h.db+".legal_holds (partition_id, reason, held_by, held_at)")
	if err != nil {
		t.Fatal(err)
	}
	if err := hold.Append(uint32(202002), "case 42", "legal", now); err != nil {
		t.Fatal(err)
	}
	if err := hold.Send(); err != nil {
		t.Fatal(err)
	}
	key, err := signing.LoadOrCreateKey(h.keyFile, false)
	if err != nil {
		t.Fatal(err)
	}
	r := retirer{conn: h.ch, db: h.db, key: key, policy: Retention{Decisions: 30, Sessions: 30, Governance: 30}, topo: h.topo, log: zerolog.Nop()}
	dropped, err := r.Run(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"decisions/202001", "event_log/202001"}
	if !reflect.DeepEqual(dropped, want) {
		t.Fatalf("dropped %v, want %v", dropped, want)
	}
	for table, n := range map[string]uint64{"decisions": 4, "event_log": 4} {
		if got := h.count("SELECT count() FROM " + h.db + "." + table + " FINAL"); got != n {
			t.Errorf("%s holds %d rows after retention, want %d", table, got, n)
		}
	}
	if got := h.count("SELECT count() FROM " + h.db + ".decisions FINAL WHERE toYYYYMM(event_time) = 202002"); got != 2 {
		t.Errorf("the held partition kept %d decisions, want 2", got)
	}
	// A second pass drops nothing more.
	if again, err := r.Run(ctx, now); err != nil || len(again) != 0 {
		t.Fatalf("second pass dropped %v, %v", again, err)
	}

	verify := func() chain.Report {
		t.Helper()
		cps, err := store.Checkpoints(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		rets, err := chain.ReadRetirements(ctx, h.ch, h.db, stream)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := chain.VerifyStreamRetired(ctx, h.ch, h.db, stream, cps, rets, key.Public().(ed25519.PublicKey))
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	rep := verify()
	if !rep.OK() || !reflect.DeepEqual(rep.Retired, []chain.Span{{From: 1, To: 3}}) || rep.RetiredPositions != 3 || rep.LastSeq != 7 {
		t.Fatalf("verify after retention: %+v (broken %+v)", rep, rep.Broken)
	}
	// Without the retirement records the same log is broken: they are
	// what makes the dropped range not missing.
	cps, _ := store.Checkpoints(ctx, stream)
	if plain, err := chain.VerifyStream(ctx, h.ch, h.db, stream, cps, key.Public().(ed25519.PublicKey)); err != nil || plain.OK() {
		t.Fatalf("verify without retirements passed: %+v %v", plain, err)
	}

	// A row deleted by hand is missing, not retired.
	if err := h.ch.Exec(ctx, "ALTER TABLE "+h.db+".event_log DELETE WHERE stream = ? AND stream_seq = 6", stream); err != nil {
		t.Fatal(err)
	}
	h.waitCount(0, 20*time.Second, "SELECT count() FROM "+h.db+".event_log WHERE stream = ? AND stream_seq = 6", stream)
	rep = verify()
	if rep.OK() || rep.Broken.Seq != 6 || !strings.Contains(rep.Broken.Reason, "missing") {
		t.Fatalf("verify after a hand deletion: %+v (broken %+v)", rep, rep.Broken)
	}
}

func TestExpired(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 10, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		p    uint32
		days int
		want bool
	}{
		{202601, 30, true}, {202602, 30, false}, {202602, 5, true}, {202512, 0, false}, {epochPartition, 1, false}, {202512, 70, false},
	} {
		if got := expired(c.p, c.days, now); got != c.want {
			t.Errorf("expired(%d, %d) = %v, want %v", c.p, c.days, got, c.want)
		}
	}
}
