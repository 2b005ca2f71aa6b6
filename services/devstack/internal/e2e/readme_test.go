package e2e

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestReadmeCommandsVerbatim is a newcomer following README.md: `make run`
// in a checkout, then every shell block of the README, exactly as printed,
// in a second terminal at the repository root; a second `make run` refuses
// and leaves the first serving; Ctrl-C ends `make run` with status 0.
//
// The checkout is a directory of links to this repository's files, so the
// demo's .run is its own and nothing of a developer's .run is touched. make
// run listens on its fixed ports (4222, 5556, 19000, 8081-8085): a make run
// already serving on this machine makes this test fail, naming the port.
func TestReadmeCommandsVerbatim(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	checkout := linkCheckout(t, built.root)
	readme, err := os.ReadFile(filepath.Join(built.root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	blocks := shellBlocks(string(readme))

	// The first block is `make run` and `make test`: this test runs the
	// first, and is run by the second.
	if len(blocks) == 0 || !strings.HasPrefix(blocks[0], "make run") || !strings.Contains(blocks[0], "make test") {
		t.Fatalf("the README's first block is not make run / make test: %q", blocks)
	}
	run := startMakeRun(t, checkout)
	if !run.waitFor("== aigov is serving", 5*time.Minute) {
		t.Fatalf("make run did not come up:\n%s", run.output())
	}
	// The demo shows an agent's tool calls through the MCP gateway: the
	// upstream's answers on allow, the deny codes otherwise.
	for _, want := range []string{"AGENT CALL", "demo.sql.query", "1 row (read_only=true)", "deployed fraud-detector 7 to staging",
		"policy_denied", "approval_required", "(not forwarded)"} {
		if !strings.Contains(run.output(), want) {
			t.Errorf("make run's tool calls table lacks %q", want)
		}
	}

	// A second make run refuses, naming the first, and the first serves on.
	second := exec.CommandContext(ctx, "make", "run", "ISSUERS=services/authn/examples/dex.yaml")
	second.Dir = checkout
	out, err := second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another make run") || !regexp.MustCompile(`pid \d+`).Match(out) {
		t.Fatalf("a second make run did not refuse naming the first: %v\n%s", err, out)
	}

	// The blocks after the first, each as a user in a terminal who ran the
	// README's export line first.
	exports := exportLines(blocks)
	if len(exports) == 0 {
		t.Fatal("the README sets no PATH for its commands")
	}
	checks := []struct {
		name  string
		marks []string // what identifies the block
		want  []string // what its output must show
	}{
		{"aigov authorize", []string{"aigov authorize"}, []string{"allow model.retrain"}},
		{"the nats CLI", []string{"nats --server", " sub ", " pub "}, []string{`"decision":"allow"`, "Aigov-Signature"}},
		{"a policy change", []string{"aigov policy push", "aigov approvals approve"}, []string{"valid", "deny  policy.update", "code=approval_required", "risk-reviewers 1/2", "allow policy.update", "activated policy set", "use 1 of 1"}},
		{"the audit", []string{"clickhouse-client", "aigov audit verify"}, []string{"model.retrain", "#alice", "AIGOV_DECISIONS"}},
	}
	if len(blocks)-1 != len(checks) {
		t.Fatalf("the README has %d shell blocks after make run, this test knows %d: teach it the new ones\n%q", len(blocks)-1, len(checks), blocks[1:])
	}
	for i, c := range checks {
		block := blocks[i+1]
		for _, m := range c.marks {
			if !strings.Contains(block, m) {
				t.Fatalf("README block %d is not %s (no %q):\n%s", i+2, c.name, m, block)
			}
		}
		script := block
		if i > 0 {
			script = strings.Join(exports, "\n") + "\n" + block
		}
		cmd := exec.CommandContext(ctx, "bash", "-c", script)
		cmd.Dir = checkout
		cmd.WaitDelay = 5 * time.Second
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("README block %d (%s) failed: %v\n%s\n--- output\n%s", i+2, c.name, err, block, out)
		}
		for _, w := range c.want {
			if !strings.Contains(string(out), w) {
				t.Errorf("README block %d (%s): output lacks %q:\n%s", i+2, c.name, w, out)
			}
		}
		if bytes.Contains(out, []byte("BROKEN")) {
			t.Errorf("README block %d (%s): %s", i+2, c.name, out)
		}
	}

	// Ctrl-C: the terminal signals make's whole process group.
	if err := syscall.Kill(-run.cmd.Process.Pid, syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	// make itself dies of the SIGINT it got (status 130 in the shell, no
	// message); what must not happen is an error from make or the demo.
	err = run.wait(2 * time.Minute)
	var ee *exec.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ProcessState.Sys().(syscall.WaitStatus).Signal() == syscall.SIGINT) {
		t.Fatalf("Ctrl-C of make run: %v\n%s", err, run.tail(30))
	}
	if o := run.output(); strings.Contains(o, "make: ***") || strings.Contains(o, "devstack:") || strings.Contains(o, "\nstop: ") ||
		!strings.Contains(o, "== shutting down") {
		t.Fatalf("Ctrl-C of make run was not a clean stop:\n%s", run.tail(30))
	}
}

