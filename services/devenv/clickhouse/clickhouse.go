// Package clickhouse starts and stops a real, local ClickHouse server process
// for tests and for the dev stack (`make run`).
//
// ClickHouse cannot be embedded in a Go process the way nats-server can, so
// this package runs the installed server binary with a generated minimal
// config in a directory of the caller's choosing. Everything the server
// writes (data, tmp files, logs, preprocessed configs) stays inside that
// directory, and the server is bound to 127.0.0.1 on free ports, so tests can
// run many servers side by side and clean up with t.TempDir().
//
// It works with the clickhouse-server 18.16 that Debian bookworm ships
// (/usr/sbin/clickhouse-server) and with current releases, including the
// single `clickhouse` binary invoked as `clickhouse server`. Clients must use
// the native protocol (Addr or DSN): clickhouse-go's HTTP transport sends a
// setting that 18.16 rejects.
package clickhouse

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/aigov/aigov/services/devenv/devcerts"
	"github.com/aigov/aigov/services/devenv/proc"
)

// EnvServerBinary names the environment variable that overrides which
// server binary is used, for machines with several ClickHouse versions
// (for example to test against a current release while Debian's 18.16 is
// also installed). Its value is a path or a name looked up on PATH; a binary
// whose base name is "clickhouse" is run as `clickhouse server`.
const EnvServerBinary = "AIGOV_CLICKHOUSE_SERVER"

// ErrNotInstalled is returned (wrapped, with an install hint) by Available
// and Start when no server binary can be found, so callers can tell a
// missing dependency apart from a server that failed to start.
var ErrNotInstalled = errors.New("clickhouse: no ClickHouse server binary found")

// installHint is appended to every "binary not found" error because the fix
// is always the same and the person reading a CI log should not need to
// look it up.
const installHint = "run scripts/install-deps.sh (installs clickhouse-server via apt), " +
	"or set " + EnvServerBinary + " to a clickhouse-server or clickhouse binary"

const (
	defaultStartTimeout = 60 * time.Second
	// stopGrace is how long Stop lets the server shut down cleanly after
	// SIGTERM; 18.16 needs about a second with the generated config.
	stopGrace = 10 * time.Second
	// reapTimeout bounds the wait for the kernel to report a SIGKILLed
	// process as gone, so Stop and Kill can never hang forever.
	reapTimeout = 10 * time.Second
	// tailBytes is how much of the server's console output is kept in
	// memory for error messages.
	tailBytes = 16 << 10
	// tailLines is how many of those lines an error message quotes.
	tailLines = 40
	// portAttempts is how often Start retries with new free ports when a
	// port picked by it was taken by someone else before the server bound it.
	portAttempts = 3
)

// Options configures Start.
type Options struct {
	// Dir holds the generated config, data, tmp files and logs. Required:
	// there is no safe default, and reusing a Dir is how data survives a
	// Kill followed by a new Start. Tests pass t.TempDir().
	Dir string
	// TCPPort is the native-protocol port; 0 picks a free one. Set it when
	// other processes must know the port before the server starts.
	TCPPort int
	// HTTPPort is the HTTP interface port; 0 picks a free one.
	HTTPPort int
	// TLS adds the native protocol over TLS (tcp_port_secure) on a free
	// port, with a server certificate for 127.0.0.1 from a dev CA made in
	// Dir/tls (see SecureAddr and CAFile). The plain port stays, for the
	// readiness check and clients that are not under test.
	TLS bool
	// StartTimeout bounds how long Start (and Restart) wait for the server
	// to answer queries; 0 means 60s, generous for a cold CI machine.
	StartTimeout time.Duration
	// Log receives the server's stdout and stderr (its console log at
	// information level). nil discards it; the last lines are still quoted
	// in errors, and the full log is kept in Dir/log.
	Log io.Writer
}

// Server is a running (or stopped) ClickHouse server process. Its ports
// and Dir stay fixed for its whole life so that Restart brings it back at
// the same addresses. Methods are safe for concurrent use.
type Server struct {
	lay          layout
	bin          string
	binArgs      []string // "server" for the single clickhouse binary
	tcpPort      int
	httpPort     int
	securePort   int              // 0 without Options.TLS
	certs        *devcerts.Bundle // nil without Options.TLS
	startTimeout time.Duration
	log          io.Writer

	mu      sync.Mutex
	proc    *process // nil when not running (never started, stopped, killed)
	version string
}

