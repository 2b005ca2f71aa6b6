// Package chaos injects faults into a running stack under steady load and
// accounts for every request: each acknowledged request must be decided
// once and audited once, and no fault may turn a deny into an allow. The
// stack runs on a 3-node NATS cluster with the four services and
// ClickHouse as processes; `devstack chaos` and TestChaosShort use it.
package chaos

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Faults are every fault, in the order `devstack chaos` injects them.
var Faults = []string{
	"kill-authn", "kill-policy", "kill-reaper", "kill-audit", "pause-policy",
	"nats-node-kill", "nats-node-pause", "nats-restart-all", "clickhouse-outage",
	"jwks-down", "revoke-while-queued", "poison", "clock-skew",
}

// ShortFaults are the ones make test runs (TestChaosShort).
var ShortFaults = []string{"kill-policy", "nats-node-kill", "revoke-while-queued"}

// Options configure a Runner; zero values take the defaults.
type Options struct {
	// Rate of the steady open-loop load, requests per second (200).
	Rate int
	// Principals sending it, each with its own token (100); every tenth
	// is an outsider whom the policy denies.
	Principals int
	// MaxInFlight bounds the requests waiting for a decision (10000).
	MaxInFlight int
	// Before and After are how long the load runs before the fault is
	// injected and after it has ended (3 s, 4 s).
	Before, After time.Duration
	// Settle bounds the wait for every acknowledged request to reach
	// ClickHouse once the load has stopped (120 s).
	Settle time.Duration
	// Outage is how long a service stays down before its restart (5 s),
	// and ClickHouseOutage how long ClickHouse does (30 s).
	Outage, ClickHouseOutage time.Duration
	// BinDir holds the aigov CLI (for aigov audit verify).
	BinDir string
	// Progress receives a line per step; nil discards.
	Progress io.Writer
}

func (o *Options) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if o.Rate <= 0 {
		o.Rate = 200
	}
	if o.Principals <= 0 {
		o.Principals = 100
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 10000
	}
	def(&o.Before, 3*time.Second)
	def(&o.After, 4*time.Second)
	def(&o.Settle, 120*time.Second)
	def(&o.Outage, 5*time.Second)
	def(&o.ClickHouseOutage, 30*time.Second)
	if o.Progress == nil {
		o.Progress = io.Discard
	}
}

// Result is one fault's accounting.
type Result struct {
	Fault string
	// Sent requests; Acked of them were stored by JetStream (the others
	// were refused or timed out at publish: the caller knows and retries).
	Sent, Acked int
	// Decided: a decision reached the caller. Audited: acknowledged
	// requests with a row in aigov.decisions.
	Decided, Audited int
	// Lost: acknowledged requests with no row in ClickHouse (never
	// decided, or decided but never audited).
	Lost int
	// Dup: request ids with more than one row in decisions FINAL or more
	// than one distinct decision.
	Dup int
	// WrongAllow: allows the fault should have prevented, and allows of
	// outsiders or of requests that must be denied.
	WrongAllow int
	// Verify is "ok" when aigov audit verify passes.
	Verify string
	// Notes say what the fault-specific requests got (codes) and anything
	// odd.
	Notes   string
	Elapsed time.Duration
}

// OK reports whether the fault cost nothing.
func (r Result) OK() bool {
	return r.Lost == 0 && r.Dup == 0 && r.WrongAllow == 0 && r.Verify == "ok"
}

// Line is the one-line report of the fault.
func (r Result) Line() string {
	return fmt.Sprintf("fault=%s sent=%d decided=%d audited=%d lost=%d dup=%d wrong_allow=%d verify=%s",
		r.Fault, r.Sent, r.Decided, r.Audited, r.Lost, r.Dup, r.WrongAllow, r.Verify)
}

// Runner drives load and faults against one stack.
type Runner struct {
	st     *stack.Stack
	opts   Options
	nc     *nats.Conn
	js     jetstream.JetStream
	client *client.Client
	tokens []string
	// outsider marks the principals the policy denies.
	outsider []bool
	run      string
}