// shellBlocks are the README's ```sh blocks, in order.
func shellBlocks(md string) []string {
	var out []string
	for {
		i := strings.Index(md, "```sh\n")
		if i < 0 {
			return out
		}
		md = md[i+len("```sh\n"):]
		j := strings.Index(md, "```")
		if j < 0 {
			return out
		}
		out = append(out, md[:j])
		md = md[j:]
	}
}

// exportLines are the `export` lines of the blocks: what the terminal
// keeps from one block to the next.
func exportLines(blocks []string) []string {
	var out []string
	for _, b := range blocks {
		for _, l := range strings.Split(b, "\n") {
			if strings.HasPrefix(l, "export ") {
				out = append(out, l)
			}
		}
	}
	return out
}

// linkCheckout makes a directory that looks like a fresh checkout of root:
// a link to each of its entries but the work directories make run and the
// build write (.run, .cache, bin) and git's.
func linkCheckout(t *testing.T, root string) string {
	t.Helper()
	dir := t.TempDir()
	entries, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		switch e.Name() {
		case ".run", ".run.lock", ".run-bench", ".run-bench.lock", ".cache", "bin", ".git":
			continue
		}
		if err := os.Symlink(filepath.Join(root, e.Name()), filepath.Join(dir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// makeRun is `make run` in the background, its output collected.
type makeRun struct {
	cmd  *exec.Cmd
	done chan error
	mu   sync.Mutex
	out  bytes.Buffer
}

func (m *makeRun) Write(p []byte) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.out.Write(p)
}

func (m *makeRun) output() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.out.String()
}

func (m *makeRun) tail(n int) string {
	lines := strings.Split(m.output(), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// waitFor reports whether the output shows s within timeout, false as soon
// as make run exits.
func (m *makeRun) waitFor(s string, timeout time.Duration) bool {
	deadline := time.After(timeout)
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		if strings.Contains(m.output(), s) {
			return true
		}
		select {
		case err := <-m.done:
			m.done <- err
			return strings.Contains(m.output(), s)
		case <-deadline:
			return false
		case <-tick.C:
		}
	}
}

func (m *makeRun) wait(timeout time.Duration) error {
	select {
	case err := <-m.done:
		m.done <- err
		return err
	case <-time.After(timeout):
		return errors.New("make run did not exit")
	}
}

// startMakeRun starts make run in its own process group, as a terminal
// would, and stops it at the end of the test if it still runs.
func startMakeRun(t *testing.T, dir string) *makeRun {
	t.Helper()
	m := &makeRun{done: make(chan error, 1)}
	m.cmd = exec.Command("make", "run")
	m.cmd.Dir = dir
	m.cmd.Stdout, m.cmd.Stderr = m, m
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.done <- m.cmd.Wait() }()
	t.Cleanup(func() {
		select {
		case err := <-m.done:
			m.done <- err
			return
		default:
		}
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGINT)
		if m.wait(time.Minute) != nil {
			_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
			<-m.done
		}
		if t.Failed() {
			t.Logf("make run's output, last lines:\n%s", m.tail(60))
		}
	})
	return m
}
