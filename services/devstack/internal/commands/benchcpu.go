package commands

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	goruntime "runtime"

	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/servicekit"
)

// cpuSample is, at one moment, each process's CPU time and the time each
// spent signing and verifying events.
type cpuSample struct {
	cpu     map[string]time.Duration
	signing map[string]time.Duration
	// ed25519 counts signatures made and verified (one per batch root);
	// byOp splits the services' signing time into sign and verify.
	ed25519 float64
	byOp    map[string]time.Duration
	// gcCycles and gcPause are each Go process's GC cycles and
	// stop-the-world pause time so far (go_gc_duration_seconds).
	gcCycles map[string]float64
	gcPause  map[string]time.Duration
}

// readCPU samples every process of the stack; the load generator's own
// verification of decisions (the SDK) counts under stack.SelfProcess.
func readCPU(ctx context.Context, st *stack.Stack) (cpuSample, error) {
	cpu, err := st.CPUTimes()
	if err != nil {
		return cpuSample{}, err
	}
	s := cpuSample{cpu: cpu, signing: map[string]time.Duration{}, byOp: map[string]time.Duration{},
		gcCycles: map[string]float64{}, gcPause: map[string]time.Duration{}}
	for _, name := range stack.Services {
		cycles, err := st.MetricSum(ctx, name, "go_gc_duration_seconds_count")
		if err != nil {
			return cpuSample{}, err
		}
		pause, err := st.MetricSum(ctx, name, "go_gc_duration_seconds_sum")
		if err != nil {
			return cpuSample{}, err
		}
		s.gcCycles[name], s.gcPause[name] = cycles, time.Duration(pause*float64(time.Second))
		for _, op := range []string{"sign", "verify"} {
			v, err := st.MetricSum(ctx, name, servicekit.SigningSecondsMetric, `op="`+op+`"`)
			if err != nil {
				return cpuSample{}, err
			}
			s.byOp[name+" "+op] = time.Duration(v * float64(time.Second))
		}
		v, err := st.MetricSum(ctx, name, servicekit.SigningSecondsMetric)
		if err != nil {
			return cpuSample{}, err
		}
		s.signing[name] = time.Duration(v * float64(time.Second))
		n, err := st.MetricSum(ctx, name, servicekit.Ed25519OpsMetric)
		if err != nil {
			return cpuSample{}, err
		}
		s.ed25519 += n
	}
	var ms goruntime.MemStats
	goruntime.ReadMemStats(&ms)
	s.gcCycles[stack.SelfProcess], s.gcPause[stack.SelfProcess] = float64(ms.NumGC), time.Duration(ms.PauseTotalNs)
	client := st.Keys.Trust().Stats()
	s.signing[stack.SelfProcess] = client.Busy
	s.ed25519 += float64(client.Ed25519)
	return s, nil
}

func (s cpuSample) sub(before cpuSample) cpuSample {
	out := cpuSample{cpu: map[string]time.Duration{}, signing: map[string]time.Duration{}, byOp: map[string]time.Duration{},
		ed25519: s.ed25519 - before.ed25519, gcCycles: map[string]float64{}, gcPause: map[string]time.Duration{}}
	for k, v := range s.gcCycles {
		out.gcCycles[k] = v - before.gcCycles[k]
	}
	for k, v := range s.gcPause {
		out.gcPause[k] = v - before.gcPause[k]
	}
	for k, v := range s.byOp {
		out.byOp[k] = v - before.byOp[k]
	}
	for k, v := range s.cpu {
		out.cpu[k] = v - before.cpu[k]
	}
	for k, v := range s.signing {
		out.signing[k] = v - before.signing[k]
	}
	return out
}

// report prints the CPU per decision of each process and the share of it
// spent signing and verifying events: the cost of signed events against
// the whole pipeline's CPU (services, ClickHouse, NATS and the load
// generator).
func (s cpuSample) report(decisions int64) string {
	var total, signing time.Duration
	names := make([]string, 0, len(s.cpu))
	for k, v := range s.cpu {
		total += v
		names = append(names, k)
	}
	for _, v := range s.signing {
		signing += v
	}
	slices.Sort(names)
	per := func(d time.Duration) string {
		return fmt.Sprintf("%.0f µs", float64(d.Microseconds())/float64(decisions))
	}
	var parts []string
	for _, k := range names {
		part := k + " " + per(s.cpu[k])
		if sg := s.signing[k]; sg > 0 {
			part += fmt.Sprintf(" (signing %s)", per(sg))
		}
		parts = append(parts, part)
	}
	var ops []string
	for k, v := range s.byOp {
		if v > 0 {
			ops = append(ops, k+" "+per(v))
		}
	}
	slices.Sort(ops)
	share := 0.0
	if total > 0 {
		share = 100 * signing.Seconds() / total.Seconds()
	}
	return fmt.Sprintf("cpu          %s per decision: %s\nsigning      %s per decision signing and verifying events (%.2f Ed25519 operations per decision, thread CPU time less the clock's own cost): %.1f%% of the pipeline's CPU (target < 5%%)\n             %s\n",
		per(total), strings.Join(parts, ", "), per(signing), s.ed25519/float64(decisions), share, strings.Join(ops, ", "))
}

// gcReport prints each Go process's GC cycles and stop-the-world pause
// time over the run, and that pause as a share of the run's wall time: the
// part of the latency tail the collector can explain.
func (s cpuSample) gcReport(elapsed time.Duration) string {
	names := make([]string, 0, len(s.gcCycles))
	for k := range s.gcCycles {
		names = append(names, k)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, k := range names {
		parts[i] = fmt.Sprintf("%s %.0f cycles %s paused (%.2f%%)", k, s.gcCycles[k], s.gcPause[k].Round(time.Microsecond),
			100*s.gcPause[k].Seconds()/elapsed.Seconds())
	}
	return "gc           " + strings.Join(parts, ", ") + " over " + elapsed.Round(time.Millisecond).String() + "\n"
}

// profileServices takes a CPU profile of every service at once (or of
// the names given), for d, into dir/<service>.pprof (`go tool pprof -top dir/policy.pprof`).
func profileServices(ctx context.Context, st *stack.Stack, dir string, d time.Duration, names ...string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if len(names) == 0 {
		names = stack.Services
	}
	var wg sync.WaitGroup
	errs := make([]error, len(names))
	for i, name := range names {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(ctx, d+10*time.Second)
			defer cancel()
			url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", st.HTTPAddr(name), int(d.Seconds()))
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			if err != nil {
				errs[i] = err
				return
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w", name, err)
				return
			}
			defer resp.Body.Close()
			b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
			if err == nil && resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("status %s", resp.Status)
			}
			if err == nil {
				err = os.WriteFile(filepath.Join(dir, name+".pprof"), b, 0o644)
			}
			if err != nil {
				errs[i] = fmt.Errorf("%s: %w", name, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}
