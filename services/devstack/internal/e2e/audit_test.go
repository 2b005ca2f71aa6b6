package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// TestAuditNeverDrops runs the whole stack under a steady load from several
// principals while, first, ClickHouse is stopped for 30 s and started again
// and, then, the audit writer is SIGKILLed in the middle of a batch and
// started again. Every decision must end up as exactly one row, no view
// may show a duplicate, and `aigov audit verify` must pass, then catch an
// edited row.
func TestAuditNeverDrops(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	root, bin := built.root, built.bin
	personas := map[string]idp.Persona{}
	for i := range 6 {
		name := fmt.Sprintf("loader-%d", i)
		groups := []string{"data-scientists"}
		if i == 5 {
			groups = nil // an outsider: policy denies
		}
		personas[name] = idp.Persona{Subject: name, Email: name + "@load.example", Name: name, Groups: groups}
	}
	st, err := stack.Start(ctx, stack.Options{Root: root, Dir: t.TempDir(), BinDir: bin, Personas: personas, LogLevel: "warn"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })
	tokens := []string{"not-a-jwt"} // an authn deny now and then
	for name := range personas {
		tok, err := st.IdP.Token(ctx, name, idp.WithTTL(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		tokens = append(tokens, tok)
	}

	ld := startLoad(ctx, st, tokens, 200)
	time.Sleep(2 * time.Second)

	// 1. ClickHouse goes away for 30 s under load.
	t.Log("stopping clickhouse for 30s")
	if err := st.ClickHouse.Stop(); err != nil {
		t.Fatal(err)
	}
	outage := time.Now()
	if err := waitReadyz(ctx, st.HTTPAddr("audit"), false, 10*time.Second); err != nil {
		t.Errorf("audit during the clickhouse outage: %v", err)
	}
	time.Sleep(time.Until(outage.Add(30 * time.Second)))
	if err := waitReadyz(ctx, st.HTTPAddr("audit"), false, time.Second); err != nil {
		t.Errorf("audit at the end of the clickhouse outage: %v", err)
	}
	if err := st.ClickHouse.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if err := waitReadyz(ctx, st.HTTPAddr("audit"), true, 20*time.Second); err != nil {
		t.Fatalf("audit after clickhouse came back: %v", err)
	}
	t.Logf("clickhouse back after %s; %d decisions so far", time.Since(outage).Round(time.Millisecond), ld.decided())

	// 2. The writer dies mid-batch: wait until it holds fetched, unacked
	// messages, then SIGKILL it.
	time.Sleep(2 * time.Second)
	cons, err := st.AdminJS.Consumer(ctx, "AIGOV_DECISIONS", "audit-decisions")
	if err != nil {
		t.Fatal(err)
	}
	var pending int
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if pending = info.NumAckPending; pending > 0 {
			break
		}
	}
	if pending == 0 {
		t.Fatal("the audit writer never held an unacked message to be killed with")
	}
	if err := st.KillService("audit"); err != nil {
		t.Fatal(err)
	}
	t.Logf("audit writer killed with %d messages fetched and not acked", pending)
	time.Sleep(time.Second) // the load goes on: a backlog builds in JetStream
	if err := st.StartService(ctx, "audit"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	ids, failures := ld.stop()
	t.Logf("load stopped: %d decisions, %d requests without one", len(ids), failures)
	if failures > 0 {
		t.Errorf("%d requests got no decision", failures)
	}

	// Rows = decisions, exactly.
	sinfo, err := st.AdminJS.Stream(ctx, "AIGOV_DECISIONS")
	if err != nil {
		t.Fatal(err)
	}
	si, err := sinfo.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if si.State.Msgs != uint64(len(ids)) {
		t.Errorf("decisions stream holds %d messages, %d decisions received", si.State.Msgs, len(ids))
	}
	var rows uint64
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if err := st.DB.QueryRow(ctx, "SELECT count() FROM aigov.decisions FINAL").Scan(&rows); err == nil && rows >= uint64(len(ids)) {
			break
		}
	}
	if rows != uint64(len(ids)) {
		t.Fatalf("%d decision rows for %d decisions", rows, len(ids))
	}
	// The very same requests: every decision received has its row.
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	idRows, err := st.DB.Query(ctx, "SELECT request_id FROM aigov.decisions FINAL")
	if err != nil {
		t.Fatal(err)
	}
	for idRows.Next() {
		var id string
		if err := idRows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		if !want[id] {
			t.Errorf("row for request %s, which got no decision or got two rows", id)
		}
		delete(want, id)
	}
	idRows.Close()
	if len(want) != 0 {
		t.Errorf("%d decisions without a row", len(want))
	}
	checkNoVisibleDuplicates(ctx, t, st, uint64(len(ids)))

	// The chain holds across the outage and the crash, and an edit breaks it.
	if out, code := auditVerify(ctx, t, st, bin); code != 0 {
		t.Fatalf("aigov audit verify after outage and crash: exit %d\n%s", code, out)
	}
	if err := st.DB.Exec(ctx, "ALTER TABLE aigov.event_log UPDATE data = concat(data, ' ') WHERE stream = 'AIGOV_DECISIONS' AND stream_seq = 100"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		var n uint64
		if err := st.DB.QueryRow(ctx, "SELECT count() FROM system.mutations WHERE database = 'aigov' AND is_done = 0").Scan(&n); err == nil && n == 0 {
			break
		}
	}
	out, code := auditVerify(ctx, t, st, bin)
	if code != 3 || !strings.Contains(out, "AIGOV_DECISIONS") || !strings.Contains(out, "first broken link at seq 100") {
		t.Fatalf("aigov audit verify after ALTER UPDATE of seq 100: exit %d, want 3 naming seq 100\n%s", code, out)
	}
}

// checkNoVisibleDuplicates asserts that every view and documented query
// that lists decisions shows each request once, and that the aggregating
// ones count each decision once.
func checkNoVisibleDuplicates(ctx context.Context, t *testing.T, st *stack.Stack, decisions uint64) {
	t.Helper()
	rows, err := st.DB.Query(ctx, "SELECT DISTINCT table FROM system.columns WHERE database = 'aigov' AND name = 'request_id' AND table IN (SELECT name FROM system.tables WHERE database = 'aigov' AND engine = 'View')")
	if err != nil {
		t.Fatal(err)
	}
	var views []string
	for rows.Next() {
		var v string
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		views = append(views, v)
	}
	rows.Close()
	if len(views) < 5 {
		t.Fatalf("only %d views with a request_id: %v", len(views), views)
	}
	queries := map[string]string{
		"decisions FINAL":          "SELECT count(), uniqExact(request_id) FROM aigov.decisions FINAL",
		"documented: what did Z":   "SELECT count(), uniqExact(request_id) FROM aigov.resource_access WHERE principal_id LIKE '%#loader-1'",
		"documented: retrains":     "SELECT count(), uniqExact(request_id) FROM aigov.model_changes WHERE model = 'fraud-detector' AND action IN ('model.retrain', 'model.update_hyperparameters')",
		"event_log_final":          "SELECT count(), uniqExact(stream, stream_seq) FROM aigov.event_log_final",
		"event_log_final decision": "SELECT count(), uniqExact(event_id) FROM aigov.event_log_final WHERE stream = 'AIGOV_DECISIONS'",
	}
	for _, v := range views {
		queries["view "+v] = "SELECT count(), uniqExact(request_id) FROM aigov." + v
	}
	for name, q := range queries {
		var n, u uint64
		if err := st.DB.QueryRow(ctx, q).Scan(&n, &u); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n != u {
			t.Errorf("%s: %d rows for %d distinct keys", name, n, u)
		}
	}
	var logRows uint64
	if err := st.DB.QueryRow(ctx, "SELECT count() FROM aigov.event_log_final WHERE stream = 'AIGOV_DECISIONS' AND type = ?", schemas.TypeDecision).Scan(&logRows); err != nil {
		t.Fatal(err)
	}
	if logRows != decisions {
		t.Errorf("event_log_final has %d decisions, want %d", logRows, decisions)
	}
	// The aggregating views count each decision once.
	for name, q := range map[string]string{
		"deny_rate_hourly":      "SELECT toUInt64(sum(decisions)) FROM (SELECT hour, action, any(decisions) AS decisions FROM aigov.deny_rate_hourly GROUP BY hour, action)",
		"denies_by_code_hourly": "SELECT toUInt64(sum(denies)) + (SELECT count() FROM aigov.decisions FINAL WHERE decision = 'allow') FROM aigov.denies_by_code_hourly",
	} {
		var n uint64
		if err := st.DB.QueryRow(ctx, q).Scan(&n); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if n != decisions {
			t.Errorf("%s counts %d decisions, want %d", name, n, decisions)
		}
	}
}

// auditVerify runs the built `aigov audit verify` against the stack.
func auditVerify(ctx context.Context, t *testing.T, st *stack.Stack, bin string) (string, int) {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(bin, "aigov"), "audit", "verify",
		"--nats", st.NATS.URL(), "--tls-ca", st.NATS.CAFile(), "--user", schemas.RoleAudit, "--password", st.NATS.Password(schemas.RoleAudit),
		"--clickhouse", st.ClickHouse.SecureAddr(), "--clickhouse-tls", "--clickhouse-tls-ca", st.ClickHouse.CAFile(),
		"--database", stack.Database, "--public-key", st.AuditKeyPath()+".pub")
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(out), ee.ExitCode()
	}
	if err != nil {
		t.Fatal(err)
	}
	return string(out), 0
}

