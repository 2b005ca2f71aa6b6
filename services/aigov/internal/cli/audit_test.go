package cli_test

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/audit/chain"
	"github.com/aigov/aigov/services/devenv/clickhouse"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// `aigov audit verify` as the operator, on the real servers: a chain whose
// checkpoint the audit published to the checkpoint stream verifies; a
// stream with rows but no checkpoint is BROKEN (exit 3), and so is every
// stream once the checkpoint stream is gone.
func TestAuditVerifyReadsTheCheckpointStream(t *testing.T) {
	if _, err := clickhouse.Available(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	chs, err := clickhouse.Start(ctx, clickhouse.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = chs.Stop() })
	conn, err := ch.Open(&ch.Options{Addr: []string{chs.Addr()}, Auth: ch.Auth{Username: "default"}})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// The columns verify reads, as services/audit/migrations create them.
	for _, q := range []string{"CREATE DATABASE aigov", `CREATE TABLE aigov.event_log (stream String, stream_seq UInt64, event_id String,
		type String, source String, nats_subject String, event_time_us UInt64, data String, invalid_reason String, prev_seq UInt64,
		row_hash String, chain_hash String, signer_key_id String, signature String) ENGINE = MergeTree ORDER BY (stream, stream_seq)`} {
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	topo := topology.New("")
	signed, unsigned := topo.StreamDecisions(), topo.StreamSessions()
	writeChain := func(stream string, n int) chain.Head {
		head := chain.NewHead(stream, 0)
		batch, err := conn.PrepareBatch(ctx, "INSERT INTO aigov.event_log (stream, stream_seq, event_id, type, source, nats_subject, event_time_us, data, invalid_reason, prev_seq, row_hash, chain_hash)")
		if err != nil {
			t.Fatal(err)
		}
		for i := 1; i <= n; i++ {
			r := chain.Row{Stream: stream, Seq: uint64(i), PrevSeq: uint64(i - 1), EventID: "ev-" + stream + "-" + strconv.Itoa(i),
				Type: schemas.TypeDecision, Source: "aigov/policy", Subject: "aigov.decision.model.deploy", TimeUS: uint64(i), Data: `{}`}
			head = head.Extend(&r)
			if err := batch.Append(r.Stream, r.Seq, r.EventID, r.Type, r.Source, r.Subject, r.TimeUS, r.Data, r.InvalidReason,
				r.PrevSeq, r.RowHash, r.ChainHash); err != nil {
				t.Fatal(err)
			}
		}
		if err := batch.Send(); err != nil {
			t.Fatal(err)
		}
		return head
	}
	head := writeChain(signed, 5)
	writeChain(unsigned, 3)

	// The audit signs and publishes the checkpoint, with its own
	// credentials.
	pub, key, _ := ed25519.GenerateKey(rand.Reader)
	pubFile := filepath.Join(t.TempDir(), "audit.pub")
	if err := signing.WritePublicKey(pubFile, pub); err != nil {
		t.Fatal(err)
	}
	ns := natsdev.StartT(t, natsdev.Options{})
	_, ajs := ns.ConnectT(t, schemas.RoleAudit)
	store, err := chain.OpenStore(ctx, ajs, topo, false)
	if err != nil {
		t.Fatal(err)
	}
	c := chain.Sign(head, time.Now(), key)
	// Twice: the second publish of the same head is de-duplicated.
	for range 2 {
		if err := store.Put(ctx, c); err != nil {
			t.Fatal(err)
		}
	}
	if st, err := ajs.Stream(ctx, topo.StreamAuditCheckpoints()); err != nil || st.CachedInfo().State.Msgs != 1 {
		t.Fatalf("checkpoint stream after two publishes of one head: %v, %+v", err, st)
	}

	verify := func(args ...string) (int, string, string) {
		t.Helper()
		return run(t, append([]string{"audit", "verify", "--nats", ns.URL(), "--tls-ca", ns.CAFile(),
			"--user", schemas.RoleOperator, "--password", ns.Password(schemas.RoleOperator),
			"--clickhouse", chs.Addr(), "--database", "aigov", "--public-key", pubFile}, args...)...)
	}
	code, out, errOut := verify("--stream", signed, "--json")
	var reps []chain.Report
	if err := json.Unmarshal([]byte(out), &reps); code != 0 || err != nil || len(reps) != 1 || !reps[0].OK() || reps[0].Rows != 5 ||
		reps[0].Signed != 5 || reps[0].Checkpoints != 1 {
		t.Fatalf("verify %s: exit %d, %v\n%s%s", signed, code, err, out, errOut)
	}
	code, out, errOut = verify()
	if code != 3 || !strings.Contains(out, signed+" ") || !strings.Contains(out, unsigned+" ") ||
		!strings.Contains(out, "BROKEN") || !strings.Contains(out, "no signed checkpoint") {
		t.Fatalf("verify with an unsigned stream: exit %d, want 3\n%s%s", code, out, errOut)
	}

	// Positions 1..2 dropped by the retention policy, with a signed
	// retirement, are reported as retired and the chain still verifies;
	// a row deleted by hand is still missing.
	retiredHead := chain.NewHead(signed, 0)
	for i := 1; i <= 2; i++ {
		r := chain.Row{Stream: signed, Seq: uint64(i), PrevSeq: uint64(i - 1), EventID: "ev-" + signed + "-" + strconv.Itoa(i),
			Type: schemas.TypeDecision, Source: "aigov/policy", Subject: "aigov.decision.model.deploy", TimeUS: uint64(i), Data: `{}`}
		retiredHead = retiredHead.Extend(&r)
	}
	ret := chain.SignRetirement(chain.Retirement{Stream: signed, From: 1, To: 2, ChainHash: retiredHead.Hash, Partition: 197001,
		Reason: "retention", At: time.Now()}, key)
	for _, q := range []string{`CREATE TABLE aigov.retirements (stream String, from_seq UInt64, to_seq UInt64, chain_hash String,
		partition_id UInt32, reason String, retired_at String, key_id String, signature String) ENGINE = ReplacingMergeTree ORDER BY (stream, from_seq, to_seq)`,
		"ALTER TABLE aigov.event_log DELETE WHERE stream = '" + signed + "' AND stream_seq <= 2"} {
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	rb, err := conn.PrepareBatch(ctx, "INSERT INTO aigov.retirements ("+chain.RetirementColumns+")")
	if err != nil {
		t.Fatal(err)
	}
	if err := rb.Append(ret.Values()...); err != nil {
		t.Fatal(err)
	}
	if err := rb.Send(); err != nil {
		t.Fatal(err)
	}
	waitRows := func(q string, want uint64) {
		t.Helper()
		for range 200 {
			var n uint64
			if err := conn.QueryRow(ctx, q).Scan(&n); err == nil && n == want {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Fatalf("%s never gave %d", q, want)
	}
	waitRows("SELECT count() FROM aigov.event_log WHERE stream = '"+signed+"'", 3)
	code, out, errOut = verify("--stream", signed)
	if code != 0 || !strings.Contains(out, "ok") || !strings.Contains(out, "retired by policy: seq 1..2") {
		t.Fatalf("verify after retirement: exit %d, want 0\n%s%s", code, out, errOut)
	}
	if err := conn.Exec(ctx, "ALTER TABLE aigov.event_log DELETE WHERE stream = '"+signed+"' AND stream_seq = 4"); err != nil {
		t.Fatal(err)
	}
	waitRows("SELECT count() FROM aigov.event_log WHERE stream = '"+signed+"'", 2)
	code, out, errOut = verify("--stream", signed)
	if code != 3 || !strings.Contains(out, "BROKEN  first broken link at seq 4: row missing") || !strings.Contains(out, "retired by policy: seq 1..2") {
		t.Fatalf("verify after a hand deletion: exit %d, want 3\n%s%s", code, out, errOut)
	}

	// Only the server's admin can delete the checkpoint stream; verify
	// then fails every stream with rows.
	_, adm := ns.ConnectT(t, natsdev.AdminUser)
	if err := adm.DeleteStream(ctx, topo.StreamAuditCheckpoints()); err != nil {
		t.Fatal(err)
	}
	code, out, errOut = verify("--stream", signed)
	if code != 3 || !strings.Contains(out, "no signed checkpoint") || !strings.Contains(errOut, "does not exist") {
		t.Fatalf("verify without the checkpoint stream: exit %d, want 3\n%s%s", code, out, errOut)
	}
}
