package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// pollEvery is how often the benchmarks count the audited rows; the
// publish→visible lag they report is exact to within this.
const pollEvery = 20 * time.Millisecond

// rowPoller counts the rows of the decisions table every pollEvery until
// it holds target rows, so that the time each row became visible in
// ClickHouse can be read back. Row k (in stream order) is visible at the
// first sample counting more than k rows, because the audit lane commits
// one stream in sequence order. This is the end of the pipe as a reader
// sees it: inserted_us, taken by the writer before the insert, misses the
// insert itself.
type rowPoller struct {
	samples []rowSample
	err     error
	done    chan struct{}
	cancel  context.CancelFunc
}

type rowSample struct {
	at   time.Time
	rows uint64
}

func startRowPoller(ctx context.Context, db driver.Conn, target uint64) *rowPoller {
	ctx, cancel := context.WithCancel(ctx)
	p := &rowPoller{done: make(chan struct{}), cancel: cancel}
	go func() {
		defer close(p.done)
		tick := time.NewTicker(pollEvery)
		defer tick.Stop()
		for {
			var c uint64
			if err := db.QueryRow(ctx, "SELECT count() FROM "+stack.Database+".decisions").Scan(&c); err != nil {
				if ctx.Err() == nil {
					p.err = fmt.Errorf("bench: count rows: %w", err)
				}
				return
			}
			p.samples = append(p.samples, rowSample{time.Now(), c})
			if c >= target {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

// wait lets the poller run until it has seen the target, at most timeout.
func (p *rowPoller) wait(timeout time.Duration) error {
	select {
	case <-p.done:
	case <-time.After(timeout):
	}
	p.stop()
	return p.err
}

func (p *rowPoller) stop() {
	p.cancel()
	<-p.done
}

// lags returns, sorted, how long after at[k] row k became visible, for
// the rows seen; at must be in stream order. Call it after wait.
func (p *rowPoller) lags(at []time.Time) []time.Duration {
	out := make([]time.Duration, 0, len(at))
	j := 0
	for k := range at {
		for j < len(p.samples) && p.samples[j].rows < uint64(k+1) {
			j++
		}
		if j == len(p.samples) {
			break
		}
		out = append(out, p.samples[j].at.Sub(at[k]))
	}
	slices.Sort(out)
	return out
}

// benchAudit measures the audit end of the pipe alone: it publishes
// decision events, built as the policy service builds them, straight onto
// the decisions stream at an open-loop rate, while counting the rows
// ClickHouse shows. The authn→policy pipeline caps below 10k req/s on two
// cores; this drives the audit writer at the rate its target names.
func benchAudit(ctx context.Context, dir string, rate int, duration time.Duration, out io.Writer) error {
	st, js, err := startAuditBench(ctx, dir, out)
	if err != nil {
		return err
	}
	defer st.Stop()
	defer js.Conn().Close()
	subjects := schemas.NewSubjects("")
	n := int(int64(rate) * int64(duration) / int64(time.Second))
	sent := make([]time.Time, n)

	// The lane writes the stream in sequence order and the events are
	// published in order on one connection: see rowPoller.
	poll := startRowPoller(ctx, st.DB, uint64(n))
	defer poll.stop()

	fmt.Fprintf(out, "\n== publishing %d decision events at %d/s for %s straight onto the decisions stream\n", n, rate, duration)
	interval := time.Second / time.Duration(rate)
	start := time.Now()
	var behind time.Duration
	for i := 0; i < n && ctx.Err() == nil; i++ {
		// Open loop: event i is due at start+i*interval, whatever the
		// writer does; a late publisher is reported, not hidden.
		due := start.Add(time.Duration(i) * interval)
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		} else {
			behind = max(behind, -d)
		}
		m, err := auditBenchEvent(subjects, i, time.Now())
		if err != nil {
			return err
		}
		sent[i] = time.Now()
		if _, err := js.PublishMsgAsync(m); err != nil {
			return fmt.Errorf("publish event %d: %w", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		return fmt.Errorf("bench: %d publishes not acknowledged after 30s", js.PublishAsyncPending())
	}
	elapsed := time.Since(start)

	if err := poll.wait(2 * time.Minute); err != nil {
		return err
	}
	visible := poll.lags(sent)

	var rows uint64
	if err := st.DB.QueryRow(ctx, "SELECT count() FROM "+stack.Database+".decisions FINAL").Scan(&rows); err != nil {
		return fmt.Errorf("bench: count rows: %w", err)
	}
	var lag []float64
	if err := st.DB.QueryRow(ctx, "SELECT quantiles(0.5, 0.99)(toInt64(inserted_us) - toInt64(event_time_us)) FROM "+
		stack.Database+".decisions FINAL").Scan(&lag); err != nil {
		return fmt.Errorf("bench: audit lag: %w", err)
	}
	fmt.Fprintf(out, "\nmachine      %s, %d cores, %s\n", cpuModel(), runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(out, "nats         embedded, file store, default fsync (every 2 min): figures are not for sync_interval always\n")
	fmt.Fprintf(out, "published    %d events in %s (%.0f/s; publisher at most %s behind schedule)\n",
		n, elapsed.Round(time.Millisecond), float64(n)/elapsed.Seconds(), behind.Round(time.Millisecond))
	fmt.Fprintf(out, "audit        %d rows for %d events (%s)\n", rows, n, completeness(rows, int64(n)))
	if len(visible) > 0 {
		fmt.Fprintf(out, "audit lag    p50 %s  p99 %s  max %s (published → row visible to a count() in ClickHouse; polled every %s)\n",
			pct(visible, 0.50), pct(visible, 0.99), visible[len(visible)-1].Round(time.Microsecond), pollEvery)
	}
	if len(lag) == 2 {
		fmt.Fprintf(out, "             p50 %s  p99 %s (event time → writer starts the insert: inserted_us − event_time_us)\n",
			time.Duration(lag[0])*time.Microsecond, time.Duration(lag[1])*time.Microsecond)
	}
	if rows != uint64(n) || len(visible) != n {
		return fmt.Errorf("bench: %d audit rows for %d events", rows, n)
	}
	return nil
}

// startAuditBench builds and starts a fresh stack in dir and connects as
// the policy service's NATS user: the benches publish exactly what it may
// publish. The caller stops the stack.
func startAuditBench(ctx context.Context, dir string, out io.Writer) (*stack.Stack, jetstream.JetStream, error) {
	root, err := stack.FindRoot()
	if err != nil {
		return nil, nil, err
	}
	work, _ := filepath.Abs(dir)
	_ = os.RemoveAll(work)
	bin := filepath.Join(work, "bin")
	if err := stack.Build(ctx, root, bin); err != nil {
		return nil, nil, err
	}
	st, err := stack.Start(ctx, stack.Options{Root: root, Dir: work, BinDir: bin, LogLevel: "warn", Progress: out})
	if err != nil {
		return nil, nil, err
	}
	nc, err := st.NATS.Connect(schemas.RolePolicy)
	if err != nil {
		st.Stop()
		return nil, nil, err
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		nc.Close()
		st.Stop()
		return nil, nil, err
	}
	return st, js, nil
}

// benchDrain measures the audit writer's sustained rate through JetStream:
// with the audit stopped (and the reaper, which also reads the decisions
// stream), it publishes n decision events, then starts the audit and times
// until ClickHouse holds them all. JetStream's fetch, the per-message copy
// and the acks are in this figure, on the same cores as ClickHouse and
// NATS; the publisher is not.
func benchDrain(ctx context.Context, dir string, n int, out io.Writer) error {
	st, js, err := startAuditBench(ctx, dir, out)
	if err != nil {
		return err
	}
	defer st.Stop()
	defer js.Conn().Close()
	for _, name := range []string{"audit", "reaper"} {
		if err := st.StopService(name); err != nil {
			return fmt.Errorf("bench: stop %s: %w", name, err)
		}
	}
	subjects := schemas.NewSubjects("")
	fmt.Fprintf(out, "\n== publishing %d decision events with the audit stopped\n", n)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		m, err := auditBenchEvent(subjects, i, time.Now())
		if err != nil {
			return err
		}
		if _, err := js.PublishMsgAsync(m); err != nil {
			return fmt.Errorf("publish event %d: %w", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		return fmt.Errorf("bench: %d publishes not acknowledged after 2m", js.PublishAsyncPending())
	}
	fmt.Fprintf(out, "== starting the audit on the backlog\n")
	start := time.Now()
	poll := startRowPoller(ctx, st.DB, uint64(n))
	defer poll.stop()
	if err := st.StartService(ctx, "audit"); err != nil {
		return err
	}
	ready := time.Since(start)
	peak := st.PeakRSS("audit")
	if err := poll.wait(10 * time.Minute); err != nil {
		return err
	}
	var rows uint64
	if err := st.DB.QueryRow(ctx, "SELECT count() FROM "+stack.Database+".decisions FINAL").Scan(&rows); err != nil {
		return fmt.Errorf("bench: count rows: %w", err)
	}
	last := poll.samples[len(poll.samples)-1]
	took := last.at.Sub(start)
	if p := st.PeakRSS("audit"); p > peak {
		peak = p
	}
	fmt.Fprintf(out, "\nmachine      %s, %d cores, %s\n", cpuModel(), runtime.NumCPU(), runtime.Version())
	fmt.Fprintf(out, "nats         embedded, file store, default fsync (every 2 min): figures are not for sync_interval always\n")
	fmt.Fprintf(out, "drained      %d events in %s from the audit's start (ready after %s): %.0f events/s\n",
		n, took.Round(time.Millisecond), ready.Round(time.Millisecond), float64(n)/took.Seconds())
	if peak > 0 {
		fmt.Fprintf(out, "audit RSS    peak %d MiB\n", peak>>20)
	}
	fmt.Fprintf(out, "audit        %d rows for %d events (%s)\n", rows, n, completeness(rows, int64(n)))
	if rows != uint64(n) {
		return fmt.Errorf("bench: %d audit rows for %d events", rows, n)
	}
	return nil
}

// auditBenchEvent is decision i as the policy service publishes it: a
// CloudEvent with a schemas.Decision, on the decision subject of its
// action, with its event id as Nats-Msg-Id.
func auditBenchEvent(subjects schemas.Subjects, i int, now time.Time) (*nats.Msg, error) {
	user := fmt.Sprintf("user-%04d", i%50)
	issuer := "https://idp.load.example"
	auth := now.Add(-time.Hour)
	verified := now.Add(-400 * time.Microsecond)
	d := schemas.Decision{
		RequestID: fmt.Sprintf("bench-%08d", i),
		Action:    "model.retrain",
		Resource:  schemas.Resource{Type: "Model", ID: "fraud-detector"},
		Context:   map[string]any{"environment": "staging"},
		Principal: &schemas.Principal{
			ID: schemas.PrincipalID(issuer, user), Type: schemas.PrincipalUser, Issuer: issuer, Subject: user,
			Email: user + "@load.example", Groups: []string{"data-scientists"}, Scopes: []string{"openid", "aigov"},
			SessionID: "sid-" + user, AuthTime: &auth, IssuedAt: auth, ExpiresAt: auth.Add(2 * time.Hour),
		},
		Decision:         schemas.Allow,
		Stage:            schemas.StagePolicy,
		PolicyIDs:        []string{"retrain-by-scientists"},
		PolicyVersion:    "sha256:bench",
		SessionKey:       "sk-" + user,
		TokenFingerprint: schemas.Fingerprint("token-" + user),
		Timings: schemas.Timings{ReceivedAt: now.Add(-time.Millisecond), VerifiedAt: &verified, DecidedAt: now,
			AuthnMicros: 600, PolicyMicros: 400, TotalMicros: 1000},
	}
	if i%10 == 9 {
		d.Decision, d.Code, d.Reason, d.PolicyIDs = schemas.Deny, schemas.CodePolicyDenied, "no permit", nil
	}
	id := schemas.DerivedID(d.RequestID, "decision")
	ev, err := schemas.NewEvent(id, "aigov/policy", schemas.TypeDecision, now, d)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode decision %d: %w", i, err)
	}
	m := nats.NewMsg(subjects.Decision(d.Action))
	m.Data = raw
	m.Header.Set(schemas.HeaderMsgID, id)
	return m, nil
}
