package sink

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/audit/chain"
	"github.com/aigov/aigov/services/audit/privacy"
)

// verify runs what `aigov audit verify` runs on one stream.
func (h *harness) verify(stream string) chain.Report {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// A missing checkpoint stream is tolerated, as verify does: every
	// stream with rows then fails for want of a checkpoint.
	store, err := chain.OpenStore(ctx, h.admin, h.topo, true)
	if err != nil {
		h.t.Fatal(err)
	}
	cps, err := store.Checkpoints(ctx, stream)
	if err != nil {
		h.t.Fatal(err)
	}
	pub, err := signing.LoadPublicKey(h.keyFile + ".pub")
	if err != nil {
		h.t.Fatal(err)
	}
	rep, err := chain.VerifyStream(ctx, h.ch, h.db, stream, cps, pub)
	if err != nil {
		h.t.Fatalf("verify %s: %v", stream, err)
	}
	return rep
}

// loseCheckpoints ages every checkpoint out of the checkpoint stream, the
// one way left to lose them: deleting or purging them is refused to
// everyone (shown here first), shortening the stream's limits is not
// refused to the provisioner.
func (h *harness) loseCheckpoints() {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	name := h.topo.StreamAuditCheckpoints()
	st, err := h.admin.Stream(ctx, name)
	if err != nil {
		h.t.Fatal(err)
	}
	if st.CachedInfo().State.Msgs == 0 {
		h.t.Fatal("no checkpoint to lose")
	}
	if err := st.Purge(ctx); err == nil {
		h.t.Fatal("the admin purged the checkpoint stream")
	}
	if err := st.DeleteMsg(ctx, st.CachedInfo().State.LastSeq); err == nil {
		h.t.Fatal("the admin deleted a checkpoint")
	}
	nc, err := h.ns.Connect(schemas.RoleProvisioner)
	if err != nil {
		h.t.Fatal(err)
	}
	defer nc.Close()
	pjs, err := jetstream.New(nc)
	if err != nil {
		h.t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	cfg.MaxAge, cfg.Duplicates = time.Second, time.Second
	if _, err := pjs.UpdateStream(ctx, cfg); err != nil {
		h.t.Fatalf("provisioner shortening the checkpoints' max age: %v", err)
	}
	for {
		info, err := st.Info(ctx)
		if err != nil {
			h.t.Fatal(err)
		}
		if info.State.Msgs == 0 {
			return
		}
		select {
		case <-ctx.Done():
			h.t.Fatalf("checkpoints never aged out: %+v", info.State)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (h *harness) exec(q string) {
	h.t.Helper()
	// Mutations run asynchronously unless waited for.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := h.ch.Exec(ctx, q); err != nil {
		h.t.Fatalf("%s: %v", q, err)
	}
}

// waitMutations waits until ClickHouse has applied every ALTER mutation.
func (h *harness) waitMutations() {
	h.t.Helper()
	h.waitCount(0, 20*time.Second, "SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0", h.db)
}

// TestTamperIsDetected writes a chain, has it signed, and then tampers with
// the rows as someone with write access to ClickHouse could: each kind of
// edit is reported, at the position it was made.
func TestTamperIsDetected(t *testing.T) {
	t.Parallel()
	const n = 40
	cases := []struct {
		name   string
		tamper func(h *harness, stream string)
		at     uint64
		reason string
	}{
		{"update", func(h *harness, stream string) {
			h.exec("ALTER TABLE " + h.db + ".event_log UPDATE data = concat(data, 'modle') WHERE stream = '" + stream + "' AND stream_seq = 17")
			h.waitMutations()
		}, 17, "content altered"},
		{"delete", func(h *harness, stream string) {
			h.exec("ALTER TABLE " + h.db + ".event_log DELETE WHERE stream = '" + stream + "' AND stream_seq = 23")
			h.waitMutations()
		}, 23, "row missing"},
		{"forged row", func(h *harness, stream string) {
			// A forger who knows the algorithm and links the row properly
			// to its predecessor still breaks the next link.
			var r logRow
			r.Stream, r.Seq, r.EventID, r.Type, r.Source, r.Subject = stream, 30, "forged", schemas.TypeDecision, "aigov/policy", "aigov.decision.model.retrain"
			r.Data = `{"forged":true}`
			r.Time = time.Now().UTC()
			var prev string
			if err := h.ch.QueryRow(context.Background(), "SELECT any(chain_hash) FROM "+h.db+".event_log WHERE stream = ? AND stream_seq = 29", stream).Scan(&prev); err != nil {
				h.t.Fatal(err)
			}
			chain.Head{Stream: stream, Seq: 29, Hash: prev}.Extend(&r.Row)
			w, err := NewWriter(h.ch, h.db, prometheus.NewRegistry(), h.svc.Log)
			if err != nil {
				h.t.Fatal(err)
			}
			if err := w.insertLog(context.Background(), []*logRow{&r}); err != nil {
				h.t.Fatal(err)
			}
		}, 30, "two different rows"},
		{"checkpoints deleted", func(h *harness, stream string) {
			// Nobody can delete a checkpoint: the stream refuses, even
			// the provisioner and the unrestricted admin. What the
			// provisioner can still do is shorten the stream's limits so
			// that its checkpoints age out; that must not make the stream
			// unverifiable in silence: rows with no checkpoint fail.
			h.loseCheckpoints()
		}, 1, "no signed checkpoint"},
		{"truncated tail", func(h *harness, stream string) {
			h.exec("ALTER TABLE " + h.db + ".event_log DELETE WHERE stream = '" + stream + "' AND stream_seq > 35")
			h.waitMutations()
		}, 36, "truncated"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			h := startHarness(t, harnessOptions{batchSize: 7})
			for i := range n {
				h.publishDecision(decisionN(i))
			}
			h.waitAcked(schemas.ConsumerAuditDecisions, 20*time.Second)
			h.stop() // signs the final checkpoint
			stream := h.topo.StreamDecisions()
			if rep := h.verify(stream); !rep.OK() || rep.Rows != n || rep.Signed != n || rep.Checkpoints == 0 {
				t.Fatalf("untouched chain: %+v (broken %+v)", rep, rep.Broken)
			}
			c.tamper(h, stream)
			rep := h.verify(stream)
			if rep.OK() {
				t.Fatalf("tampering (%s) not detected: %+v", c.name, rep)
			}
			if rep.Broken.Seq != c.at || !strings.Contains(rep.Broken.Reason, c.reason) {
				t.Errorf("first broken link = seq %d %q, want seq %d %q", rep.Broken.Seq, rep.Broken.Reason, c.at, c.reason)
			}
		})
	}
}

// TestChainSurvivesRestartAndRedelivery restarts the writer with messages
// pending and the same key: the chain continues and verifies whole.
func TestChainSurvivesRestartAndRedelivery(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{batchSize: 5})
	for i := range 12 {
		h.publishDecision(decisionN(i))
	}
	h.waitAcked(schemas.ConsumerAuditDecisions, 20*time.Second)
	h.stop()
	// Published while no writer runs, then a second writer on the same bus,
	// database and key.
	h2 := startHarness(t, harnessOptions{batchSize: 5, ns: h.ns, db: h.db, keyFile: h.keyFile})
	for i := 12; i < 30; i++ {
		h2.publishDecision(decisionN(i))
	}
	h2.waitAcked(schemas.ConsumerAuditDecisions, 20*time.Second)
	h2.stop()
	if rep := h2.verify(h.topo.StreamDecisions()); !rep.OK() || rep.Rows != 30 || rep.Signed != 30 {
		t.Fatalf("chain after restart: %+v (broken %+v)", rep, rep.Broken)
	}
	if got := h2.count("SELECT count() FROM " + h.db + ".decisions_final"); got != 30 {
		t.Errorf("decisions_final = %d, want 30", got)
	}
}

// TestEveryAuditedStreamIsAudited publishes an event on every subject of
// every stream of the topology that is not explicitly exempt, and checks
// it reaches event_log: nothing published on an audited subject escapes
// the audit. A stream added to the topology is covered automatically, and
// one that cannot be (a work queue) fails here until it is exempted with
// a reason.
func TestEveryAuditedStreamIsAudited(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{})
	exempt := h.topo.NotAudited()
	for name, why := range exempt {
		if len(why) < 20 {
			t.Errorf("stream %s is exempt from the audit without a reason", name)
		}
	}
	audited := map[string]bool{}
	for _, s := range h.topo.AuditedStreams() {
		audited[s] = true
	}
	want := 0
	for _, st := range h.topo.Streams() {
		if _, ok := exempt[st.Name]; ok {
			if audited[st.Name] {
				t.Errorf("stream %s is both exempt and audited", st.Name)
			}
			continue
		}
		if !audited[st.Name] {
			t.Errorf("stream %s is neither audited nor exempt", st.Name)
			continue
		}
		for i, subj := range st.Subjects {
			subject := strings.ReplaceAll(strings.ReplaceAll(subj, ">", "audit.coverage"), "*", "x")
			id := "coverage-" + st.Name + "-" + itoa(i)
			h.publish(subject, encode(t, id, "dev.aigov.test.coverage.v1", decidedAt, map[string]string{"probe": id}), id)
			want++
		}
	}
	h.waitCount(uint64(want), 20*time.Second, "SELECT count() FROM "+h.db+".event_log FINAL WHERE type = 'dev.aigov.test.coverage.v1'")
	for _, s := range h.topo.AuditedStreams() {
		h.waitAcked(h.topo.AuditConsumer(s), 10*time.Second)
	}
}

