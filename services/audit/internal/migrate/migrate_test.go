package migrate_test

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/services/audit/internal/chtest"
	"github.com/aigov/aigov/services/audit/internal/migrate"
	"github.com/aigov/aigov/services/audit/migrations"
	"github.com/aigov/aigov/services/devenv/clickhouse"
)

var server *clickhouse.Server

func TestMain(m *testing.M) { os.Exit(chtest.Main(m, &server)) }

func load(t *testing.T) []migrate.Migration {
	t.Helper()
	ms, err := migrate.Load(migrations.FS())
	if err != nil {
		t.Fatalf("Load(migrations.FS()): %v", err)
	}
	return ms
}

func TestLoadEmbedded(t *testing.T) {
	t.Parallel()
	ms := load(t)
	if len(ms) < 2 {
		t.Fatalf("want at least the tables and views migrations, got %d", len(ms))
	}
	for i, m := range ms {
		if i > 0 && m.Version <= ms[i-1].Version {
			t.Errorf("migrations out of order: %s after %s", m.Name, ms[i-1].Name)
		}
		stmts, err := m.Statements("aigov_x")
		if err != nil {
			t.Fatalf("%s: %v", m.Name, err)
		}
		for _, s := range stmts {
			// Idempotency is what makes concurrent writers safe: a CREATE
			// names IF NOT EXISTS; an ADD COLUMN that exists is absorbed by
			// the migrator; an INSERT ... SELECT only writes keys of a
			// ReplacingMergeTree, which collapse when repeated; a view is
			// replaced by DROP TABLE IF EXISTS then CREATE VIEW IF NOT
			// EXISTS (two writers at once both end with the new view).
			idempotent := strings.Contains(s, "IF NOT EXISTS") ||
				(strings.HasPrefix(s, "DROP TABLE IF EXISTS") && strings.Contains(m.SQL, "CREATE VIEW IF NOT EXISTS")) ||
				(strings.HasPrefix(s, "ALTER TABLE") && strings.Contains(s, " ADD COLUMN ")) ||
				(strings.HasPrefix(s, "INSERT INTO") && strings.Contains(s, "SELECT"))
			if !idempotent {
				t.Errorf("%s: statement is not idempotent: %.60s", m.Name, s)
			}
			if !strings.Contains(s, "aigov_x.") || strings.Contains(s, migrate.Placeholder) {
				t.Errorf("%s: statement does not name the database through the placeholder: %.60s", m.Name, s)
			}
		}
	}
}

func TestLoadRejects(t *testing.T) {
	t.Parallel()
	file := func(s string) *fstest.MapFile { return &fstest.MapFile{Data: []byte(s)} }
	cases := []struct {
		name string
		fs   fstest.MapFS
		want string
	}{
		{"empty", fstest.MapFS{}, "no migrations"},
		{"bad name", fstest.MapFS{"1_x.sql": file("SELECT 1")}, "NNNN_description.sql"},
		{"upper case", fstest.MapFS{"0001_Tables.sql": file("SELECT 1")}, "NNNN_description.sql"},
		{"version zero", fstest.MapFS{"0000_x.sql": file("SELECT 1")}, "number from 1"},
		{"duplicate version", fstest.MapFS{"0001_a.sql": file("SELECT 1"), "0001_b.sql": file("SELECT 2")}, "share version 1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			_, err := migrate.Load(c.fs)
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Load: got %v, want an error containing %q", err, c.want)
			}
		})
	}
}

func TestStatements(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		sql  string
		want []string
	}{
		{"two statements", "CREATE TABLE {{db}}.a (x UInt8) ENGINE = Memory;\nCREATE VIEW {{db}}.b AS SELECT 1;\n",
			[]string{"CREATE TABLE d.a (x UInt8) ENGINE = Memory", "CREATE VIEW d.b AS SELECT 1"}},
		{"comments dropped", "-- header; with a semicolon\nSELECT 1 /* inline; too */ FROM {{db}}.t -- tail;\n",
			[]string{"SELECT 1   FROM d.t"}},
		{"semicolon in a string", "SELECT 'a;b', \"c;d\", `e;f` FROM {{db}}.t; SELECT 'it\\'s;'",
			[]string{"SELECT 'a;b', \"c;d\", `e;f` FROM d.t", "SELECT 'it\\'s;'"}},
		{"no trailing semicolon", "SELECT 1", []string{"SELECT 1"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, err := migrate.Migration{Name: "x.sql", SQL: c.sql}.Statements("d")
			if err != nil {
				t.Fatalf("Statements: %v", err)
			}
			if !slices.Equal(got, c.want) {
				t.Fatalf("Statements:\n got %q\nwant %q", got, c.want)
			}
		})
	}
	for _, bad := range []string{"SELECT 'open", "SELECT 1 /* open", "SELECT {{other}}", "-- only a comment\n"} {
		if _, err := (migrate.Migration{Name: "x.sql", SQL: bad}).Statements("d"); err == nil {
			t.Errorf("Statements(%q): want an error", bad)
		}
	}
}

