package main

import (
	"context"
	"encoding/json"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/audit/internal/chtest"
	"github.com/aigov/aigov/services/devenv/clickhouse"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
)

var server *clickhouse.Server

func TestMain(m *testing.M) { os.Exit(chtest.Main(m, &server)) }

func TestRunRejectsBadConfig(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), servicekit.MapLookup(map[string]string{
		"AIGOV_AUDIT_FLUSH_INTERVAL": "2m",
		"AIGOV_CLICKHOUSE_DATABASE":  "no-dashes",
	}))
	if err == nil {
		t.Fatal("run accepted a bad configuration")
	}
	for _, want := range []string{"AIGOV_AUDIT_FLUSH_INTERVAL", "AIGOV_CLICKHOUSE_DATABASE"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not report %s", err, want)
		}
	}
}

// TestRunWritesAndStops runs the whole binary's logic as the audit role:
// a decision published on the bus becomes a row, and cancelling the
// context (SIGTERM) stops it cleanly.
func TestRunWritesAndStops(t *testing.T) {
	t.Parallel()
	ns := natsdev.StartT(t, natsdev.Options{})
	db := chtest.DatabaseName(t)
	chtest.DropAtCleanup(t, server, db)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, servicekit.MapLookup(map[string]string{
			"AIGOV_NATS_URL":                 ns.URL(),
			"AIGOV_NATS_TLS_CA":              ns.CAFile(),
			"AIGOV_NATS_PASSWORD":            ns.Password(schemas.RoleAudit),
			"AIGOV_HTTP_ADDR":                "127.0.0.1:0",
			"AIGOV_LOG_LEVEL":                "warn",
			"AIGOV_CLICKHOUSE_ADDR":          server.Addr(),
			"AIGOV_CLICKHOUSE_DATABASE":      db,
			"AIGOV_AUDIT_SIGNING_KEY":        t.TempDir() + "/k.pem",
			"AIGOV_AUDIT_SIGNING_KEY_CREATE": "true",
			"AIGOV_TRUST_FILE":               devkeys.New(t).TrustFile,
		}))
	}()

	_, js := ns.ConnectT(t, natsdev.AdminUser)
	at := time.Now().UTC()
	d := schemas.Decision{RequestID: "req-main", Action: "model.retrain", Resource: schemas.Resource{Type: "Model", ID: "m"},
		Decision: schemas.Deny, Code: schemas.CodeMissingToken, Stage: schemas.StageAuthn, Timings: schemas.Timings{ReceivedAt: at, DecidedAt: at}}
	id := schemas.DerivedID(d.RequestID, "decision")
	ev, err := schemas.NewEvent(id, "aigov/authn", schemas.TypeDecision, at, d)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(ev)
	m := nats.NewMsg(schemas.NewSubjects("").Decision(d.Action))
	m.Data = raw
	m.Header.Set(schemas.HeaderMsgID, id)
	// The stream exists once the service has started; publish until it does.
	deadline := time.Now().Add(20 * time.Second)
	for {
		pctx, pcancel := context.WithTimeout(ctx, time.Second)
		_, err := js.PublishMsg(pctx, m)
		pcancel()
		if err == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run returned early: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("publish: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}

	conn := chtest.Open(t, server, db)
	for deadline := time.Now().Add(20 * time.Second); ; {
		var n uint64
		// The table may not exist for a moment; treat that like zero rows.
		_ = conn.QueryRow(ctx, "SELECT count() FROM "+db+".decisions FINAL WHERE request_id = 'req-main' AND code = 'missing_token'").Scan(&n)
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the decision did not reach ClickHouse within 20s")
		}
		time.Sleep(50 * time.Millisecond)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run after cancel: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30s of cancel")
	}
}
