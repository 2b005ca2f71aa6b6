package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/servicekit"
)

// Bench pushes requests from many principals through a fresh stack and
// reports throughput, request→decision latency and audit completeness.
func Bench(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devstack bench", flag.ContinueOnError)
	n := fs.Int("n", 20000, "requests to send")
	rate := fs.Int("rate", 0, "target requests per second; 0 sends flat out")
	principals := fs.Int("principals", 50, "distinct principals, each with its own token")
	concurrency := fs.Int("concurrency", 256, "requests in flight at most")
	dir := fs.String("dir", ".run-bench", "working directory (wiped at start)")
	auditOnly := fs.Bool("audit-only", false, "publish decision events straight onto the decisions stream at -rate for -duration and measure only the audit end of the pipe")
	duration := fs.Duration("duration", 20*time.Second, "how long -audit-only publishes")
	linger := fs.Duration("signing-linger", servicekit.DefaultSigningLinger, "how long a busy service waits to sign events in one batch (AIGOV_SIGNING_LINGER)")
	profile := fs.String("profile", "", "write a 5s CPU profile of each service, taken under load, into this directory (AIGOV_PPROF)")
	syncAlways := fs.Bool("sync-always", false, "NATS fsyncs every JetStream write (sync_interval: always) instead of every 2 minutes")
	gogc := fs.String("gogc", "", "GOGC of the four services (empty: Go's default, 100)")
	drain := fs.Int("audit-drain", 0, "publish this many decision events with the audit stopped, then time how fast it writes them all")
	encrypt := fs.Bool("personal-encryption", true, "authn seals each subject's email, name and personal context fields (AIGOV_PERSONAL_ENCRYPTION); false measures the pipeline without")
	gatewayN := fs.Int("gateway", 500, "then time this many requests through the gateway's HTTP API against as many sent directly, alternating, one at a time (0 skips)")
	gatewayRate := fs.Int("gateway-rate", 1000, "then send calls open loop at this rate through the gateway's HTTP API and, in alternating 1 s blocks, directly with the SDK, and report the latency the gateway adds (0 skips)")
	gatewayDuration := fs.Duration("gateway-duration", 20*time.Second, "how long -gateway-rate sends, both paths together")
	gatewayClient := fs.String("gateway-http-client", clientKeepAlive, "the load generator's HTTP client for the gateway: "+clientKeepAlive+" (each call on a kept-alive connection of its own, in the calling goroutine) or "+clientNetHTTP+" (Go's Transport)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *drain > 0 {
		return benchDrain(ctx, *dir, *drain, out)
	}
	if *auditOnly {
		if *rate < 1 || *duration <= 0 {
			return fmt.Errorf("-audit-only needs -rate >= 1 and -duration > 0")
		}
		return benchAudit(ctx, *dir, *rate, *duration, out)
	}
	if *n < 1 || *principals < 1 || *concurrency < 1 || *rate < 0 {
		return fmt.Errorf("-n, -principals and -concurrency must be >= 1 and -rate >= 0")
	}
	if *gatewayRate < 0 || (*gatewayRate > 0 && *gatewayDuration < 4*gatewayBlock) {
		return fmt.Errorf("-gateway-rate must be >= 0, and -gateway-duration at least %s (warm-up and at least one block of each path)", 4*gatewayBlock)
	}
	root, err := stack.FindRoot()
	if err != nil {
		return err
	}
	work, _ := filepath.Abs(*dir)
	_ = os.RemoveAll(work)
	bin := filepath.Join(work, "bin")
	if err := stack.Build(ctx, root, bin); err != nil {
		return err
	}
	personas := map[string]idp.Persona{}
	names := make([]string, *principals)
	for i := range names {
		names[i] = fmt.Sprintf("user-%04d", i)
		groups := []string{"data-scientists"}
		if i%10 == 9 {
			groups = nil // every tenth principal is an outsider: a policy deny
		}
		personas[names[i]] = idp.Persona{Subject: names[i], Email: names[i] + "@load.example", Name: names[i], Groups: groups}
	}
	st, err := stack.Start(ctx, stack.Options{Root: root, Dir: work, BinDir: bin, Personas: personas, LogLevel: "warn", Progress: out, NATSSyncAlways: *syncAlways,
		ServiceEnv: append(serviceEnv(*linger, *profile != "", *gogc), "AIGOV_PERSONAL_ENCRYPTION="+strconv.FormatBool(*encrypt))})
	if err != nil {
		return err
	}
	defer st.Stop()

	tokens := make([]string, len(names))
	for i, name := range names {
		if tokens[i], err = st.IdP.Token(ctx, name, idp.WithTTL(time.Hour)); err != nil {
			return err
		}
	}
	req := schemas.Request{Action: "model.retrain", Resource: schemas.Resource{Type: "Model", ID: "fraud-detector"}, Context: map[string]any{"environment": "staging"}}

	fmt.Fprintf(out, "\n== sending %d requests from %d principals (rate %s, %d in flight at most, signing linger %s, personal encryption %v)\n", *n, *principals, rateText(*rate), *concurrency, *linger, *encrypt)
	latencies := make([]time.Duration, *n)
	// When each decision came back: with the row poller, the time from the
	// decision to its row being visible in ClickHouse (see rowPoller; the
	// k-th decision received is taken as the k-th in stream order, which
	// holds to within milliseconds).
	received := make([]time.Time, *n)
	poll := startRowPoller(ctx, st.DB, uint64(*n))
	defer poll.stop()
	var failures, allows, denies atomic.Int64
	cpu0, err := readCPU(ctx, st)
	if err != nil {
		return err
	}
	sem := make(chan struct{}, *concurrency)
	var wg sync.WaitGroup
	var interval time.Duration
	if *rate > 0 {
		interval = time.Second / time.Duration(*rate)
	}
	var profiles sync.WaitGroup
	if *profile != "" {
		profiles.Go(func() {
			time.Sleep(time.Second) // past the start of the run
			if err := profileServices(ctx, st, *profile, 5*time.Second); err != nil {
				fmt.Fprintln(out, "profile:", err)
			}
		})
	}
	start := time.Now()
	for i := 0; i < *n && ctx.Err() == nil; i++ {
		if interval > 0 {
			// Open loop: request i is due at start+i*interval, whatever the
			// latency of earlier ones.
			if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
				time.Sleep(d)
			}
		}
		sem <- struct{}{}
		wg.Add(1)
		go func(i int) {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			d, err := st.Client.Authorize(ctx, client.Call{Token: tokens[i%len(tokens)], Request: req})
			received[i] = time.Now()
			latencies[i] = received[i].Sub(t0)
			switch {
			case err != nil:
				failures.Add(1)
			case d.Allowed():
				allows.Add(1)
			default:
				denies.Add(1)
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	profiles.Wait()
	decided := allows.Load() + denies.Load()

	// Audit completeness: every decision must become exactly one row.
	auditStart := time.Now()
	var rows uint64
	for time.Since(auditStart) < 2*time.Minute {
		if err := st.DB.QueryRow(ctx, "SELECT count() FROM aigov.decisions FINAL").Scan(&rows); err == nil && rows >= uint64(decided) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if failures.Load() == 0 {
		if err := poll.wait(2 * time.Minute); err != nil {
			return err
		}
	}
	poll.stop()
	cpu1, err := readCPU(ctx, st)
	if err != nil {
		return err
	}
	slices.SortFunc(received, func(a, b time.Time) int { return a.Compare(b) })
	visible := poll.lags(received)
	// End-of-pipe lag: from the decision (event_time_us, when the policy
	// or authn service decided) to the start of its row's insert
	// (inserted_us, taken by the writer before it builds the insert, so
	// without the insert itself), per row.
	var lag []float64
	var lagMax int64
	if err := st.DB.QueryRow(ctx, "SELECT quantiles(0.5, 0.99)(toInt64(inserted_us) - toInt64(event_time_us)), max(toInt64(inserted_us) - toInt64(event_time_us)) FROM aigov.decisions FINAL").Scan(&lag, &lagMax); err != nil {
		return fmt.Errorf("bench: audit lag: %w", err)
	}
	slices.Sort(latencies)
	fmt.Fprintf(out, "\nmachine      %s, %d cores, %s\n", cpuModel(), runtime.NumCPU(), runtime.Version())
	if *syncAlways {
		fmt.Fprintf(out, "nats         embedded, file store, sync_interval always (every write fsynced)\n")
	} else {
		fmt.Fprintf(out, "nats         embedded, file store, default fsync (every 2 min): figures are not for sync_interval always\n")
	}
	fmt.Fprintf(out, "requests     %d sent, %d decided (%d allow, %d deny), %d without a decision\n", *n, decided, allows.Load(), denies.Load(), failures.Load())
	fmt.Fprintf(out, "throughput   %.0f decisions/s over %s\n", float64(decided)/elapsed.Seconds(), elapsed.Round(time.Millisecond))
	fmt.Fprintf(out, "latency      p50 %s  p99 %s  p99.9 %s  max %s (request published → decision received)\n",
		pct(latencies, 0.50), pct(latencies, 0.99), pct(latencies, 0.999), latencies[len(latencies)-1].Round(time.Microsecond))
	fmt.Fprintf(out, "audit        %d rows for %d decisions (%s), complete %s after the last decision\n",
		rows, decided, completeness(rows, decided), time.Since(auditStart).Round(time.Millisecond))
	if len(visible) > 0 {
		fmt.Fprintf(out, "audit lag    p50 %s  p99 %s  max %s (decision received → row visible to a count() in ClickHouse; polled every %s)\n",
			pct(visible, 0.50), pct(visible, 0.99), visible[len(visible)-1].Round(time.Microsecond), pollEvery)
	}
	if len(lag) == 2 {
		fmt.Fprintf(out, "             p50 %s  p99 %s  max %s (decided → writer starts the insert: inserted_us − event_time_us)\n",
			time.Duration(lag[0])*time.Microsecond, time.Duration(lag[1])*time.Microsecond, time.Duration(lagMax)*time.Microsecond)
	}
	if decided > 0 {
		d := cpu1.sub(cpu0)
		fmt.Fprint(out, d.report(decided))
		fmt.Fprint(out, d.gcReport(elapsed))
	}
	if rss, err := st.PeakRSSes(); err != nil {
		fmt.Fprintf(out, "rss          not read: %v\n", err)
	} else {
		fmt.Fprintf(out, "rss          peak: %s\n", rssReport(rss))
	}
	if failures.Load() > 0 || rows != uint64(decided) {
		return fmt.Errorf("bench: %d requests without a decision, %d audit rows for %d decisions", failures.Load(), rows, decided)
	}
	if *gatewayN == 0 && *gatewayRate == 0 {
		return nil
	}
	// The bench bounds the calls in flight on both paths alike
	// (gatewayMaxInFlight); the gateway's own, lower default limit would
	// shed the gateway path's calls with 503 where the direct path queues.
	if err := st.StartGateway(ctx, 0, 0, "AIGOV_GATEWAY_MAX_IN_FLIGHT="+strconv.Itoa(gatewayMaxInFlight)); err != nil {
		return err
	}
	g, err := newGatewayCaller(st.GatewayURL(), req, *gatewayClient)
	if err != nil {
		return err
	}
	defer g.close()
	if *gatewayN > 0 {
		if err := benchGateway(ctx, st, g, tokens, req, *gatewayN, out); err != nil {
			return err
		}
	}
	if *gatewayRate > 0 {
		return benchGatewayRate(ctx, st, work, tokens, req, *gatewayRate, *gatewayDuration, *gatewayClient, *profile, out)
	}
	return nil
}

// gatewayCaller sends one request through POST /v1/authorize, with
// keepAliveClient or, with netHTTP, net/http's client.
type gatewayCaller struct {
	url  string
	body []byte
	hc   *http.Client
	ka   *keepAliveClient
}

// Gateway HTTP clients of the load generator (-gateway-http-client).
const (
	clientKeepAlive = "keepalive"
	clientNetHTTP   = "net/http"
)

func newGatewayCaller(base string, req schemas.Request, httpClient string) (*gatewayCaller, error) {
	body, err := json.Marshal(map[string]any{"action": req.Action, "resource": req.Resource, "context": req.Context})
	if err != nil {
		return nil, fmt.Errorf("bench: gateway body: %w", err)
	}
	g := &gatewayCaller{url: base + "/v1/authorize", body: body}
	switch httpClient {
	case clientKeepAlive:
		if g.ka, err = newKeepAliveClient(g.url); err != nil {
			return nil, err
		}
	case clientNetHTTP:
		// Enough idle connections for an open-loop rate: with Go's
		// default of 2 per host, most calls would open a new TCP
		// connection, which is the load generator's cost, not the
		// gateway's.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.MaxIdleConns, tr.MaxIdleConnsPerHost = 1024, 1024
		g.hc = &http.Client{Timeout: 30 * time.Second, Transport: tr}
	default:
		return nil, fmt.Errorf("bench: gateway HTTP client %q: want %s or %s", httpClient, clientKeepAlive, clientNetHTTP)
	}
	return g, nil
}

func (g *gatewayCaller) authorize(ctx context.Context, token string) error {
	var status int
	var b []byte
	if g.ka != nil {
		var err error
		if status, b, err = g.ka.post(ctx, token, g.body); err != nil {
			return err
		}
	} else {
		r, err := http.NewRequestWithContext(ctx, http.MethodPost, g.url, bytes.NewReader(g.body))
		if err != nil {
			return err
		}
		r.Header.Set("Authorization", "Bearer "+token)
		r.Header.Set("Content-Type", "application/json")
		resp, err := g.hc.Do(r)
		if err != nil {
			return err
		}
		b, err = io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		_ = resp.Body.Close()
		if err != nil {
			return err
		}
		status = resp.StatusCode
	}
	var d struct {
		Decision string `json:"decision"`
	}
	if err := json.Unmarshal(b, &d); err != nil || status != http.StatusOK || d.Decision == "" {
		return fmt.Errorf("gateway answered %d (%v)", status, err)
	}
	return nil
}

// close releases the caller's idle connections.
func (g *gatewayCaller) close() {
	if g.ka != nil {
		g.ka.close()
	} else {
		g.hc.CloseIdleConnections()
	}
}

// benchGateway measures the latency the gateway adds: n requests through
// POST /v1/authorize and n sent directly with the SDK, alternating and one
// at a time, so both see the same stack in the same state.
func benchGateway(ctx context.Context, st *stack.Stack, g *gatewayCaller, tokens []string, req schemas.Request, n int, out io.Writer) error {
	fmt.Fprintf(out, "\n== %d requests through the gateway, %d direct, alternating, one at a time\n", n, n)
	direct := make([]time.Duration, 0, n)
	gw := make([]time.Duration, 0, n)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		tok := tokens[i%len(tokens)]
		t0 := time.Now()
		if _, err := st.Client.Authorize(ctx, client.Call{Token: tok, Request: req}); err != nil {
			return fmt.Errorf("bench: direct request: %w", err)
		}
		t1 := time.Now()
		if err := g.authorize(ctx, tok); err != nil {
			return fmt.Errorf("bench: gateway request: %w", err)
		}
		direct, gw = append(direct, t1.Sub(t0)), append(gw, time.Since(t1))
	}
	slices.Sort(direct)
	slices.Sort(gw)
	fmt.Fprintf(out, "gateway      p50 %s  p99 %s through POST /v1/authorize; direct (SDK) p50 %s  p99 %s; added p50 %s  p99 %s (one at a time)\n",
		pct(gw, 0.50), pct(gw, 0.99), pct(direct, 0.50), pct(direct, 0.99), pct(gw, 0.50)-pct(direct, 0.50), pct(gw, 0.99)-pct(direct, 0.99))
	return nil
}

// serviceEnv is what the bench adds to each service's environment.
func serviceEnv(linger time.Duration, pprof bool, gogc string) []string {
	e := []string{"AIGOV_SIGNING_LINGER=" + linger.String(), "AIGOV_PPROF=" + strconv.FormatBool(pprof)}
	if gogc != "" {
		e = append(e, "GOGC="+gogc)
	}
	return e
}

func rateText(r int) string {
	if r == 0 {
		return "flat out"
	}
	return fmt.Sprintf("%d/s", r)
}

func pct(sorted []time.Duration, p float64) time.Duration {
	i := int(float64(len(sorted)-1) * p)
	return sorted[i].Round(time.Microsecond)
}

func completeness(rows uint64, decided int64) string {
	if rows == uint64(decided) {
		return "complete"
	}
	return "INCOMPLETE"
}

func cpuModel() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown cpu"
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "model name") {
			if _, v, ok := strings.Cut(line, ":"); ok {
				return strings.TrimSpace(v)
			}
		}
	}
	return "unknown cpu"
}

// rssReport lists each process's peak RSS in MiB, by name.
func rssReport(rss map[string]int64) string {
	names := make([]string, 0, len(rss))
	for k := range rss {
		names = append(names, k)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s %d MiB", k, rss[k]>>20)
	}
	return strings.Join(parts, ", ")
}