func TestValidateDatabase(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"aigov", "_x", "Audit_2026"} {
		if err := migrate.ValidateDatabase(ok); err != nil {
			t.Errorf("ValidateDatabase(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "1abc", "a-b", "a.b", "a b", "a;DROP", "`x`", strings.Repeat("a", 65)} {
		if err := migrate.ValidateDatabase(bad); err == nil {
			t.Errorf("ValidateDatabase(%q): want an error", bad)
		}
	}
}

// fresh creates a database for the test and returns a connection to it.
func fresh(t *testing.T) (string, context.Context) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	db := chtest.DatabaseName(t)
	chtest.DropAtCleanup(t, server, db)
	if err := migrate.EnsureDatabase(ctx, chtest.Open(t, server, "default"), db); err != nil {
		t.Fatalf("EnsureDatabase: %v", err)
	}
	return db, ctx
}

func versions(ms []migrate.Migration) []uint32 {
	var out []uint32
	for _, m := range ms {
		out = append(out, m.Version)
	}
	return out
}

// wantSchema checks that every table and view of the migrations exists.
func wantSchema(t *testing.T, ctx context.Context, db string) {
	t.Helper()
	conn := chtest.Open(t, server, db)
	rows, err := conn.Query(ctx, "SELECT name, engine FROM system.tables WHERE database = ?", db)
	if err != nil {
		t.Fatalf("list tables: %v", err)
	}
	defer rows.Close()
	got := map[string]string{}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			t.Fatalf("scan: %v", err)
		}
		got[name] = engine
	}
	want := map[string]string{
		"schema_migrations": "ReplacingMergeTree", "decisions": "ReplacingMergeTree", "events": "ReplacingMergeTree",
		"session_events": "ReplacingMergeTree", "decisions_final": "View", "session_events_final": "View",
		"retrains": "View", "dataset_promotions": "View", "denies_by_code_hourly": "View",
		"event_log": "ReplacingMergeTree", "approvals": "ReplacingMergeTree", "policy_changes": "ReplacingMergeTree",
		"anomalies": "ReplacingMergeTree", "model_changes": "View", "dataset_production": "View",
		"resource_access": "View", "deny_rate_hourly": "View", "approvals_final": "View", "approvals_used": "View",
		"policy_changes_final": "View", "anomalies_final": "View", "event_log_final": "View",
	}
	for name, engine := range want {
		if got[name] != engine {
			t.Errorf("%s.%s: engine %q, want %q", db, name, got[name], engine)
		}
	}
}

func TestApplyTwice(t *testing.T) {
	t.Parallel()
	db, ctx := fresh(t)
	conn := chtest.Open(t, server, db)
	ms := load(t)

	first, err := migrate.Apply(ctx, conn, db, ms, zerolog.Nop())
	if err != nil {
		t.Fatalf("first Apply: %v", err)
	}
	if !slices.Equal(first, versions(ms)) {
		t.Fatalf("first Apply applied %v, want %v", first, versions(ms))
	}
	second, err := migrate.Apply(ctx, conn, db, ms, zerolog.Nop())
	if err != nil {
		t.Fatalf("second Apply: %v", err)
	}
	if len(second) != 0 {
		t.Fatalf("second Apply applied %v again", second)
	}
	recs, err := migrate.Applied(ctx, conn, db)
	if err != nil {
		t.Fatalf("Applied: %v", err)
	}
	if len(recs) != len(ms) {
		t.Fatalf("recorded %d migrations, want %d: %+v", len(recs), len(ms), recs)
	}
	for i, r := range recs {
		m := ms[i]
		if r.Version != m.Version || r.Name != m.Name || r.Checksum != m.Checksum {
			t.Errorf("record %d = %+v, want version %d name %s checksum %s", i, r, m.Version, m.Name, m.Checksum)
		}
		if time.Since(r.AppliedAt) > time.Minute || time.Since(r.AppliedAt) < -time.Minute {
			t.Errorf("record %d applied_at %v is not now", i, r.AppliedAt)
		}
	}
	wantSchema(t, ctx, db)
}

func TestApplyConcurrently(t *testing.T) {
	t.Parallel()
	db := chtest.DatabaseName(t)
	chtest.DropAtCleanup(t, server, db)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ms := load(t)

	// Three writers start at once, each with its own connections, each
	// creating the database and running every migration: what several
	// replicas of the audit service do on a fresh cluster.
	const writers = 3
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		errs    = make([]error, writers)
		applied = make([][]uint32, writers)
	)
	for i := range writers {
		boot, conn := chtest.Open(t, server, "default"), chtest.Open(t, server, "default")
		wg.Go(func() {
			<-start
			if errs[i] = migrate.EnsureDatabase(ctx, boot, db); errs[i] != nil {
				return
			}
			// Statements name their database, so a connection on
			// "default" works as well as one on db.
			applied[i], errs[i] = migrate.Apply(ctx, conn, db, ms, zerolog.Nop())
		})
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("writer %d: %v", i, err)
		}
	}
	recs, err := migrate.Applied(ctx, chtest.Open(t, server, db), db)
	if err != nil {
		t.Fatalf("Applied: %v", err)
	}
	var got []uint32
	for _, r := range recs {
		got = append(got, r.Version)
	}
	if !slices.Equal(got, versions(ms)) {
		t.Fatalf("recorded versions %v (read FINAL), want each of %v once", got, versions(ms))
	}
	t.Logf("versions applied per writer: %v", applied)
	wantSchema(t, ctx, db)
}