// process is one run of the server binary.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // exit status; valid after done is closed
	tail *tailBuffer
}

// Available reports which server binary Start would run, or an error
// wrapping ErrNotInstalled that tells the user how to install one. Tests
// call it first so a missing binary fails with the install hint rather than
// an opaque exec error.
func Available() (binary string, err error) {
	bin, _, err := resolveBinary()
	return bin, err
}

// resolveBinary finds the server binary: $AIGOV_CLICKHOUSE_SERVER, then
// clickhouse-server on PATH, then the single clickhouse binary on PATH, then
// Debian's /usr/sbin/clickhouse-server (not on a non-root user's PATH).
func resolveBinary() (bin string, args []string, err error) {
	withArgs := func(p string) (string, []string, error) {
		if filepath.Base(p) == "clickhouse" {
			return p, []string{"server"}, nil
		}
		return p, nil, nil
	}
	if v := os.Getenv(EnvServerBinary); v != "" {
		p, err := exec.LookPath(v)
		if err != nil {
			// An explicit choice that does not work is an error, not a
			// reason to fall back silently to some other version.
			return "", nil, fmt.Errorf("%w: $%s=%q is not an executable (%v); %s",
				ErrNotInstalled, EnvServerBinary, v, err, installHint)
		}
		return withArgs(p)
	}
	for _, name := range []string{"clickhouse-server", "clickhouse"} {
		if p, err := exec.LookPath(name); err == nil {
			return withArgs(p)
		}
	}
	for _, p := range []string{"/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server"} {
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return withArgs(p)
		}
	}
	return "", nil, fmt.Errorf("%w ($%s unset; neither clickhouse-server nor clickhouse on PATH); %s",
		ErrNotInstalled, EnvServerBinary, installHint)
}

// Start launches a server in opts.Dir and returns once it answers
// `SELECT 1` over the native protocol, so callers can use it immediately.
// ctx bounds only the startup; the server runs until Stop or Kill (or until
// this Go process dies). On failure the error quotes the end of the
// server's log, because "did not start" alone is useless in a CI log.
func Start(ctx context.Context, opts Options) (*Server, error) {
	if opts.Dir == "" {
		return nil, errors.New("clickhouse: Options.Dir is required (the server's data directory; tests pass t.TempDir())")
	}
	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: Options.Dir: %w", err)
	}
	if opts.TCPPort < 0 || opts.HTTPPort < 0 {
		return nil, fmt.Errorf("clickhouse: negative port in Options (tcp %d, http %d); use 0 to pick a free port",
			opts.TCPPort, opts.HTTPPort)
	}
	if opts.TCPPort != 0 && opts.TCPPort == opts.HTTPPort {
		return nil, fmt.Errorf("clickhouse: TCPPort and HTTPPort are both %d", opts.TCPPort)
	}
	bin, binArgs, err := resolveBinary()
	if err != nil {
		return nil, err
	}
	s := &Server{
		lay:          newLayout(dir),
		bin:          bin,
		binArgs:      binArgs,
		startTimeout: opts.StartTimeout,
		log:          opts.Log,
	}
	if s.startTimeout <= 0 {
		s.startTimeout = defaultStartTimeout
	}

	if opts.TLS {
		if s.certs, err = devcerts.Ensure(filepath.Join(dir, "tls"), "127.0.0.1", "localhost"); err != nil {
			return nil, fmt.Errorf("clickhouse: %w", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for attempt := 1; ; attempt++ {
		if s.tcpPort, s.httpPort, err = pickPorts(opts.TCPPort, opts.HTTPPort); err != nil {
			return nil, err
		}
		if opts.TLS {
			for s.securePort == 0 || s.securePort == s.tcpPort || s.securePort == s.httpPort {
				if s.securePort, err = proc.FreePort(); err != nil {
					return nil, err
				}
			}
		}
		err = s.startLocked(ctx)
		if err == nil {
			return s, nil
		}
		// Picking a port by listening and closing leaves a window in which
		// another process (a parallel test) can take it; only then retry.
		autoPorts := opts.TCPPort == 0 && opts.HTTPPort == 0
		if !autoPorts || !errors.Is(err, errPortInUse) || attempt >= portAttempts {
			return nil, err
		}
	}
}

// pickPorts returns the requested ports, replacing zeros with free ones.
func pickPorts(tcp, http int) (int, int, error) {
	var err error
	if tcp == 0 {
		if tcp, err = proc.FreePort(); err != nil {
			return 0, 0, err
		}
	}
	for http == 0 || http == tcp {
		if http, err = proc.FreePort(); err != nil {
			return 0, 0, err
		}
	}
	return tcp, http, nil
}

// Addr is the native-protocol address, "127.0.0.1:<tcp port>", for
// clickhouse.Options.Addr.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.tcpPort)) }

// HTTPAddr is the HTTP interface address, "127.0.0.1:<http port>", for
// health checks and curl; clickhouse-go's HTTP transport does not work with
// 18.16, so Go clients should use Addr or DSN.
func (s *Server) HTTPAddr() string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.httpPort))
}