// TestGivenUpMessagesAreDeadLettered makes another service's consumer give
// up on a message (max deliveries) and terminate another: both reach the
// dead-letter stream, without the request's Authorization header, and the
// anomalies table.
func TestGivenUpMessagesAreDeadLettered(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: waits for a consumer to give up (MaxDeliver); make test runs it")
	}
	t.Parallel()
	h := startHarness(t, harnessOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	spec, err := h.topo.Consumer(schemas.ConsumerAuthn)
	if err != nil {
		t.Fatal(err)
	}
	spec.Config.MaxDeliver = 2
	spec.Config.AckWait = time.Second
	cons, err := h.admin.CreateOrUpdateConsumer(ctx, spec.Stream, spec.Config)
	if err != nil {
		t.Fatal(err)
	}
	req := encode(t, "req-dead", schemas.TypeRequest, decidedAt, map[string]any{"action": "model.retrain"})
	h.publish(h.subjects.Request("model.retrain"), req, "req-dead")
	h.publish(h.subjects.Request("model.retrain"), encode(t, "req-term", schemas.TypeRequest, decidedAt, map[string]any{"action": "x"}), "req-term")
	for range 3 {
		batch, err := cons.Fetch(2, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range batch.Messages() {
			if strings.Contains(string(m.Data()), "req-term") {
				_ = m.TermWithReason("bad payload")
			} else {
				_ = m.Nak()
			}
		}
	}
	h.waitCount(1, 20*time.Second, "SELECT count() FROM "+h.db+".anomalies FINAL WHERE kind = 'max_deliveries' AND consumer = 'authn' AND deliveries = 2 AND position(data, 'req-dead') > 0")
	h.waitCount(1, 20*time.Second, "SELECT count() FROM "+h.db+".anomalies FINAL WHERE kind = 'terminated' AND position(reason, 'bad payload') > 0")
	h.waitCount(2, 20*time.Second, "SELECT count() FROM "+h.db+".event_log FINAL WHERE type = ? AND position(data, 'Authorization') = 0", schemas.TypeDeadLetter)
}

// TestMaskedFieldsNeverReachClickHouse configures masking and checks the
// raw log and the decisions table hold only the hash.
func TestMaskedFieldsNeverReachClickHouse(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{maskFields: "prompt,dataset_path"})
	d := decisionN(1)
	d.Context = map[string]any{"prompt": "tell me the secret plan", "dataset_path": "s3://private/x", "environment": "staging"}
	h.publishDecision(d)
	h.waitCount(1, 10*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	for _, q := range []string{
		"SELECT count() FROM " + h.db + ".event_log WHERE position(data, 'secret plan') > 0 OR position(data, 's3://private') > 0",
		"SELECT count() FROM " + h.db + ".decisions WHERE position(context, 'secret plan') > 0 OR position(context, 's3://private') > 0",
	} {
		if got := h.count(q); got != 0 {
			t.Errorf("%s = %d, want 0", q, got)
		}
	}
	var ctxJSON string
	if err := h.ch.QueryRow(context.Background(), "SELECT context FROM "+h.db+".decisions FINAL").Scan(&ctxJSON); err != nil {
		t.Fatal(err)
	}
	var c map[string]string
	if err := json.Unmarshal([]byte(ctxJSON), &c); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(c["prompt"], privacy.PseudonymPrefix) || c["environment"] != "staging" {
		t.Errorf("masked context = %v", c)
	}
}

// TestRedeliveryRestoresMissingTypedRows: the two tables of a batch are
// written at once, so a crash can leave an event_log row without its
// decisions row. If the checkpoints are lost too, the restarted writer
// takes its chain head from event_log; the redelivered positions below it
// must still get their typed rows, and no second chain row.
func TestRedeliveryRestoresMissingTypedRows(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{batchSize: 5})
	const n = 8
	for i := range n {
		h.publishDecision(decisionN(i))
	}
	h.waitAcked(schemas.ConsumerAuditDecisions, 20*time.Second)
	h.waitCount(n, 20*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	h.stop()

	// The typed rows of three events are gone, the checkpoints too, and
	// the consumer starts over, so every position is delivered again.
	h.exec("ALTER TABLE " + h.db + ".decisions DELETE WHERE request_id IN ('req-0001', 'req-0004', 'req-0007')")
	h.waitMutations()
	if got := h.count("SELECT count() FROM " + h.db + ".decisions FINAL"); got != n-3 {
		t.Fatalf("decisions after the delete = %d, want %d", got, n-3)
	}
	ctx := context.Background()
	stream := h.topo.StreamDecisions()
	h.loseCheckpoints()
	if err := h.admin.DeleteConsumer(ctx, stream, schemas.ConsumerAuditDecisions); err != nil {
		t.Fatal(err)
	}
	// The operator re-provisions, as after any change to the topology: the
	// consumer is back and so are the checkpoint stream's limits.
	if err := h.ns.Provision(); err != nil {
		t.Fatal(err)
	}

	h2 := startHarness(t, harnessOptions{batchSize: 5, ns: h.ns, db: h.db, keyFile: h.keyFile})
	h2.waitAcked(schemas.ConsumerAuditDecisions, 20*time.Second)
	h2.waitCount(n, 20*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	h2.stop()
	if got := h2.count("SELECT count() FROM "+h.db+".event_log WHERE stream = ?", stream); got != n {
		t.Errorf("event_log holds %d rows of the stream, want %d: redelivered positions were chained again", got, n)
	}
}

// TestLegacyCheckpointBucketIsHonoured upgrades a deployment whose
// checkpoints are in the KV bucket older versions used: verify checks the
// bucket's checkpoints, the restarted audit continues the chain from the
// newest of them, and the whole log verifies against both.
func TestLegacyCheckpointBucketIsHonoured(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: writes and verifies through two writer generations")
	}
	t.Parallel()
	const n = 12
	h := startHarness(t, harnessOptions{batchSize: 5})
	for i := range n {
		h.publishDecision(decisionN(i))
	}
	h.waitAcked(schemas.ConsumerAuditDecisions, 20*time.Second)
	h.stop()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream := h.topo.StreamDecisions()

	// What an old deployment had: the checkpoints in the KV bucket, and
	// none in the (new) checkpoint stream.
	store, err := chain.OpenStore(ctx, h.admin, h.topo, false)
	if err != nil {
		t.Fatal(err)
	}
	cps, err := store.Checkpoints(ctx, stream)
	if err != nil || len(cps) == 0 {
		t.Fatalf("checkpoints = %v, %v", cps, err)
	}
	kv, err := h.admin.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: h.topo.LegacyBucketAuditCheckpoints(), History: 64})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cps {
		b, _ := c.Marshal()
		if _, err := kv.Put(ctx, stream, b); err != nil {
			t.Fatal(err)
		}
	}
	// A key deleted in the old bucket leaves a marker, which is skipped.
	if _, err := kv.Put(ctx, "AIGOV_GONE", []byte("{}")); err != nil {
		t.Fatal(err)
	}
	if err := kv.Delete(ctx, "AIGOV_GONE"); err != nil {
		t.Fatal(err)
	}
	h.loseCheckpoints()
	if err := h.ns.Provision(); err != nil {
		t.Fatal(err)
	}
	if rep := h.verify(stream); !rep.OK() || rep.Rows != n || rep.Signed != n {
		t.Fatalf("verify against the legacy bucket: %+v (broken %+v)", rep, rep.Broken)
	}

	// The upgraded audit reads the legacy bucket with its own credentials
	// and continues the chain; its checkpoints go to the stream.
	h2 := startHarness(t, harnessOptions{batchSize: 5, ns: h.ns, db: h.db, keyFile: h.keyFile})
	for i := n; i < 2*n; i++ {
		h2.publishDecision(decisionN(i))
	}
	h2.waitAcked(schemas.ConsumerAuditDecisions, 20*time.Second)
	h2.stop()
	if rep := h2.verify(stream); !rep.OK() || rep.Rows != 2*n || rep.Signed != 2*n || rep.Checkpoints <= len(cps) {
		t.Fatalf("verify after the upgrade: %+v (broken %+v)", rep, rep.Broken)
	}
	st, err := h.admin.Stream(ctx, h.topo.StreamAuditCheckpoints())
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, h.topo.Subjects.Checkpoint(stream))
	if err != nil {
		t.Fatalf("no checkpoint in the stream after the upgrade: %v", err)
	}
	if c, err := chain.ParseCheckpoint(m.Data); err != nil || c.Seq != 2*n || c.Start != cps[0].Start {
		t.Errorf("newest checkpoint = %+v, %v", c, err)
	}
	if store, err = chain.OpenStore(ctx, h.admin, h.topo, false); err != nil || !store.HasLegacy() {
		t.Fatalf("store %+v, %v: no legacy bucket", store, err)
	}
	names, err := store.Streams(ctx)
	if err != nil || !slices.Equal(names, []string{stream}) {
		t.Errorf("streams with checkpoints = %v, %v", names, err)
	}
}
