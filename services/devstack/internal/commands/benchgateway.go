package commands

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
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
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/servicekit/natsconn"
)

// gatewayBlock is how long -gateway-rate sends on one path before it
// switches to the other: short enough that both see the stack, the
// machine and its other load in the same state, long enough for many
// calls per block.
const gatewayBlock = time.Second

// gatewayMaxInFlight bounds the calls -gateway-rate has open; past it the
// sender waits, and the wait counts in the latency (measured from each
// call's due time), so a saturated path shows as slow, never as fast.
const gatewayMaxInFlight = 2048

// BenchClientCommand is the devstack command benchGatewayRate runs as the
// platform's process.
const BenchClientCommand = "bench-gateway-client"

// rateResult is what the platform process reports: each path's
// latencies in microseconds.
type rateResult struct {
	Gateway []int64 `json:"gateway_us"`
	Direct  []int64 `json:"direct_us"`
}

// benchGatewayRate measures the latency the gateway adds at an open-loop
// rate. The calls come from a process of their own, as a platform's do
// (`devstack bench-gateway-client`): the same requests through POST
// /v1/authorize and directly with the SDK, due every 1/rate whatever the
// latency of earlier ones, in alternating blocks of gatewayBlock; the first
// block of each path is a warm-up. (An SDK client inside the bench's own
// process, which hosts the embedded NATS server, would be a baseline no
// platform has: its NATS hop never waits for another process to be
// scheduled.) With profile set, CPU profiles of the gateway and the
// services over the measured blocks go to profile/gateway-rate/.
func benchGatewayRate(ctx context.Context, st *stack.Stack, work string, tokens []string, req schemas.Request, rate int, dur time.Duration, httpClient, profile string, out io.Writer) error {
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	tokFile := filepath.Join(work, "gateway-bench-tokens")
	if err := os.WriteFile(tokFile, []byte(strings.Join(tokens, "\n")+"\n"), 0o600); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	body, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	fmt.Fprintf(out, "\n== %d calls/s open loop for %s from a platform process, through the gateway (HTTP client %s) and direct (SDK) in alternating %s blocks (first block of each a warm-up)\n",
		rate, dur, httpClient, gatewayBlock)
	cmd := exec.CommandContext(ctx, self, BenchClientCommand, "-gateway", st.GatewayURL(), "-tokens", tokFile,
		"-request", string(body), "-rate", strconv.Itoa(rate), "-duration", dur.String(), "-http-client", httpClient)
	cmd.Env = append(os.Environ(),
		"AIGOV_NATS_URL="+st.NATS.URL(), "AIGOV_NATS_USER="+schemas.RolePlatform,
		"AIGOV_NATS_PASSWORD="+st.NATS.Password(schemas.RolePlatform), "AIGOV_NATS_TLS_CA="+st.NATS.CAFile(),
		"AIGOV_TRUST_FILE="+st.Keys.TrustFile)
	var stdout bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, out
	cmd.WaitDelay = 5 * time.Second

	var profiles sync.WaitGroup
	if profile != "" {
		profiles.Go(func() {
			time.Sleep(3 * gatewayBlock) // the process's start and the warm-up
			secs := max(1, int((dur-3*gatewayBlock)/time.Second))
			if err := profileServices(ctx, st, filepath.Join(profile, "gateway-rate"), time.Duration(secs)*time.Second, append([]string{stack.Gateway}, stack.Services...)...); err != nil {
				fmt.Fprintln(out, "profile:", err)
			}
		})
	}
	sum0, n0 := gatewayServerTime(ctx, st)
	start := time.Now()
	err = cmd.Run()
	elapsed := time.Since(start)
	sum1, n1 := gatewayServerTime(ctx, st)
	profiles.Wait()
	if err != nil {
		return fmt.Errorf("bench: %s: %w", BenchClientCommand, err)
	}
	var res rateResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return fmt.Errorf("bench: %s printed no result: %w", BenchClientCommand, err)
	}
	gw, direct := micros(res.Gateway), micros(res.Direct)
	if len(gw) == 0 || len(direct) == 0 {
		return fmt.Errorf("bench: no calls measured at %d/s", rate)
	}
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Fprintf(out, "gateway@%d/s p50 %s  p99 %s through POST /v1/authorize; direct (SDK) p50 %s  p99 %s; added p50 %s  p99 %s (%d + %d calls measured over %s; %d cores, load %s)\n",
		rate, pct(gw, 0.50), pct(gw, 0.99), pct(direct, 0.50), pct(direct, 0.99), pct(gw, 0.50)-pct(direct, 0.50), pct(gw, 0.99)-pct(direct, 0.99),
		len(gw), len(direct), elapsed.Round(time.Millisecond), runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "))
	if n1 > n0 {
		// Where the added time is: inside the gateway (request read to
		// decision, its aigov_gateway_authorize_seconds) or around it
		// (HTTP to and from it).
		fmt.Fprintf(out, "             mean %s through the gateway, %s of it inside (request read → decision, aigov_gateway_authorize_seconds, warm-up included); direct mean %s\n",
			mean(gw), time.Duration((sum1-sum0)/float64(n1-n0)*float64(time.Second)).Round(time.Microsecond), mean(direct))
	}
	return nil
}

func micros(us []int64) []time.Duration {
	out := make([]time.Duration, len(us))
	for i, u := range us {
		out[i] = time.Duration(u) * time.Microsecond
	}
	slices.Sort(out)
	return out
}

func mean(ds []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range ds {
		sum += d
	}
	return (sum / time.Duration(len(ds))).Round(time.Microsecond)
}

