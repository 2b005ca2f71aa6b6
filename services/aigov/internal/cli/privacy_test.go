package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/aigov/aigov/services/devenv/clickhouse"
)

// What `aigov privacy export --subject ISS SUB` writes once privacy.export
// is allowed (TestPrivacyErasureEndToEnd runs the governed command), on a
// real ClickHouse: exactly the subject's decisions, session events and
// approvals (asked or given), none of another subject's or of the same
// subject name at another issuer, as JSON Lines, with progress.
func TestPrivacyExportIsExactlyTheSubject(t *testing.T) {
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
	// The columns export reads, as services/audit/migrations create them.
	for _, q := range []string{"CREATE DATABASE aigov",
		`CREATE TABLE aigov.decisions (event_id String, request_id String, event_time DateTime('UTC'), event_time_us UInt64, action String,
		resource_type String, resource_id String, principal_id String, issuer String, subject String, email String, decision String, code String,
		reason String, context String, stream_seq UInt64) ENGINE = ReplacingMergeTree(stream_seq) ORDER BY (event_id)`,
		`CREATE TABLE aigov.session_events (event_id String, type String, session_key String, issuer String, subject String, principal_id String,
		sid String, reason String, ` + "`by`" + ` String, request_id String, event_time DateTime('UTC'), event_time_us UInt64, stream_seq UInt64)
		ENGINE = ReplacingMergeTree(stream_seq) ORDER BY (event_id)`,
		`CREATE TABLE aigov.approvals (event_id String, type String, approval_id String, status String, request_id String, action String,
		resource_type String, resource_id String, approver String, requester String, reason String, event_time DateTime('UTC'), event_time_us UInt64)
		ENGINE = ReplacingMergeTree ORDER BY (event_id)`,
	} {
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	const iss, other = "https://idp.example", "https://other.example"
	now := time.Now().UTC().Truncate(time.Second)
	insert := func(q string, rows ...[]any) {
		t.Helper()
		b, err := conn.PrepareBatch(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rows {
			if err := b.Append(r...); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	dec := func(id, issuer, sub string) []any {
		return []any{id, "req-" + id, now, uint64(now.UnixMicro()), "model.retrain", "Model", "m", issuer + "#" + sub, issuer, sub,
			sub + "@example.com", "allow", "", "", `{"owner":"` + sub + `"}`, uint64(1)}
	}
	insert("INSERT INTO aigov.decisions (event_id, request_id, event_time, event_time_us, action, resource_type, resource_id, principal_id, issuer, subject, email, decision, code, reason, context, stream_seq)",
		dec("d1", iss, "alice"), dec("d2", iss, "alice"), dec("d3", iss, "bob"), dec("d4", other, "alice"))
	// A redelivered copy of d1 is exported once.
	insert("INSERT INTO aigov.decisions (event_id, request_id, event_time, event_time_us, action, resource_type, resource_id, principal_id, issuer, subject, email, decision, code, reason, context, stream_seq)",
		dec("d1", iss, "alice"))
	ses := func(id, issuer, sub string) []any {
		return []any{id, "started", "sk", issuer, sub, issuer + "#" + sub, "sid", "", "", "", now, uint64(now.UnixMicro()), uint64(1)}
	}
	insert("INSERT INTO aigov.session_events (event_id, type, session_key, issuer, subject, principal_id, sid, reason, `by`, request_id, event_time, event_time_us, stream_seq)",
		ses("s1", iss, "alice"), ses("s2", iss, "bob"))
	appr := func(id, approver, requester string) []any {
		return []any{id, "given", "a-" + id, "given", "r", "model.deploy", "Model", "m", approver, requester, "", now, uint64(now.UnixMicro())}
	}
	insert("INSERT INTO aigov.approvals (event_id, type, approval_id, status, request_id, action, resource_type, resource_id, approver, requester, reason, event_time, event_time_us)",
		appr("a1", iss+"#bob", iss+"#alice"), appr("a2", iss+"#alice", iss+"#bob"), appr("a3", iss+"#bob", other+"#alice"))

	var buf strings.Builder
	var progress []int
	n, err := exportSubject(ctx, conn, "aigov", iss, "alice", &subjectKey{id: "unused"}, &buf, func(n int) { progress = append(progress, n) })
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	out := buf.String()
	got := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(out))
	for sc.Scan() {
		var obj map[string]any
		if err := json.Unmarshal(sc.Bytes(), &obj); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		id, _ := obj["event_id"].(string)
		if _, dup := got[id]; dup {
			t.Fatalf("event %s exported twice", id)
		}
		got[id], _ = obj["kind"].(string)
	}
	want := map[string]string{"d1": "decision", "d2": "decision", "s1": "session", "a1": "approval", "a2": "approval"}
	if len(got) != len(want) {
		t.Fatalf("exported %v, want %v", got, want)
	}
	for id, kind := range want {
		if got[id] != kind {
			t.Fatalf("exported %v, want %v", got, want)
		}
	}
	if !strings.Contains(out, `"owner":"alice"`) || !strings.Contains(out, "alice@example.com") {
		t.Fatalf("the export is not in clear: %s", out)
	}
	if n != 5 || len(progress) != 5 || progress[4] != 5 {
		t.Fatalf("export wrote %d events, progress %v", n, progress)
	}
	none := func(string) (string, bool) { return "", false }
	var stderr strings.Builder
	if code := privacyCmd(ctx, []string{"export", "--subject", iss}, io.Discard, &stderr, none); code != ExitUsage {
		t.Fatalf("export without a subject: exit %d, want %d", code, ExitUsage)
	}
	stderr.Reset()
	// No decision, no export: without the bus nothing is read, though
	// ClickHouse is there.
	var stdout strings.Builder
	if code := privacyCmd(ctx, []string{"export", "--clickhouse", chs.Addr(), "--nats", "nats://127.0.0.1:1", "--subject", iss, "alice"}, &stdout, &stderr, none); code != ExitError || stdout.Len() != 0 {
		t.Fatalf("export without a decision: exit %d, wrote %q (%s), want %d and nothing", code, stdout.String(), stderr.String(), ExitError)
	}
}
