package stack

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/aigov/aigov/services/devenv/proc"
)

// SelfProcess names, in CPUTimes, this process: the embedded NATS server
// and whatever load the caller generates.
const SelfProcess = "nats+load"

// CPUTimes is the CPU time (user plus system) each process of the stack
// has used since it started: every service, ClickHouse, and this process.
// A benchmark reads it before and after a run.
func (st *Stack) CPUTimes() (map[string]time.Duration, error) {
	out := map[string]time.Duration{}
	pids := st.pids()
	for name, pid := range pids {
		d, err := proc.CPUTime(pid)
		if err != nil {
			return nil, err
		}
		out[name] = d
	}
	d, err := st.ClickHouse.CPUTime()
	if err != nil {
		return nil, err
	}
	out["clickhouse"] = d
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return nil, fmt.Errorf("stack: own cpu time: %w", err)
	}
	out[SelfProcess] = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	return out, nil
}

// MetricSum scrapes service's /metrics and returns the sum of every
// sample of the counter or gauge named metric (0 when it has none) whose
// labels hold each of match (e.g. `op="sign"`).
func (st *Stack) MetricSum(ctx context.Context, service, metric string, match ...string) (float64, error) {
	addr := st.HTTPAddr(service)
	if addr == "" {
		return 0, fmt.Errorf("stack: %s is not running", service)
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("stack: scrape %s: %w", service, err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		name, rest, ok := strings.Cut(line, " ")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		if base, _, labelled := strings.Cut(name, "{"); base != metric || (!labelled && name != metric) {
			continue
		}
		matched := true
		for _, m := range match {
			matched = matched && strings.Contains(line, m)
		}
		if !matched {
			continue
		}
		if labelled := strings.Contains(name, "{"); labelled {
			// Labels may hold spaces: the value follows the closing brace.
			i := strings.LastIndexByte(line, '}')
			rest = strings.TrimSpace(line[i+1:])
		}
		v, err := strconv.ParseFloat(strings.Fields(rest)[0], 64)
		if err != nil {
			return 0, fmt.Errorf("stack: %s metric line %q: %w", service, line, err)
		}
		sum += v
	}
	return sum, sc.Err()
}

// PeakRSSes is each process's peak resident set size, named as CPUTimes
// names them (the embedded NATS server and the load generator share
// SelfProcess).
func (st *Stack) PeakRSSes() (map[string]int64, error) {
	out := map[string]int64{}
	pids := st.pids()
	for name, pid := range pids {
		v, err := proc.PeakRSS(pid)
		if err != nil {
			return nil, err
		}
		out[name] = v
	}
	v, err := st.ClickHouse.PeakRSS()
	if err != nil {
		return nil, err
	}
	out["clickhouse"] = v
	if out[SelfProcess], err = proc.PeakRSS(0); err != nil {
		return nil, err
	}
	return out, nil
}

// pids is the pid of each running service process, by name.
func (st *Stack) pids() map[string]int {
	st.mu.Lock()
	defer st.mu.Unlock()
	pids := map[string]int{}
	for name, p := range st.procs {
		if p.cmd != nil && p.cmd.Process != nil {
			pids[name] = p.cmd.Process.Pid
		}
	}
	return pids
}