// gatewayServerTime reads the gateway's aigov_gateway_authorize_seconds
// sum and count from its /metrics (zeros when it cannot).
func gatewayServerTime(ctx context.Context, st *stack.Stack) (sum float64, count uint64) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+st.HTTPAddr(stack.Gateway)+"/metrics", nil)
	if err != nil {
		return 0, 0
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(io.LimitReader(resp.Body, 4<<20))
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 2 {
			continue
		}
		switch f[0] {
		case "aigov_gateway_authorize_seconds_sum":
			sum, _ = strconv.ParseFloat(f[1], 64)
		case "aigov_gateway_authorize_seconds_count":
			c, _ := strconv.ParseFloat(f[1], 64)
			count = uint64(c)
		}
	}
	return sum, count
}

// BenchClient is `devstack bench-gateway-client`, the platform process of
// benchGatewayRate: it connects as the NATS user of AIGOV_NATS_USER (with
// AIGOV_NATS_PASSWORD, AIGOV_NATS_TLS_CA, AIGOV_TRUST_FILE), sends
// -request at -rate for -duration in alternating blocks through -gateway
// and directly, and prints each path's measured latencies as JSON.
func BenchClient(ctx context.Context, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("devstack "+BenchClientCommand, flag.ContinueOnError)
	gwURL := fs.String("gateway", "", "the gateway's base URL")
	tokFile := fs.String("tokens", "", "a file of bearer tokens, one a line, used in turn")
	reqJSON := fs.String("request", "", "the request (action, resource, context) as JSON")
	rate := fs.Int("rate", 1000, "calls per second")
	dur := fs.Duration("duration", 20*time.Second, "how long to send, both paths together")
	httpClient := fs.String("http-client", clientKeepAlive, "the HTTP client for the gateway: "+clientKeepAlive+" or "+clientNetHTTP)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *gwURL == "" || *tokFile == "" || *rate < 1 || *dur < 4*gatewayBlock {
		return fmt.Errorf("%s: -gateway, -tokens, -rate >= 1 and -duration >= %s are required", BenchClientCommand, 4*gatewayBlock)
	}
	var req schemas.Request
	if err := json.Unmarshal([]byte(*reqJSON), &req); err != nil {
		return fmt.Errorf("-request: %w", err)
	}
	b, err := os.ReadFile(*tokFile)
	if err != nil {
		return err
	}
	tokens := strings.Fields(string(b))
	if len(tokens) == 0 {
		return errors.New("-tokens: no token")
	}
	trust, err := signing.LoadTrust(os.Getenv("AIGOV_TRUST_FILE"))
	if err != nil {
		return err
	}
	nc, err := natsconn.Dial(natsconn.Config{URL: os.Getenv("AIGOV_NATS_URL"), User: os.Getenv("AIGOV_NATS_USER"),
		Password: os.Getenv("AIGOV_NATS_PASSWORD"), TLSCA: os.Getenv("AIGOV_NATS_TLS_CA"), Name: BenchClientCommand})
	if err != nil {
		return err
	}
	defer nc.Close()
	sdk, err := client.New(nc, client.Options{Source: BenchClientCommand, Timeout: 10 * time.Second, Trust: trust})
	if err != nil {
		return err
	}
	defer sdk.Close()
	g, err := newGatewayCaller(*gwURL, req, *httpClient)
	if err != nil {
		return err
	}
	defer g.close()
	paths := [2]func(context.Context, string) error{
		g.authorize,
		func(ctx context.Context, tok string) error {
			_, err := sdk.Authorize(ctx, client.Call{Token: tok, Request: req})
			return err
		},
	}
	lat, err := rateBlocks(ctx, paths, tokens, *rate, *dur)
	if err != nil {
		return err
	}
	res := rateResult{}
	for i, l := range lat {
		us := make([]int64, len(l))
		for j, d := range l {
			us[j] = d.Microseconds()
		}
		if i == 0 {
			res.Gateway = us
		} else {
			res.Direct = us
		}
	}
	return json.NewEncoder(out).Encode(res)
}

// rateBlocks sends calls open loop at rate for dur, in blocks of
// gatewayBlock alternating between paths[0] and paths[1], principal
// i%len(tokens) for call i, and returns each path's latencies measured
// from the call's due time, the first block of each left out. Any call
// without a decision fails it.
func rateBlocks(ctx context.Context, paths [2]func(context.Context, string) error, tokens []string, rate int, dur time.Duration) ([2][]time.Duration, error) {
	blocks := int(dur / gatewayBlock)
	perBlock := int(int64(rate) * int64(gatewayBlock) / int64(time.Second))
	interval := time.Second / time.Duration(rate)
	var mu sync.Mutex
	var lat [2][]time.Duration
	var failures atomic.Int64
	var firstErr atomic.Value
	sem := make(chan struct{}, gatewayMaxInFlight)
	var wg sync.WaitGroup
	start := time.Now()
	for b := 0; b < blocks && ctx.Err() == nil; b++ {
		path, warm := b%2, b < 2
		for i := 0; i < perBlock && ctx.Err() == nil; i++ {
			due := start.Add(time.Duration(b)*gatewayBlock + time.Duration(i)*interval)
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			sem <- struct{}{}
			wg.Add(1)
			tok := tokens[(b*perBlock+i)%len(tokens)]
			go func() {
				defer func() { <-sem; wg.Done() }()
				err := paths[path](ctx, tok)
				took := time.Since(due)
				if err != nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err)
					return
				}
				if !warm {
					mu.Lock()
					lat[path] = append(lat[path], took)
					mu.Unlock()
				}
			}()
		}
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return lat, err
	}
	if n := failures.Load(); n > 0 {
		return lat, fmt.Errorf("%d calls at %d/s without a decision, the first: %v", n, rate, firstErr.Load())
	}
	return lat, nil
}