// waitReadyz waits until a service's /readyz answers ready (200) or not.
func waitReadyz(ctx context.Context, addr string, ready bool, timeout time.Duration) error {
	hc := &http.Client{Timeout: time.Second}
	last := "no answer"
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); {
		resp, err := hc.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			last = resp.Status
			if (resp.StatusCode == http.StatusOK) == ready {
				return nil
			}
		} else if !ready {
			return nil // not answering is not ready
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("/readyz still %s after %s, want ready=%v", last, timeout, ready)
}

// load sends requests at a fixed rate from a set of tokens until stopped.
// In-flight requests are bounded, so it cannot grow without limit.
type load struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	mu     sync.Mutex
	ids    []string
	failed int
}

func startLoad(ctx context.Context, st *stack.Stack, tokens []string, rate int) *load {
	ctx, cancel := context.WithCancel(ctx)
	l := &load{cancel: cancel}
	req := schemas.Request{Action: "model.retrain", Resource: schemas.Resource{Type: "Model", ID: "fraud-detector"}, Context: map[string]any{"environment": "staging"}}
	sem := make(chan struct{}, 256)
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		tick := time.NewTicker(time.Second / time.Duration(rate))
		defer tick.Stop()
		for i := 0; ; i++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				return
			}
			l.wg.Add(1)
			go func(tok string) {
				defer func() { <-sem; l.wg.Done() }()
				// The call outlives a stop of the load: a request sent is
				// waited for, so every decision is counted.
				cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
				defer ccancel()
				d, err := st.Client.Authorize(cctx, client.Call{Token: tok, Request: req})
				l.mu.Lock()
				defer l.mu.Unlock()
				if err != nil {
					l.failed++
					return
				}
				l.ids = append(l.ids, d.RequestID)
			}(tokens[i%len(tokens)])
		}
	}()
	return l
}

func (l *load) decided() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.ids)
}

// stop ends the load and waits for every request in flight.
func (l *load) stop() ([]string, int) {
	l.cancel()
	l.wg.Wait()
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.ids, l.failed
}