func TestApplyRefusesChangedMigration(t *testing.T) {
	t.Parallel()
	db, ctx := fresh(t)
	conn := chtest.Open(t, server, db)
	ms := load(t)
	if _, err := migrate.Apply(ctx, conn, db, ms, zerolog.Nop()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	edited := slices.Clone(ms)
	edited[0].SQL += "\n-- edited\n"
	edited[0].Checksum = "0000"
	_, err := migrate.Apply(ctx, conn, db, edited, zerolog.Nop())
	if !errors.Is(err, migrate.ErrChanged) {
		t.Fatalf("Apply with an edited migration: got %v, want ErrChanged", err)
	}
}

func TestApplyRejectsBadDatabaseName(t *testing.T) {
	t.Parallel()
	conn := chtest.Open(t, server, "default")
	ctx := context.Background()
	if err := migrate.EnsureDatabase(ctx, conn, "x; DROP DATABASE default"); err == nil {
		t.Fatal("EnsureDatabase accepted an injected name")
	}
	if _, err := migrate.Apply(ctx, conn, "a-b", load(t), zerolog.Nop()); err == nil {
		t.Fatal("Apply accepted a bad name")
	}
}

// TestViewsReadFinal checks on the real server (18.16 in CI) that the views
// collapse duplicates: FINAL inside a view is what auditors rely on.
func TestViewsReadFinal(t *testing.T) {
	t.Parallel()
	db, ctx := fresh(t)
	conn := chtest.Open(t, server, db)
	if _, err := migrate.Apply(ctx, conn, db, load(t), zerolog.Nop()); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	insert := "INSERT INTO " + db + ".decisions (event_id, request_id, event_time, event_time_us, action, resource_type, resource_id, principal_id, decision, code, stage, stream_seq)"
	at := time.Date(2026, 11, 25, 10, 30, 0, 0, time.UTC)
	rows := []struct {
		id, action, decision, code string
		seq                        uint64
	}{
		{"r1", "model.retrain", "allow", "", 1},
		{"r1", "model.retrain", "allow", "", 2}, // redelivered
		{"r2", "model.retrain", "deny", "policy_denied", 3},
		{"r3", "dataset.promote", "deny", "policy_denied", 4},
		{"r3", "dataset.promote", "deny", "policy_denied", 5}, // redelivered
	}
	for _, r := range rows {
		// One insert per row, as separate parts, so FINAL has work to do.
		b, err := conn.PrepareBatch(ctx, insert)
		if err != nil {
			t.Fatalf("prepare insert: %v", err)
		}
		if err := b.Append("e-"+r.id, r.id, at, uint64(at.UnixMicro()), r.action, "Model", "m-"+r.id, "alice", r.decision, r.code, "policy", r.seq); err != nil {
			t.Fatalf("append: %v", err)
		}
		if err := b.Send(); err != nil {
			t.Fatalf("insert: %v", err)
		}
	}
	for _, c := range []struct {
		query string
		want  uint64
	}{
		{"SELECT count() FROM " + db + ".decisions_final", 3},
		{"SELECT count() FROM " + db + ".retrains", 2},
		{"SELECT count() FROM " + db + ".retrains WHERE decision = 'allow' AND model = 'm-r1'", 1},
		{"SELECT count() FROM " + db + ".dataset_promotions", 1},
		{"SELECT sum(denies) FROM " + db + ".denies_by_code_hourly WHERE code = 'policy_denied' AND hour = toDateTime('2026-11-25 10:00:00', 'UTC')", 2},
		{"SELECT max(stream_seq) FROM " + db + ".decisions_final WHERE request_id = 'r1'", 2},
		// The views of the auditors' questions count a redelivery once too.
		{"SELECT count() FROM " + db + ".model_changes WHERE model = 'm-r1'", 1},
		{"SELECT count() FROM " + db + ".resource_access WHERE principal_id = 'alice'", 3},
		{"SELECT sum(decisions) FROM " + db + ".deny_rate_hourly WHERE action = 'model.retrain' AND code = 'policy_denied'", 2},
		{"SELECT sum(denies) FROM " + db + ".deny_rate_hourly WHERE action = 'model.retrain'", 1},
		{"SELECT count() FROM " + db + ".deny_rate_hourly WHERE action = 'model.retrain' AND code = 'policy_denied' AND deny_rate = 0.5", 1},
		{"SELECT count() FROM " + db + ".approvals_used", 0},
		{"SELECT count() FROM " + db + ".dataset_production", 0},
	} {
		if got := chtest.Count(t, conn, c.query); got != c.want {
			t.Errorf("%s = %d, want %d", c.query, got, c.want)
		}
	}
}