// SecureAddr is the native protocol over TLS, "127.0.0.1:<port>", or ""
// without Options.TLS.
func (s *Server) SecureAddr() string {
	if s.securePort == 0 {
		return ""
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.securePort))
}

// CAFile is the PEM CA that signed the secure port's certificate, or ""
// without Options.TLS.
func (s *Server) CAFile() string {
	if s.certs == nil {
		return ""
	}
	return s.certs.CA
}

// DSN is a native-protocol DSN for the default database and passwordless
// default user, accepted by clickhouse.ParseDSN and clickhouse.OpenDB
// (via sql.Open("clickhouse", dsn)).
func (s *Server) DSN() string { return "clickhouse://" + s.Addr() + "/default" }

// Version is the server's own `SELECT version()`, recorded at the last
// successful start, so tests and the dev stack can log or gate on the real
// server version (18.16 and current releases differ a lot in SQL).
func (s *Server) Version() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.version
}

// Dir is the absolute data directory, handy for finding the server's log
// files (Dir/log) after a failure.
func (s *Server) Dir() string { return s.lay.root }

// CPUTime is the user plus system CPU time the running server process has
// used since it started. Benchmarks read it before and after a run to
// report the database's share of the cost, which a client's own profile
// cannot see.
func (s *Server) CPUTime() (time.Duration, error) {
	pid, err := s.pid()
	if err != nil {
		return 0, err
	}
	return proc.CPUTime(pid)
}

// pid is the running server process's pid.
func (s *Server) pid() (int, error) {
	s.mu.Lock()
	p := s.proc
	s.mu.Unlock()
	if p == nil || p.exited() {
		return 0, errors.New("clickhouse server is not running")
	}
	return p.cmd.Process.Pid, nil
}

// PeakRSS is the server process's peak resident set size, for benchmarks.
func (s *Server) PeakRSS() (int64, error) {
	pid, err := s.pid()
	if err != nil {
		return 0, err
	}
	return proc.PeakRSS(pid)
}

// Stop shuts the server down cleanly: SIGTERM, up to 10s to exit, then
// SIGKILL. It is idempotent and returns nil if the server is already gone,
// so it can sit in t.Cleanup next to explicit Stop or Kill calls.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stopLocked()
}

func (s *Server) stopLocked() error {
	p := s.proc
	if p == nil {
		return nil
	}
	s.proc = nil
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return p.kill()
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(stopGrace):
		return p.kill()
	}
}

// Kill SIGKILLs the server immediately, as a crash would, and waits until
// it is gone so that Restart (or a new Start on the same Dir) can take the
// data directory's lock and the ports right away. Data from completed
// INSERTs survives. Like Stop, it returns nil if the server is not running.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	if p == nil {
		return nil
	}
	s.proc = nil
	return p.kill()
}

// Restart stops the server (if running) and starts it again on the same
// Dir and ports, so clients that hold Addr or DSN reconnect without being
// reconfigured. Tests use it to take ClickHouse away for a while and check
// that the pipeline catches up. ctx bounds the startup, as in Start.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.stopLocked(); err != nil {
		return err
	}
	return s.startLocked(ctx)
}