// Persona is the dev IdP persona of load principal i; Personas are all of
// them, for stack.Options.Personas.
func Persona(i int) string { return fmt.Sprintf("chaos-%04d", i) }

// Personas returns n load principals; every tenth has no group, so the
// policy denies it.
func Personas(n int) map[string]idp.Persona {
	out := map[string]idp.Persona{}
	for i := range n {
		groups := []string{"data-scientists"}
		if i%10 == 9 {
			groups = nil
		}
		name := Persona(i)
		out[name] = idp.Persona{Subject: name, Email: name + "@chaos.example", Name: name, Groups: groups}
	}
	return out
}

// New mints the principals' tokens and connects as the platform, with a
// connection that reconnects for as long as it takes.
func New(ctx context.Context, st *stack.Stack, opts Options) (*Runner, error) {
	opts.defaults()
	r := &Runner{st: st, opts: opts, run: schemas.NewID()[:8]}
	var err error
	if r.nc, err = st.NATS.Connect(schemas.RolePlatform, nats.MaxReconnects(-1), nats.ReconnectWait(200*time.Millisecond), nats.Timeout(5*time.Second)); err != nil {
		return nil, err
	}
	if r.js, err = jetstream.New(r.nc); err != nil {
		r.nc.Close()
		return nil, fmt.Errorf("chaos: %w", err)
	}
	if r.client, err = client.New(r.nc, client.Options{Source: "aigov-chaos", Timeout: time.Minute, Trust: st.Keys.Trust()}); err != nil {
		r.nc.Close()
		return nil, fmt.Errorf("chaos: %w", err)
	}
	for i := range opts.Principals {
		tok, err := st.IdP.Token(ctx, Persona(i), idp.WithTTL(2*time.Hour))
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("chaos: token of %s: %w", Persona(i), err)
		}
		r.tokens = append(r.tokens, tok)
		r.outsider = append(r.outsider, i%10 == 9)
	}
	return r, nil
}

// Close ends the runner's connection.
func (r *Runner) Close() {
	if r.client != nil {
		_ = r.client.Close()
	}
	if r.nc != nil {
		r.nc.Close()
	}
}

var steadyRequest = schemas.Request{Action: "model.retrain", Resource: schemas.Resource{Type: "Model", ID: "fraud-detector"}, Context: map[string]any{"environment": "staging"}}

// record is one request sent during a fault.
type record struct {
	id string
	// mustDeny: an allow for it is a wrong allow.
	mustDeny bool
	// kind groups the fault's own requests in the notes ("" for the
	// steady load).
	kind string
	// acked is known for requests sent through the client; raw publishes
	// set it from their ack.
	acked   bool
	decided bool
	// retried: its publish was not acknowledged at first and was sent
	// again under the same id.
	retried bool
}

// tracker holds a fault's records.
type tracker struct {
	mu   sync.Mutex
	recs []*record
}

func (t *tracker) add(rec *record) {
	t.mu.Lock()
	t.recs = append(t.recs, rec)
	t.mu.Unlock()
}

func (t *tracker) snapshot() []record {
	t.mu.Lock()
	defer t.mu.Unlock()
	out := make([]record, len(t.recs))
	for i, r := range t.recs {
		out[i] = *r
	}
	return out
}

// sender sends requests through the client, bounded in flight.
type sender struct {
	r    *Runner
	tr   *tracker
	sem  chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	seq  int
	pref string
}

func (r *Runner) newSender(fault string, tr *tracker) *sender {
	return &sender{r: r, tr: tr, sem: make(chan struct{}, r.opts.MaxInFlight), pref: "chaos-" + r.run + "-" + fault + "-"}
}

func (s *sender) nextID(kind string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.seq++
	if kind != "" {
		return fmt.Sprintf("%s%s-%06d", s.pref, kind, s.seq)
	}
	return fmt.Sprintf("%s%06d", s.pref, s.seq)
}

