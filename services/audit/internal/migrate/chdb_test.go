//go:build chdb

package migrate

// This file runs the migrations, rendered for a current ClickHouse, and the
// views and documented queries, on the current engine that chdb embeds
// (libchdb.so from the npm package chdb, loaded through chdb-go from
// CHDB_LIB_PATH). It needs that library, so it is behind the chdb build
// tag: `make test` installs the library (scripts/install-chdb.sh) and runs
// it with `-tags chdb`.

import (
	"os"
	"strings"
	"testing"

	"github.com/chdb-io/chdb-go/chdb"

	"github.com/aigov/aigov/services/audit/migrations"
)

func chdbQuery(t *testing.T, s *chdb.Session, q string) string {
	t.Helper()
	r, err := s.Query(q, "TSVRaw")
	if err == nil && r != nil {
		err = r.Error()
	}
	if err != nil {
		t.Fatalf("chdb: %v\nquery: %s", err, q)
	}
	defer r.Free()
	return strings.TrimSpace(r.String())
}

func TestMigrationsAndQueriesOnCurrentEngine(t *testing.T) {
	if os.Getenv("CHDB_LIB_PATH") == "" {
		t.Fatal("CHDB_LIB_PATH must name libchdb.so (scripts/install-chdb.sh installs it)")
	}
	s, err := chdb.NewSession(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	version := chdbQuery(t, s, "SELECT version()")
	f := FeaturesFor(version)
	f.RetentionDays = 400
	if !f.DateTime64 || !f.LowCardinality || !f.TTL || !f.Codecs {
		t.Fatalf("engine %s: features %+v, want all of them", version, f)
	}
	t.Logf("chdb engine %s", version)

	const db = "aigov"
	chdbQuery(t, s, "CREATE DATABASE IF NOT EXISTS "+db)
	ms, err := Load(migrations.FS())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range ms {
		stmts, err := m.StatementsFor(db, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, st := range stmts {
			chdbQuery(t, s, st)
		}
	}
	// The current-version DDL took: native sub-second times, dictionary
	// strings, codecs and the retention TTL.
	for q, want := range map[string]string{
		"SELECT type FROM system.columns WHERE database = 'aigov' AND table = 'approvals' AND name = 'event_time'":          "DateTime64(6, 'UTC')",
		"SELECT type FROM system.columns WHERE database = 'aigov' AND table = 'approvals' AND name = 'status'":              "LowCardinality(String)",
		"SELECT compression_codec FROM system.columns WHERE database = 'aigov' AND table = 'approvals' AND name = 'data'":   "CODEC(ZSTD(3))",
		"SELECT position(create_table_query, 'TTL') > 0 FROM system.tables WHERE database = 'aigov' AND name = 'approvals'": "1",
	} {
		if got := chdbQuery(t, s, q); got != want {
			t.Errorf("%s\n got %q, want %q", q, got, want)
		}
	}

	// A few decisions, one inserted twice as a redelivery would.
	cols := "event_id, request_id, source, event_time, event_time_us, received_at, action, resource_type, resource_id, " +
		"principal_id, email, decision, code, stage, context, stream_seq, inserted_at, inserted_us"
	ins := "INSERT INTO aigov.decisions (" + cols + ") VALUES " +
		"('e1','r1','aigov/policy','2026-11-25 10:00:00',1795600800123456,'2026-11-25 10:00:00','model.retrain','Model','fraud-detector','p#alice','alice@aigov.example','allow','','policy','{\"environment\":\"staging\"}',1,now(),1795600800200000)," +
		"('e2','r2','aigov/policy','2026-11-25 10:00:01',1795600801000001,'2026-11-25 10:00:01','dataset.promote','Dataset','customers-2026','p#bob','bob@aigov.example','allow','','policy','{\"environment\":\"production\"}',2,now(),1795600801100000)," +
		"('e3','r3','aigov/authn','2026-11-25 10:00:02',1795600802000000,'2026-11-25 10:00:02','model.retrain','Model','fraud-detector','','','deny','token_expired','authn','{}',3,now(),1795600802100000)"
	chdbQuery(t, s, ins)
	chdbQuery(t, s, ins) // redelivered
	// An approval given and its use by an allowed request.
	chdbQuery(t, s, "INSERT INTO aigov.approvals (event_id, type, approval_id, status, request_id, action, resource_type, resource_id, "+
		"approver, requester, reason, event_time, event_time_us, stream, stream_seq, inserted_at) VALUES "+
		"('g1','dev.aigov.decision.v1','d:rita','granted','rg','model.deploy','Model','churn','p#rita','','','2026-11-25 10:00:03',1795600803000000,'AIGOV_DECISIONS',4,now()),"+
		"('u1','dev.aigov.approval.used.v1','d:rita','used','rd','model.deploy','Model','churn','p#rita','p#erin','teams risk','2026-11-25 10:00:04',1795600804000000,'AIGOV_GOVERNANCE',1,now())")
	for q, want := range map[string]string{
		"SELECT request_id, principal_id, approver, teams FROM aigov.approvals_used":                                                                    "rd\tp#erin\tp#rita\tteams risk",
		"SELECT count(), uniqExact(request_id) FROM aigov.decisions FINAL":                                                                              "3\t3",
		"SELECT count() FROM aigov.decisions_final":                                                                                                     "3",
		"SELECT count() FROM aigov.model_changes WHERE model = 'fraud-detector' AND action IN ('model.retrain', 'model.update_hyperparameters')":        "2",
		"SELECT dataset, email FROM aigov.dataset_production WHERE decision = 'allow'":                                                                  "customers-2026\tbob@aigov.example",
		"SELECT count() FROM aigov.resource_access WHERE email = 'alice@aigov.example'":                                                                 "1",
		"SELECT action, code, denies, decisions FROM aigov.deny_rate_hourly WHERE code != ''":                                                           "model.retrain\ttoken_expired\t1\t2",
		"SELECT sum(denies) FROM aigov.denies_by_code_hourly":                                                                                           "1",
		"SELECT count() FROM aigov.retrains":                                                                                                            "2",
		"SELECT count() FROM aigov.dataset_promotions":                                                                                                  "1",
		"SELECT quantilesExact(0.5, 0.99)(inserted_us - event_time_us) FROM aigov.decisions FINAL WHERE event_time > toDateTime('2026-01-01 00:00:00')": "[99999,100000]",
	} {
		if got := chdbQuery(t, s, q); got != want {
			t.Errorf("%s\n got %q, want %q", q, got, want)
		}
	}
	// The README's lag query, as documented.
	chdbQuery(t, s, "SELECT quantiles(0.5, 0.99)(inserted_us - event_time_us) FROM aigov.decisions FINAL WHERE event_time > now() - 3600")
	// Every view answers on the current engine.
	views := strings.Fields(chdbQuery(t, s, "SELECT name FROM system.tables WHERE database = 'aigov' AND engine = 'View' ORDER BY name"))
	if len(views) < 10 {
		t.Fatalf("only %d views: %v", len(views), views)
	}
	for _, v := range views {
		chdbQuery(t, s, "SELECT * FROM aigov."+v+" LIMIT 1")
	}
}