// startLocked writes the config, launches the process and waits until it
// answers queries. The caller holds s.mu.
func (s *Server) startLocked(ctx context.Context) error {
	var tls *tlsListener
	if s.certs != nil {
		tls = &tlsListener{port: s.securePort, cert: s.certs.ServerCert, key: s.certs.ServerKey}
	}
	if err := s.lay.write(s.tcpPort, s.httpPort, tls); err != nil {
		return err
	}
	p, err := s.spawn()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.startTimeout)
	defer cancel()
	version, err := s.waitReady(ctx, p)
	if err != nil {
		_ = p.kill()
		return err
	}
	s.proc = p
	s.version = version
	return nil
}

// spawn starts the server binary. The fork happens on a goroutine locked to
// its OS thread that stays blocked in Wait for the process's whole life:
// Linux delivers Pdeathsig when the forking *thread* exits, and Go may
// otherwise retire that thread while the server is still running.
func (s *Server) spawn() (*process, error) {
	tail := &tailBuffer{max: tailBytes}
	args := append(append([]string{}, s.binArgs...), "--config-file="+s.lay.configFile())
	cmd := exec.Command(s.bin, args...)
	cmd.Dir = s.lay.root
	out := &teeWriter{tail: tail, log: s.log}
	cmd.Stdout = out
	cmd.Stderr = out
	// Current releases can fork a watchdog parent that would hide the real
	// server from our signals; 18.16 ignores the variable.
	cmd.Env = append(os.Environ(), "CLICKHOUSE_WATCHDOG_ENABLE=0")
	cmd.SysProcAttr = sysProcAttr()
	// Wait also waits for the output pipe to close; do not let a stray
	// child holding it make Stop or Kill hang.
	cmd.WaitDelay = 2 * time.Second

	p := &process{cmd: cmd, done: make(chan struct{}), tail: tail}
	started := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			return
		}
		started <- nil
		p.err = cmd.Wait()
		close(p.done)
	}()
	if err := <-started; err != nil {
		return nil, fmt.Errorf("clickhouse: start %s: %w", s.bin, err)
	}
	return p, nil
}

// errPortInUse marks startup failures caused by a port collision, which
// Start retries with new ports when it picked them itself.
var errPortInUse = errors.New("port already in use")

// waitReady polls the native protocol until `SELECT 1` answers, the process
// exits, or ctx ends, and returns the server's version.
func (s *Server) waitReady(ctx context.Context, p *process) (string, error) {
	conn, err := ch.Open(&ch.Options{
		Addr:         []string{s.Addr()},
		Auth:         ch.Auth{Database: "default", Username: "default"},
		DialTimeout:  time.Second,
		MaxOpenConns: 1,
		MaxIdleConns: 1,
	})
	if err != nil {
		return "", fmt.Errorf("clickhouse: probe client: %w", err)
	}
	defer conn.Close()

	var lastErr error
	tick := time.NewTicker(25 * time.Millisecond)
	defer tick.Stop()
	for {
		// A probe can block for up to a second (a silent listener on the
		// port); check for an exited server first so that its error is
		// reported as soon as possible rather than after another probe.
		if p.exited() {
			return "", s.exitError(p)
		}
		select {
		case <-p.done:
			return "", s.exitError(p)
		case <-ctx.Done():
			return "", fmt.Errorf("clickhouse: server %s did not answer SELECT 1 within %v (%v; last probe error: %v)%s",
				s.describe(), s.startTimeout, ctx.Err(), lastErr, p.tail.quote())
		case <-tick.C:
		}
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		version, err := s.probe(pctx, conn)
		cancel()
		if err == nil {
			return version, nil
		}
		var foreign *foreignServerError
		if errors.As(err, &foreign) {
			return "", fmt.Errorf("clickhouse: server %s: %w%s", s.describe(), err, p.tail.quote())
		}
		if ctx.Err() == nil || lastErr == nil {
			lastErr = err // keep the last real failure, not our own deadline
		}
	}
}

// exitError describes a server that died during startup, quoting its log.
func (s *Server) exitError(p *process) error {
	msg := fmt.Sprintf("clickhouse: server %s exited during startup (%v)", s.describe(), p.err)
	if strings.Contains(p.tail.String(), "Address already in use") {
		return fmt.Errorf("%s: %w%s", msg, errPortInUse, p.tail.quote())
	}
	return fmt.Errorf("%s%s", msg, p.tail.quote())
}