// send issues one request in the background.
func (s *sender) send(ctx context.Context, token string, req schemas.Request, mustDeny bool, kind string) {
	rec := &record{id: s.nextID(kind), mustDeny: mustDeny, kind: kind}
	s.tr.add(rec)
	s.sem <- struct{}{}
	s.wg.Go(func() {
		defer func() { <-s.sem }()
		// As a platform should: a request whose publish was not
		// acknowledged is sent again under the same id (safe: the id is
		// the Nats-Msg-Id), a bounded number of times.
		var err error
		attempt := 0
		for attempt < maxAttempts && ctx.Err() == nil {
			attempt++
			cctx, cancel := context.WithTimeout(ctx, attemptTimeout)
			_, err = s.r.client.Authorize(cctx, client.Call{ID: rec.id, Token: token, Request: req})
			cancel()
			if err == nil || errors.Is(err, client.ErrTimeout) {
				break
			}
			if sleep(ctx, 500*time.Millisecond) != nil {
				break
			}
		}
		s.tr.mu.Lock()
		defer s.tr.mu.Unlock()
		rec.retried = attempt > 1
		switch {
		case err == nil:
			rec.acked, rec.decided = true, true
		case errors.Is(err, client.ErrTimeout):
			rec.acked = true // stored; its decision did not reach us in time
		}
	})
}

// maxAttempts and attemptTimeout bound a caller's retries of one request.
const (
	maxAttempts    = 4
	attemptTimeout = 20 * time.Second
)

// steady runs the open-loop load until stop is closed: request i is due at
// start+i/rate whatever the latency of the earlier ones.
func (s *sender) steady(ctx context.Context, stop <-chan struct{}) {
	interval := time.Second / time.Duration(s.r.opts.Rate)
	start := time.Now()
	for i := 0; ; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			select {
			case <-stop:
				return
			case <-ctx.Done():
				return
			case <-time.After(d):
			}
		}
		select {
		case <-stop:
			return
		default:
		}
		p := i % len(s.r.tokens)
		s.send(ctx, s.r.tokens[p], steadyRequest, s.r.outsider[p], "")
	}
}

// Run injects one fault under load and accounts for every request.
func (r *Runner) Run(ctx context.Context, fault string) (Result, error) {
	inject, ok := r.faults()[fault]
	if !ok {
		return Result{}, fmt.Errorf("chaos: unknown fault %q (want one of %s)", fault, strings.Join(Faults, ", "))
	}
	began := time.Now()
	tr := &tracker{}
	s := r.newSender(fault, tr)
	stop := make(chan struct{})
	var load sync.WaitGroup
	load.Go(func() { s.steady(ctx, stop) })
	fmt.Fprintf(r.opts.Progress, "-- %s: load %d/s from %d principals\n", fault, r.opts.Rate, r.opts.Principals)
	notes := ""
	var ierr error
	select {
	case <-time.After(r.opts.Before):
		notes, ierr = inject(ctx, s)
	case <-ctx.Done():
		ierr = ctx.Err()
	}
	if ierr == nil {
		select {
		case <-time.After(r.opts.After):
		case <-ctx.Done():
		}
	}
	close(stop)
	load.Wait()
	s.wg.Wait()
	if ierr != nil {
		return Result{Fault: fault}, fmt.Errorf("chaos: inject %s: %w", fault, ierr)
	}
	res, err := r.account(ctx, fault, tr.snapshot(), s.pref)
	res.Elapsed = time.Since(began)
	if notes != "" {
		res.Notes = strings.TrimSpace(notes + " " + res.Notes)
	}
	return res, err
}

// row is what ClickHouse holds of one request.
type row struct {
	rows      uint64
	decisions []string
	codes     []string
	stages    []string
}

