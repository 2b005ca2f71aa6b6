package clickhouse_test

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/aigov/aigov/services/devenv/clickhouse"
)

// requireServer fails (never skips) when no ClickHouse binary is installed:
// a skipped integration test is a silent hole in CI.
func requireServer(t *testing.T) string {
	t.Helper()
	bin, err := clickhouse.Available()
	if err != nil {
		t.Fatalf("ClickHouse is required for these tests: %v", err)
	}
	return bin
}

// startServer starts a server in a fresh temp dir and stops it at cleanup.
// The server's log goes to the test log only with -v, to keep failures
// readable; errors quote its tail anyway.
func startServer(t *testing.T, opts clickhouse.Options) *clickhouse.Server {
	t.Helper()
	requireServer(t)
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 20 * time.Second
	}
	if testing.Verbose() && opts.Log == nil {
		opts.Log = testLog{t}
	}
	began := time.Now()
	s, err := clickhouse.Start(context.Background(), opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Logf("ClickHouse %s up at %s (http %s) in %v", s.Version(), s.Addr(), s.HTTPAddr(), time.Since(began).Round(time.Millisecond))
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("Stop at cleanup: %v", err)
		}
	})
	return s
}

// testLog forwards server output to t.Log, dropping it once the test has
// finished (t.Log panics after that).
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	defer func() { _ = recover() }()
	for _, line := range strings.Split(strings.TrimRight(string(b), "\n"), "\n") {
		l.t.Log("server: " + line)
	}
	return len(b), nil
}