// probe runs the readiness query and reads the version. It also checks
// that the answering server keeps its data in our Dir: with a fixed port
// and another ClickHouse already listening there, `SELECT 1` would succeed
// against the wrong server while ours dies on "Address already in use".
func (s *Server) probe(ctx context.Context, conn ch.Conn) (string, error) {
	var one uint8
	if err := conn.QueryRow(ctx, "SELECT 1").Scan(&one); err != nil {
		return "", err
	}
	var version string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		return "", err
	}
	var dataPath string
	err := conn.QueryRow(ctx, "SELECT data_path FROM system.databases WHERE name = 'system'").Scan(&dataPath)
	if err == nil && filepath.IsAbs(dataPath) && !s.ownsPath(dataPath) {
		return "", &foreignServerError{addr: s.Addr(), dataPath: dataPath}
	}
	// Any other outcome (an error on some future version without that
	// column, or a relative path) proves nothing either way; the server
	// answered, which is what Start promises.
	return version, nil
}

// ownsPath reports whether p lies in our data directory, also when the
// server reports it with symlinks resolved (macOS's /tmp, for one).
func (s *Server) ownsPath(p string) bool {
	if strings.HasPrefix(p, s.lay.data+"/") {
		return true
	}
	real, err := filepath.EvalSymlinks(s.lay.data)
	return err == nil && strings.HasPrefix(p, real+"/")
}

// foreignServerError reports that a server other than ours answered on
// our port.
type foreignServerError struct {
	addr, dataPath string
}

func (e *foreignServerError) Error() string {
	return fmt.Sprintf("another ClickHouse server (data in %s) is already listening on %s", e.dataPath, e.addr)
}

// Is makes the error match errPortInUse, so Start retries on other ports
// when it picked them.
func (e *foreignServerError) Is(target error) bool { return target == errPortInUse }

// describe names the server in errors: binary, dir and ports are what one
// needs to reproduce a failure by hand.
func (s *Server) describe() string {
	cmd := s.bin
	if len(s.binArgs) > 0 {
		cmd += " " + strings.Join(s.binArgs, " ")
	}
	return fmt.Sprintf("%q (config %s, tcp %d, http %d)", cmd, s.lay.configFile(), s.tcpPort, s.httpPort)
}

// exited reports whether the process has already been reaped.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill SIGKILLs the process and waits until it has been reaped, so its
// data-dir lock and ports are free when kill returns.
func (p *process) kill() error {
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		if p.exited() {
			return nil
		}
		return fmt.Errorf("clickhouse: kill server pid %d: %w", p.cmd.Process.Pid, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(reapTimeout):
		return fmt.Errorf("clickhouse: server pid %d still running %v after SIGKILL", p.cmd.Process.Pid, reapTimeout)
	}
}

// teeWriter feeds the server's output to the in-memory tail and to
// Options.Log. Errors from Options.Log are ignored: a closed log file must
// not break the pipe and stall the server.
type teeWriter struct {
	tail *tailBuffer
	log  io.Writer
}

func (w *teeWriter) Write(b []byte) (int, error) {
	w.tail.Write(b)
	if w.log != nil {
		_, _ = w.log.Write(b)
	}
	return len(b), nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu        sync.Mutex
	max       int
	buf       []byte
	truncated bool // buf starts mid-line
}

func (t *tailBuffer) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, b...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.truncated = true
	}
	return len(b), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return string(t.buf)
}

// quote formats the last tailLines lines for an error message.
func (t *tailBuffer) quote() string {
	t.mu.Lock()
	s := string(t.buf)
	if i := strings.IndexByte(s, '\n'); t.truncated && i >= 0 {
		s = s[i+1:]
	}
	t.mu.Unlock()
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return "; the server wrote no output"
	}
	lines := strings.Split(s, "\n")
	if len(lines) > tailLines {
		lines = lines[len(lines)-tailLines:]
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "; last %d lines of server output:", len(lines))
	for _, l := range lines {
		b.WriteString("\n    ")
		b.WriteString(l)
	}
	return b.String()
}