// account waits until every acknowledged request is in ClickHouse
// (bounded by Settle) and counts.
func (r *Runner) account(ctx context.Context, fault string, recs []record, prefix string) (Result, error) {
	res := Result{Fault: fault, Sent: len(recs)}
	var acked []string
	retried := 0
	for _, rec := range recs {
		if rec.retried {
			retried++
		}
		if rec.acked {
			res.Acked++
			acked = append(acked, rec.id)
		}
		if rec.decided {
			res.Decided++
		}
	}
	var got map[string]row
	var err error
	deadline := time.Now().Add(r.opts.Settle)
	for {
		got, err = r.rows(ctx, prefix)
		missing := 0
		if err == nil {
			for _, id := range acked {
				if _, ok := got[id]; !ok {
					missing++
				}
			}
		}
		if err == nil && missing == 0 || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
	if err != nil {
		return res, fmt.Errorf("chaos: read decisions: %w", err)
	}
	distinct, err := r.distinctDecisions(ctx, prefix)
	if err != nil {
		return res, fmt.Errorf("chaos: read decisions: %w", err)
	}
	kinds := map[string]map[string]int{}
	for _, rec := range recs {
		g, ok := got[rec.id]
		if rec.acked {
			if ok {
				res.Audited++
			} else {
				res.Lost++
			}
		}
		if ok && (g.rows > 1 || distinct[rec.id] > 1) {
			res.Dup++
		}
		if ok && rec.mustDeny && slices.Contains(g.decisions, schemas.Allow) {
			res.WrongAllow++
		}
		if rec.kind != "" {
			if kinds[rec.kind] == nil {
				kinds[rec.kind] = map[string]int{}
			}
			what := "none"
			if ok {
				what = strings.Join(g.decisions, "+") + "/" + strings.Join(g.codes, "+") + "@" + strings.Join(g.stages, "+")
			} else if !rec.acked {
				what = "not-acked"
			}
			kinds[rec.kind][what]++
		}
	}
	var notes []string
	for _, k := range slices.Sorted(maps.Keys(kinds)) {
		var parts []string
		for _, w := range slices.Sorted(maps.Keys(kinds[k])) {
			parts = append(parts, fmt.Sprintf("%s=%d", w, kinds[k][w]))
		}
		notes = append(notes, k+":"+strings.Join(parts, ","))
	}
	if retried > 0 {
		notes = append(notes, fmt.Sprintf("publish-retried=%d", retried))
	}
	if n := res.Sent - res.Acked; n > 0 {
		notes = append(notes, fmt.Sprintf("not-acked=%d", n))
	}
	res.Notes = strings.Join(notes, " ")
	res.Verify = r.verify(ctx)
	return res, nil
}

func (r *Runner) rows(ctx context.Context, prefix string) (map[string]row, error) {
	qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	rs, err := r.st.DB.Query(qctx, `SELECT request_id, count(), groupUniqArray(toString(decision)), groupUniqArray(code), groupUniqArray(stage)
		FROM aigov.decisions FINAL WHERE request_id LIKE ? GROUP BY request_id`, prefix+"%")
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	out := map[string]row{}
	for rs.Next() {
		var id string
		var g row
		if err := rs.Scan(&id, &g.rows, &g.decisions, &g.codes, &g.stages); err != nil {
			return nil, err
		}
		slices.Sort(g.decisions)
		slices.Sort(g.codes)
		slices.Sort(g.stages)
		out[id] = g
	}
	return out, rs.Err()
}

// distinctDecisions counts, without FINAL, the distinct decisions of every
// request decided more than once: a redelivery may be decided again, but
// never differently.
func (r *Runner) distinctDecisions(ctx context.Context, prefix string) (map[string]uint64, error) {
	qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	rs, err := r.st.DB.Query(qctx, `SELECT request_id, uniqExact(decision) AS d FROM aigov.decisions
		WHERE request_id LIKE ? GROUP BY request_id HAVING d > 1`, prefix+"%")
	if err != nil {
		return nil, err
	}
	defer rs.Close()
	out := map[string]uint64{}
	for rs.Next() {
		var id string
		var d uint64
		if err := rs.Scan(&id, &d); err != nil {
			return nil, err
		}
		out[id] = d
	}
	return out, rs.Err()
}

// verify runs aigov audit verify against the stack: "ok", or what failed.
// The audit's checkpoints trail its inserts, so a failure is retried for a
// while before it counts.
func (r *Runner) verify(ctx context.Context) string {
	last := ""
	for attempt := range 6 {
		if attempt > 0 {
			select {
			case <-ctx.Done():
				return "interrupted"
			case <-time.After(5 * time.Second):
			}
		}
		vctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		st := r.st
		cmd := exec.CommandContext(vctx, filepath.Join(r.opts.BinDir, "aigov"), "audit", "verify",
			"--nats", st.NATS.URL(), "--tls-ca", st.NATS.CAFile(), "--user", schemas.RoleAudit, "--password", st.NATS.Password(schemas.RoleAudit),
			"--clickhouse", st.ClickHouse.SecureAddr(), "--clickhouse-tls", "--clickhouse-tls-ca", st.ClickHouse.CAFile(),
			"--database", stack.Database, "--public-key", st.AuditKeyPath()+".pub")
		out, err := cmd.CombinedOutput()
		cancel()
		if err == nil {
			return "ok"
		}
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		last = lines[len(lines)-1]
	}
	fmt.Fprintf(r.opts.Progress, "   audit verify: %s\n", last)
	return "fail"
}

// injector injects one fault while the steady load runs, and returns
// notes for the report.
type injector func(ctx context.Context, s *sender) (string, error)

func (r *Runner) faults() map[string]injector {
	m := map[string]injector{
		"pause-policy":        r.pausePolicy,
		"nats-node-kill":      r.natsNodeKill,
		"nats-node-pause":     r.natsNodePause,
		"nats-restart-all":    r.natsRestartAll,
		"clickhouse-outage":   r.clickhouseOutage,
		"jwks-down":           r.jwksDown,
		"revoke-while-queued": r.revokeWhileQueued,
		"poison":              r.poison,
		"clock-skew":          r.clockSkew,
	}
	for _, svc := range []string{"authn", "policy", "reaper", "audit"} {
		m["kill-"+svc] = func(ctx context.Context, _ *sender) (string, error) {
			if err := r.st.KillService(svc); err != nil {
				return "", err
			}
			if err := sleep(ctx, r.opts.Outage); err != nil {
				return "", err
			}
			return "", r.st.StartService(ctx, svc)
		}
	}
	return m
}

func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// pausePolicy SIGSTOPs policy for longer than its consumer's AckWait, so
// the server redelivers what it held, then SIGCONTs it.
func (r *Runner) pausePolicy(ctx context.Context, _ *sender) (string, error) {
	spec, err := topology.New("").Consumer(schemas.ConsumerPolicy)
	if err != nil {
		return "", err
	}
	pause := spec.Config.AckWait + 5*time.Second
	if err := r.st.PauseService("policy"); err != nil {
		return "", err
	}
	err = sleep(ctx, pause)
	if rerr := r.st.ResumeService("policy"); rerr != nil {
		return "", rerr
	}
	return fmt.Sprintf("paused=%s", pause), err
}

// leader is the node leading the requests stream.
func (r *Runner) leader(ctx context.Context) (int, error) {
	if r.st.Cluster == nil {
		return 0, errors.New("the stack runs on one NATS server, not a cluster")
	}
	var err error
	for range 20 {
		lctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		var i int
		i, err = r.st.Cluster.StreamLeader(lctx, r.st.AdminJS, topology.New("").StreamRequests())
		cancel()
		if err == nil {
			return i, nil
		}
		if err := sleep(ctx, 500*time.Millisecond); err != nil {
			return 0, err
		}
	}
	return 0, err
}

func (r *Runner) natsNodeKill(ctx context.Context, _ *sender) (string, error) {
	i, err := r.leader(ctx)
	if err != nil {
		return "", err
	}
	if err := r.st.Cluster.Kill(i); err != nil {
		return "", err
	}
	if err := sleep(ctx, r.opts.Outage); err != nil {
		return "", err
	}
	return "killed=" + r.st.Cluster.NodeName(i) + "(requests-leader)", r.st.Cluster.Restart(ctx, i)
}

func (r *Runner) natsNodePause(ctx context.Context, _ *sender) (string, error) {
	i, err := r.leader(ctx)
	if err != nil {
		return "", err
	}
	if err := r.st.Cluster.Pause(i); err != nil {
		return "", err
	}
	err = sleep(ctx, 3*r.opts.Outage)
	if rerr := r.st.Cluster.Resume(i); rerr != nil {
		return "", rerr
	}
	return fmt.Sprintf("paused=%s(requests-leader,%s)", r.st.Cluster.NodeName(i), 3*r.opts.Outage), err
}

func (r *Runner) natsRestartAll(ctx context.Context, _ *sender) (string, error) {
	return "", r.st.RestartNATS(ctx)
}

func (r *Runner) clickhouseOutage(ctx context.Context, _ *sender) (string, error) {
	if err := r.st.ClickHouse.Stop(); err != nil {
		return "", err
	}
	if err := sleep(ctx, r.opts.ClickHouseOutage); err != nil {
		return "", err
	}
	return fmt.Sprintf("down=%s", r.opts.ClickHouseOutage), r.st.ClickHouse.Restart(ctx)
}

// jwksDown fails the IdP's JWKS: the load's tokens (known kid) keep
// verifying; tokens under a new kid must be denied jwks_unavailable.
func (r *Runner) jwksDown(ctx context.Context, s *sender) (string, error) {
	r.st.IdP.SetJWKSDown(true)
	defer r.st.IdP.SetJWKSDown(false)
	for i := range 20 {
		tok, err := idp.Rekey(r.tokens[i%9]) // insiders: only the key can deny them
		if err != nil {
			return "", err
		}
		s.send(ctx, tok, steadyRequest, true, "new-kid")
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return "", err
		}
	}
	return "", sleep(ctx, r.opts.Outage)
}