func openNative(t *testing.T, s *clickhouse.Server) ch.Conn {
	t.Helper()
	opts, err := ch.ParseDSN(s.DSN())
	if err != nil {
		t.Fatalf("ParseDSN(%q): %v", s.DSN(), err)
	}
	if got := opts.Addr; len(got) != 1 || got[0] != s.Addr() {
		t.Fatalf("ParseDSN(%q).Addr = %v, want [%s]", s.DSN(), got, s.Addr())
	}
	opts.DialTimeout = 2 * time.Second
	conn, err := ch.Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

const createEvents = `CREATE TABLE IF NOT EXISTS events (
	id UInt64,
	name String,
	at DateTime('UTC')
) ENGINE = MergeTree ORDER BY id`

// insertEvents inserts ids [from, to) with the explicit column list that
// PrepareBatch needs on 18.16.
func insertEvents(t *testing.T, ctx context.Context, conn ch.Conn, from, to int) {
	t.Helper()
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO events (id, name, at)")
	if err != nil {
		t.Fatalf("PrepareBatch: %v", err)
	}
	at := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	for i := from; i < to; i++ {
		if err := batch.Append(uint64(i), fmt.Sprintf("event-%d", i), at.Add(time.Duration(i)*time.Second)); err != nil {
			t.Fatalf("Append: %v", err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatalf("Send: %v", err)
	}
}

func countEvents(t *testing.T, ctx context.Context, conn ch.Conn) uint64 {
	t.Helper()
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM events").Scan(&n); err != nil {
		t.Fatalf("count: %v", err)
	}
	return n
}

func TestAvailable(t *testing.T) {
	bin := requireServer(t)
	if !filepath.IsAbs(bin) {
		t.Errorf("Available() = %q, want an absolute path", bin)
	}
	t.Logf("server binary: %s", bin)
}

func TestAvailableBadOverride(t *testing.T) {
	t.Setenv(clickhouse.EnvServerBinary, filepath.Join(t.TempDir(), "no-such-clickhouse"))
	_, err := clickhouse.Available()
	if !errors.Is(err, clickhouse.ErrNotInstalled) || !strings.Contains(err.Error(), "scripts/install-deps.sh") {
		t.Fatalf("Available() with a bad override: err = %v, want ErrNotInstalled with the install hint", err)
	}
	if _, err := clickhouse.Start(context.Background(), clickhouse.Options{Dir: t.TempDir()}); !errors.Is(err, clickhouse.ErrNotInstalled) {
		t.Fatalf("Start with a bad override: err = %v, want ErrNotInstalled", err)
	}
}

// TestSingleBinaryInvocation checks that a binary named "clickhouse" (the
// single binary of current releases) is run as `clickhouse server`, using a
// wrapper that insists on that subcommand and then runs the real server.
func TestSingleBinaryInvocation(t *testing.T) {
	serverBin := requireServer(t)
	wrapper := filepath.Join(t.TempDir(), "clickhouse")
	script := "#!/bin/sh\n" +
		"if [ \"$1\" != server ]; then echo \"want 'clickhouse server', got: $*\" >&2; exit 64; fi\n"
	if filepath.Base(serverBin) == "clickhouse" {
		script += "exec " + strconv.Quote(serverBin) + " \"$@\"\n"
	} else {
		script += "shift\nexec " + strconv.Quote(serverBin) + " \"$@\"\n"
	}
	if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(clickhouse.EnvServerBinary, wrapper)
	if bin, err := clickhouse.Available(); err != nil || bin != wrapper {
		t.Fatalf("Available() = %q, %v; want %q", bin, err, wrapper)
	}
	s := startServer(t, clickhouse.Options{})
	if s.Version() == "" {
		t.Error("Version() is empty")
	}
}

func TestStartRequiresDir(t *testing.T) {
	_, err := clickhouse.Start(context.Background(), clickhouse.Options{})
	if err == nil || !strings.Contains(err.Error(), "Options.Dir is required") {
		t.Fatalf("Start without Dir: err = %v, want one naming Options.Dir", err)
	}
}

func TestInsertAndSelect(t *testing.T) {
	ctx := context.Background()
	s := startServer(t, clickhouse.Options{})

	if s.Version() == "" {
		t.Error("Version() is empty")
	}
	if !strings.HasPrefix(s.Addr(), "127.0.0.1:") || !strings.HasPrefix(s.HTTPAddr(), "127.0.0.1:") || s.Addr() == s.HTTPAddr() {
		t.Errorf("Addr() = %q, HTTPAddr() = %q", s.Addr(), s.HTTPAddr())
	}
	if want := "clickhouse://" + s.Addr() + "/default"; s.DSN() != want {
		t.Errorf("DSN() = %q, want %q", s.DSN(), want)
	}

	// The HTTP port is configured and answers (curl-style health check).
	resp, err := http.Get("http://" + s.HTTPAddr() + "/ping")
	if err != nil {
		t.Fatalf("HTTP ping: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "Ok." {
		t.Errorf("HTTP /ping = %d %q", resp.StatusCode, body)
	}

	conn := openNative(t, s)
	if err := conn.Exec(ctx, createEvents); err != nil {
		t.Fatalf("CREATE TABLE: %v", err)
	}
	insertEvents(t, ctx, conn, 0, 100)

	rows, err := conn.Query(ctx, "SELECT id, name, at FROM events WHERE id IN (0, 42, 99) ORDER BY id")
	if err != nil {
		t.Fatalf("SELECT: %v", err)
	}
	var got []string
	for rows.Next() {
		var (
			id   uint64
			name string
			at   time.Time
		)
		if err := rows.Scan(&id, &name, &at); err != nil {
			t.Fatalf("Scan: %v", err)
		}
		got = append(got, fmt.Sprintf("%d %s %s", id, name, at.UTC().Format(time.RFC3339)))
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("rows: %v", err)
	}
	rows.Close()
	want := []string{
		"0 event-0 2026-11-25T12:00:00Z",
		"42 event-42 2026-11-25T12:00:42Z",
		"99 event-99 2026-11-25T12:01:39Z",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("rows:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// The DSN also works through database/sql (clickhouse.OpenDB / sql.Open).
	db, err := sql.Open("clickhouse", s.DSN())
	if err != nil {
		t.Fatalf("sql.Open: %v", err)
	}
	defer db.Close()
	var n uint64
	if err := db.QueryRowContext(ctx, "SELECT count() FROM events").Scan(&n); err != nil || n != 100 {
		t.Fatalf("database/sql count = %d, %v; want 100", n, err)
	}
}

func TestKillRestartKeepsData(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	dir := t.TempDir()
	s := startServer(t, clickhouse.Options{Dir: dir})
	addr, httpAddr := s.Addr(), s.HTTPAddr()

	conn := openNative(t, s)
	if err := conn.Exec(ctx, createEvents); err != nil {
		t.Fatalf("CREATE TABLE: %v", err)
	}
	insertEvents(t, ctx, conn, 0, 50)

	if err := s.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Kill", addr)
	}
	if err := s.Kill(); err != nil {
		t.Fatalf("second Kill: %v", err)
	}

	began := time.Now()
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart after Kill: %v", err)
	}
	t.Logf("restart after Kill took %v", time.Since(began).Round(time.Millisecond))
	if s.Addr() != addr || s.HTTPAddr() != httpAddr {
		t.Fatalf("Restart moved the server: %s/%s, was %s/%s", s.Addr(), s.HTTPAddr(), addr, httpAddr)
	}
	// The same client object reconnects at the same address.
	if n := countEvents(t, ctx, conn); n != 50 {
		t.Fatalf("after Kill+Restart: %d rows, want 50", n)
	}
	insertEvents(t, ctx, conn, 50, 60)

	// Graceful restart keeps data too.
	if err := s.Restart(ctx); err != nil {
		t.Fatalf("Restart: %v", err)
	}
	if n := countEvents(t, ctx, conn); n != 60 {
		t.Fatalf("after Restart: %d rows, want 60", n)
	}

	// A crashed server's Dir can be reused by a brand-new Start (new ports).
	if err := s.Kill(); err != nil {
		t.Fatalf("Kill: %v", err)
	}
	s2 := startServer(t, clickhouse.Options{Dir: dir})
	if n := countEvents(t, ctx, openNative(t, s2)); n != 60 {
		t.Fatalf("new Start on the same Dir: %d rows, want 60", n)
	}
}

func TestStopIsIdempotent(t *testing.T) {
	skipShort(t)
	s := startServer(t, clickhouse.Options{})
	addr := s.Addr()
	began := time.Now()
	if err := s.Stop(); err != nil {
		t.Fatalf("Stop: %v", err)
	}
	t.Logf("Stop took %v", time.Since(began).Round(time.Millisecond))
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Fatalf("%s still accepts connections after Stop", addr)
	}
	for i := 0; i < 2; i++ {
		if err := s.Stop(); err != nil {
			t.Fatalf("Stop again: %v", err)
		}
		if err := s.Kill(); err != nil {
			t.Fatalf("Kill after Stop: %v", err)
		}
	}
	// A stopped server can be brought back.
	if err := s.Restart(context.Background()); err != nil {
		t.Fatalf("Restart after Stop: %v", err)
	}
}

func TestStartFailureQuotesLog(t *testing.T) {
	skipShort(t)
	requireServer(t)
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	port := busy.Addr().(*net.TCPAddr).Port

	began := time.Now()
	_, err = clickhouse.Start(context.Background(), clickhouse.Options{Dir: t.TempDir(), TCPPort: port, StartTimeout: 20 * time.Second})
	if err == nil {
		t.Fatal("Start on a busy port succeeded")
	}
	t.Logf("failed in %v with: %v", time.Since(began).Round(time.Millisecond), err)
	for _, want := range []string{"exited during startup", "last", "Address already in use"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q", want)
		}
	}
}

// TestStartTimeoutQuotesLog uses a fake server that prints a line and
// never listens: Start must give up at StartTimeout, kill it and quote it.
func TestStartTimeoutQuotesLog(t *testing.T) {
	skipShort(t)
	fake := filepath.Join(t.TempDir(), "clickhouse-server")
	script := "#!/bin/sh\necho 'fake server: pretending to load metadata' >&2\nexec sleep 60\n"
	if err := os.WriteFile(fake, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv(clickhouse.EnvServerBinary, fake)
	began := time.Now()
	_, err := clickhouse.Start(context.Background(), clickhouse.Options{Dir: t.TempDir(), StartTimeout: time.Second})
	took := time.Since(began)
	if err == nil {
		t.Fatal("Start of a server that never listens succeeded")
	}
	t.Logf("failed in %v with: %v", took.Round(time.Millisecond), err)
	for _, want := range []string{"did not answer SELECT 1 within 1s", "pretending to load metadata"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q", want)
		}
	}
	if took > 5*time.Second {
		t.Errorf("Start took %v to give up with StartTimeout 1s", took)
	}
}

func TestSecondServerOnSameDirFails(t *testing.T) {
	skipShort(t)
	s := startServer(t, clickhouse.Options{})
	_, err := clickhouse.Start(context.Background(), clickhouse.Options{Dir: s.Dir(), StartTimeout: 20 * time.Second})
	if err == nil {
		t.Fatal("a second server started on a Dir in use")
	}
	t.Logf("second server: %v", err)
}

func TestFixedPortTakenByAnotherServer(t *testing.T) {
	skipShort(t)
	ctx := context.Background()
	a := startServer(t, clickhouse.Options{})
	_, port, _ := net.SplitHostPort(a.Addr())
	tcp, _ := strconv.Atoi(port)

	_, err := clickhouse.Start(ctx, clickhouse.Options{Dir: t.TempDir(), TCPPort: tcp, StartTimeout: 20 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "another ClickHouse server") {
		t.Fatalf("Start on a port served by another ClickHouse: err = %v, want one naming the other server", err)
	}
	// The failed Start must not have disturbed the server that owns the port.
	var n uint64
	if err := openNative(t, a).QueryRow(ctx, "SELECT count() FROM system.tables").Scan(&n); err != nil {
		t.Fatalf("the first server no longer answers: %v", err)
	}
}

// helperEnv makes the test binary act as a long-lived owner of a server,
// so TestServerDiesWithOwner can SIGKILL the owner.
const helperEnv = "AIGOV_CLICKHOUSE_TEST_OWNER_DIR"

func TestOwnerProcess(t *testing.T) {
	dir := os.Getenv(helperEnv)
	if dir == "" {
		return // only meaningful as TestServerDiesWithOwner's child
	}
	s, err := clickhouse.Start(context.Background(), clickhouse.Options{Dir: dir, StartTimeout: 20 * time.Second})
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	fmt.Println("READY", s.Addr())
	time.Sleep(time.Minute) // killed by the parent long before
	os.Exit(1)
}

func TestServerDiesWithOwner(t *testing.T) {
	skipShort(t)
	if runtime.GOOS != "linux" {
		t.Skip("parent-death signal is Linux-only")
	}
	requireServer(t)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestOwnerProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if l := sc.Text(); strings.HasPrefix(l, "READY") || strings.HasPrefix(l, "ERROR") {
				lines <- l
				break
			}
		}
		_, _ = io.Copy(io.Discard, stdout)
	}()
	var line string
	select {
	case line = <-lines:
	case <-time.After(25 * time.Second):
		t.Fatal("owner process did not start a server")
	}
	if !strings.HasPrefix(line, "READY") {
		t.Fatalf("owner process: %s", line)
	}
	pid := serverPID(t, dir)
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()

	deadline := time.Now().Add(5 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Fatalf("server pid %d outlived its owner", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// serverPID reads the "PID: n" line of the status file ClickHouse keeps in
// its data path.
func serverPID(t *testing.T, dir string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "data", "status"))
	if err != nil {
		t.Fatalf("status file: %v", err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "PID:"); ok {
			pid, err := strconv.Atoi(strings.TrimSpace(v))
			if err == nil {
				return pid
			}
		}
	}
	t.Fatalf("no PID in status file:\n%s", b)
	return 0
}

// alive treats a zombie as dead: a container's PID 1 may never reap it.
func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func TestCPUTime(t *testing.T) {
	skipShort(t)
	s := startServer(t, clickhouse.Options{})
	before, err := s.CPUTime()
	if err != nil {
		t.Fatal(err)
	}
	conn := openNative(t, s)
	// Enough work for the server to use measurable CPU (ticks are 10 ms).
	var n uint64
	if err := conn.QueryRow(context.Background(), "SELECT count() FROM numbers(200000000) WHERE sipHash64(number) % 7 = 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	after, err := s.CPUTime()
	if err != nil {
		t.Fatal(err)
	}
	if after <= before {
		t.Fatalf("server cpu time did not grow across a query: %s then %s", before, after)
	}
	if err := s.Stop(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CPUTime(); err == nil {
		t.Fatal("CPUTime of a stopped server returned no error")
	}
}

// skipShort skips, under -short (make test-quick), the tests of the dev
// server's own process lifecycle (kills, restarts, timeouts, ports): each
// starts ClickHouse processes for seconds, and make test runs them all.
func skipShort(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("-short: a process-lifecycle test of the dev ClickHouse; make test runs it")
	}
}