// revokeWhileQueued pauses policy, queues requests of one session past
// authn, revokes the session and resumes policy: none may be allowed.
func (r *Runner) revokeWhileQueued(ctx context.Context, s *sender) (string, error) {
	const n = 50
	tok, err := r.st.IdP.Token(ctx, Persona(0), idp.WithSessionID("chaos-revoke-"+schemas.NewID()), idp.WithTTL(time.Hour))
	if err != nil {
		return "", err
	}
	key, err := demo.SessionKeyOf(tok)
	if err != nil {
		return "", err
	}
	if err := r.st.PauseService("policy"); err != nil {
		return "", err
	}
	resumed := false
	defer func() {
		if !resumed {
			_ = r.st.ResumeService("policy")
		}
	}()
	for range n {
		s.send(ctx, tok, steadyRequest, true, "revoked-session")
	}
	// Let authn pass them into AIGOV_VERIFIED, where they wait.
	if err := sleep(ctx, 3*time.Second); err != nil {
		return "", err
	}
	rnc, err := r.st.NATS.Connect(schemas.RoleReaper)
	if err != nil {
		return "", err
	}
	defer rnc.Close()
	rjs, err := jetstream.New(rnc)
	if err != nil {
		return "", fmt.Errorf("chaos: %w", err)
	}
	sw, err := killswitch.New(ctx, rjs, topology.New(""), nil, time.Now)
	if err != nil {
		return "", fmt.Errorf("chaos: kill switch: %w", err)
	}
	if _, err := sw.Revoke(ctx, killswitch.Selector{SessionKey: key}, "chaos", "chaos: revoked while queued"); err != nil {
		return "", fmt.Errorf("chaos: revoke: %w", err)
	}
	resumed = true
	return "", r.st.ResumeService("policy")
}

// poison publishes malformed requests among the good ones: each must get
// an audited deny with a code.
func (r *Runner) poison(ctx context.Context, s *sender) (string, error) {
	tok := r.tokens[0]
	topo := topology.New("")
	event := func(id string, mutate func(map[string]any)) []byte {
		ev := map[string]any{"specversion": schemas.SpecVersion, "id": id, "source": "aigov-chaos", "type": schemas.TypeRequest,
			"time": time.Now().UTC().Format(time.RFC3339Nano), "datacontenttype": "application/json",
			"data": map[string]any{"action": steadyRequest.Action, "resource": map[string]any{"type": "Model", "id": "fraud-detector"}, "context": map[string]any{"environment": "staging"}}}
		mutate(ev)
		b, _ := json.Marshal(ev)
		return b
	}
	big := strings.Repeat("x", schemas.MaxContextBytes*2)
	kinds := []struct {
		name  string
		token string
		body  func(id string) []byte
	}{
		{"malformed-json", tok, func(id string) []byte { return []byte(`{"specversion":"1.0","id":"` + id + `", "data": {`) }},
		{"wrong-specversion", tok, func(id string) []byte { return event(id, func(ev map[string]any) { ev["specversion"] = "0.3" }) }},
		{"oversized-context", tok, func(id string) []byte {
			return event(id, func(ev map[string]any) { ev["data"].(map[string]any)["context"] = map[string]any{"blob": big} })
		}},
		{"missing-fields", tok, func(id string) []byte {
			return event(id, func(ev map[string]any) { delete(ev, "source"); delete(ev["data"].(map[string]any), "resource") })
		}},
		{"oversized-token", "eyJ" + strings.Repeat("A", 20<<10), func(id string) []byte { return event(id, func(map[string]any) {}) }},
	}
	for round := range 4 {
		for _, k := range kinds {
			id := s.nextID(k.name)
			rec := &record{id: id, mustDeny: true, kind: k.name}
			s.tr.add(rec)
			m := nats.NewMsg(topo.Subjects.Request(steadyRequest.Action))
			m.Data = k.body(id)
			m.Header.Set(schemas.HeaderMsgID, id)
			m.Header.Set(schemas.HeaderAuthorization, "Bearer "+k.token)
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := r.js.PublishMsg(pctx, m, jetstream.WithMsgID(id))
			cancel()
			s.tr.mu.Lock()
			rec.acked = err == nil
			s.tr.mu.Unlock()
		}
		if err := sleep(ctx, time.Duration(round+1)*100*time.Millisecond); err != nil {
			return "", err
		}
	}
	return "", nil
}

// clockSkew runs authn with its clock 2 minutes slow, and sends tokens
// that expired a minute ago: authn takes them as valid, policy's
// decision-time recheck must deny them. Then authn gets its clock back.
func (r *Runner) clockSkew(ctx context.Context, s *sender) (string, error) {
	const offset = -2 * time.Minute
	r.st.SetServiceEnv("authn", []string{"AIGOV_DEV_CLOCK_OFFSET=" + offset.String()})
	if err := r.st.RestartService(ctx, "authn"); err != nil {
		return "", err
	}
	defer r.st.SetServiceEnv("authn", nil)
	for i := range 20 {
		tok, err := r.st.IdP.Token(ctx, Persona(i%9), idp.WithIssuedAt(time.Now().Add(-3*time.Minute)), idp.WithTTL(2*time.Minute))
		if err != nil {
			return "", err
		}
		s.send(ctx, tok, steadyRequest, true, "expired-token")
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return "", err
		}
	}
	if err := sleep(ctx, r.opts.Outage); err != nil {
		return "", err
	}
	r.st.SetServiceEnv("authn", nil)
	return "authn-clock=" + offset.String(), r.st.RestartService(ctx, "authn")
}
