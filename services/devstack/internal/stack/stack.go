// Package stack runs the whole aigov pipeline on one machine: embedded NATS
// with JetStream, the dev OIDC provider, a local ClickHouse process, and the
// four services as separate processes. `make run`, the end-to-end test and
// the load generator all start it the same way.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/clickhouse"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/devenv/proc"
	"github.com/aigov/aigov/services/devstack/internal/webhook"
)

// Services are the four pipeline binaries, in start order: the sink first,
// so nothing decided is waiting on it.
var Services = []string{"audit", "reaper", "policy", "authn"}

// logoutOffset puts the reaper's back-channel logout endpoint on
// HTTPBasePort+5 when the stack runs on fixed ports.
const logoutOffset = 5

// httpOffset keeps each service on its default port (8081 authn … 8084
// reaper) when the stack runs on fixed ports.
var httpOffset = map[string]int{"authn": 1, "policy": 2, "audit": 3, "reaper": 4}

// Options configure a stack. Zero ports pick free ones.
type Options struct {
	// ServiceEnv is added to every service's environment (KEY=value), e.g.
	// a benchmark's AIGOV_SIGNING_LINGER.
	ServiceEnv []string
	// Root is the repository root (holds policies/); found from the working
	// directory when empty.
	Root string
	// Dir holds data, logs and token files; required.
	Dir string
	// BinDir holds the service binaries; Build fills it.
	BinDir string
	// NATSPort, IdPPort, ClickHousePort, HTTPBasePort (services use
	// HTTPBasePort+1..4 as authn, policy, audit, reaper) fix ports for a demo users can talk to.
	NATSPort, IdPPort, ClickHousePort, HTTPBasePort int
	// SessionMaxAge configures the reaper, authn and policy (AIGOV_SESSION_MAX_AGE); ReaperInterval the reaper.
	SessionMaxAge, ReaperInterval time.Duration
	// LeaseHeartbeatTTL is how long a job lease lives without a heartbeat
	// (the reaper's AIGOV_LEASE_HEARTBEAT_TTL); zero keeps its default.
	LeaseHeartbeatTTL time.Duration
	// Personas adds principals to the dev IdP (load tests).
	Personas map[string]idp.Persona
	// Progress receives one line per start-up step; nil discards.
	Progress io.Writer
	// LogLevel of the services (default info).
	LogLevel string
	// Tenants run NATS with accounts: the services in AIGOV, each tenant
	// (an ML platform) in its own (natsdev.Options.Tenants).
	Tenants []string
	// Issuers names a file of further trusted issuers in authn's
	// AIGOV_OIDC_CONFIG format (a real IdP such as Dex, Keycloak or Entra);
	// authn trusts them besides the dev IdP.
	Issuers string
	// NATSSyncAlways fsyncs every JetStream write (natsdev.Options.SyncAlways).
	NATSSyncAlways bool
	// ClusterNodes > 0 runs NATS as a JetStream cluster of that many node
	// processes (natsdev.StartCluster) instead of one embedded server; the
	// topology is provisioned with min(nodes, 3) replicas and the services
	// get AIGOV_REPLICAS to match. Not with Tenants.
	ClusterNodes int
	// ApprovalWebhooks runs a local webhook receiver (Stack.Webhooks) for
	// these teams and points the policy service's
	// AIGOV_APPROVAL_WEBHOOKS_FILE at it; WebhookFailFirst answers its
	// first deliveries 503, so the policy service's retry is seen.
	ApprovalWebhooks []string
	WebhookFailFirst int
}

// Stack is a running pipeline.
type Stack struct {
	Root string
	Dir  string
	// NATS is the bus: Server or, with Options.ClusterNodes, Cluster.
	NATS natsdev.Bus
	// Server is the embedded server (nil on a cluster); Cluster the node
	// processes (nil on one server).
	Server     *natsdev.Server
	Cluster    *natsdev.Cluster
	IdP        *idp.Provider
	ClickHouse *clickhouse.Server
	// DB is a ClickHouse connection to the audit database.
	DB driver.Conn
	// Platform is a connection as the ML platform's NATS user; Client sends
	// requests on it.
	Platform *nats.Conn
	Client   *client.Client
	// Admin may inspect streams and buckets (tests and the demo only).
	Admin   *nats.Conn
	AdminJS jetstream.JetStream
	// Keys are the dev signing keys of every signing role and the trust
	// file listing them (in Dir/keys, kept across restarts).
	Keys *devkeys.Set
	// Webhooks receives the policy service's approval notifications, with
	// Options.ApprovalWebhooks; nil without.
	Webhooks *webhook.Receiver
	// webhooksFile is the policy service's AIGOV_APPROVAL_WEBHOOKS_FILE.
	webhooksFile string

	mu    sync.Mutex
	procs map[string]*process
	// addrs remembers each service's HTTP address, so StartService brings
	// a stopped or killed service back on the same port.
	addrs map[string]string
	opts  Options
	// logoutAddr is where the reaper serves OIDC back-channel logout.
	logoutAddr string
	// issuersPath is authn's AIGOV_OIDC_CONFIG when Options.Issuers adds
	// issuers to the dev IdP.
	issuersPath string
	// gatewayAddr is where the gateway's API listens once StartGateway ran.
	gatewayAddr string
	gatewayEnv  []string
	// extraEnv is added to one service's environment from its next start
	// (SetServiceEnv).
	extraEnv map[string][]string
}

// Database is the audit database the stack's audit service writes.
const Database = "aigov"

// FindRoot walks up from the working directory to the directory holding
// go.work.
func FindRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 20 {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	return "", errors.New("stack: no go.work above the working directory; run from the aigov repository")
}

// Gateway is the gateway binary: not one of the pipeline's Services (it
// decides nothing); StartGateway runs it.
const Gateway = "gateway"

// Build compiles the four services, the gateway and the aigov CLI into
// binDir.
func Build(ctx context.Context, root, binDir string) error {
	pkgs := []string{"./services/aigov", "./services/" + Gateway, "./services/devenv/mcpdemo/cmd/mcpdemo", "./services/devenv/natsnode"}
	for _, s := range Services {
		pkgs = append(pkgs, "./services/"+s)
	}
	for _, p := range pkgs {
		cmd := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(binDir, filepath.Base(p)), p)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("build %s: %w\n%s", p, err, out)
		}
	}
	return nil
}

// Start brings the whole stack up and waits until every service is ready.
// On error everything already started is stopped.
func Start(ctx context.Context, opts Options) (st *Stack, err error) {
	if opts.Dir == "" || opts.BinDir == "" {
		return nil, errors.New("stack: Options.Dir and Options.BinDir are required")
	}
	if opts.Root == "" {
		if opts.Root, err = FindRoot(); err != nil {
			return nil, err
		}
	}
	if opts.SessionMaxAge == 0 {
		opts.SessionMaxAge = 8 * time.Hour
	}
	if opts.ReaperInterval == 0 {
		opts.ReaperInterval = time.Second
	}
	if opts.LogLevel == "" {
		opts.LogLevel = "info"
	}
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	st = &Stack{Root: opts.Root, Dir: opts.Dir, procs: map[string]*process{}, addrs: map[string]string{}, extraEnv: map[string][]string{}, opts: opts}
	defer func() {
		if err != nil {
			st.Stop()
		}
	}()
	for _, d := range []string{"nats", "clickhouse", "logs", "keys"} {
		if err := os.MkdirAll(filepath.Join(opts.Dir, d), 0o755); err != nil {
			return st, fmt.Errorf("stack: %w", err)
		}
	}

	if st.Keys, err = devkeys.Generate(filepath.Join(opts.Dir, "keys")); err != nil {
		return st, fmt.Errorf("stack: signing keys: %w", err)
	}
	if opts.ClusterNodes > 0 {
		st.Cluster, err = natsdev.StartCluster(ctx, natsdev.ClusterOptions{Dir: filepath.Join(opts.Dir, "nats"), NodeBin: filepath.Join(opts.BinDir, "natsnode"), Nodes: opts.ClusterNodes})
		if err != nil {
			return st, err
		}
		st.NATS = st.Cluster
		fmt.Fprintf(opts.Progress, "nats        %s (JetStream cluster of %d node processes, R%d, TLS with dev CA %s)\n", st.NATS.URL(), opts.ClusterNodes, st.Cluster.Topology().Replicas, st.NATS.CAFile())
	} else {
		st.Server, err = natsdev.Start(natsdev.Options{Dir: filepath.Join(opts.Dir, "nats"), Port: opts.NATSPort, Tenants: opts.Tenants, SyncAlways: opts.NATSSyncAlways})
		if err != nil {
			return st, err
		}
		st.NATS = st.Server
		fmt.Fprintf(opts.Progress, "nats        %s (JetStream, TLS with dev CA %s, one user per service)\n", st.NATS.URL(), st.NATS.CAFile())
	}

	idpAddr := "127.0.0.1:0"
	if opts.IdPPort != 0 {
		idpAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(opts.IdPPort))
	}
	st.IdP, err = idp.Start(ctx, idp.Options{Addr: idpAddr, Extra: opts.Personas})
	if err != nil {
		return st, err
	}
	fmt.Fprintf(opts.Progress, "oidc issuer %s\n", st.IdP.Issuer())

	// TLS adds the secure native port the audit service writes to; the
	// plain port stays for the stack's own reads and clickhouse-client.
	st.ClickHouse, err = clickhouse.Start(ctx, clickhouse.Options{Dir: filepath.Join(opts.Dir, "clickhouse"), TCPPort: opts.ClickHousePort, TLS: true})
	if err != nil {
		return st, err
	}
	fmt.Fprintf(opts.Progress, "clickhouse  %s, TLS %s (version %s)\n", st.ClickHouse.Addr(), st.ClickHouse.SecureAddr(), st.ClickHouse.Version())

	if st.Admin, err = st.NATS.Connect(natsdev.AdminUser); err != nil {
		return st, err
	}
	if st.AdminJS, err = jetstream.New(st.Admin); err != nil {
		return st, fmt.Errorf("stack: %w", err)
	}
	// natsdev.Start provisioned the bus as the provisioner, as aigov bus
	// provision does in compose and Kubernetes; no service can.

	if opts.Issuers != "" {
		if st.issuersPath, err = st.issuersFile(opts.Issuers); err != nil {
			return st, err
		}
	}

	if len(opts.ApprovalWebhooks) > 0 {
		if st.Webhooks, err = webhook.Start(webhook.Options{Teams: opts.ApprovalWebhooks, FailFirst: opts.WebhookFailFirst}); err != nil {
			return st, err
		}
		if st.webhooksFile, err = st.Webhooks.WriteConfig(filepath.Join(opts.Dir, "webhooks")); err != nil {
			return st, err
		}
		fmt.Fprintf(opts.Progress, "webhooks    %s (approval notifications for %s, signatures verified)\n", st.Webhooks.URL("<team>"), strings.Join(opts.ApprovalWebhooks, ", "))
	}

	logoutPort := 0
	if opts.HTTPBasePort != 0 {
		logoutPort = opts.HTTPBasePort + logoutOffset
	} else if logoutPort, err = proc.FreePort(); err != nil {
		return st, err
	}
	st.logoutAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(logoutPort))

	for _, name := range Services {
		port := 0
		if opts.HTTPBasePort != 0 {
			port = opts.HTTPBasePort + httpOffset[name]
		}
		if err := st.startService(ctx, name, port); err != nil {
			return st, err
		}
	}

	if st.Platform, err = st.NATS.Connect(schemas.RolePlatform); err != nil {
		return st, err
	}
	if st.Client, err = client.New(st.Platform, client.Options{Source: "aigov-devstack", Timeout: 10 * time.Second, Trust: st.Keys.Trust()}); err != nil {
		return st, err
	}
	st.DB, err = ch.Open(&ch.Options{
		Addr:        []string{st.ClickHouse.Addr()},
		Auth:        ch.Auth{Database: Database, Username: "default"},
		DialTimeout: 5 * time.Second,
	})
	if err != nil {
		return st, fmt.Errorf("stack: open clickhouse: %w", err)
	}
	return st, nil
}

// env returns the environment of one service: common settings plus its own.
func (st *Stack) env(name, httpAddr string) []string {
	e := []string{
		"PATH=" + os.Getenv("PATH"),
		"AIGOV_NATS_URL=" + st.NATS.URL(),
		"AIGOV_NATS_USER=" + name,
		"AIGOV_NATS_PASSWORD=" + st.NATS.Password(name),
		// The services verify the server against the dev CA: TLS or nothing.
		"AIGOV_NATS_TLS_CA=" + st.NATS.CAFile(),
		"AIGOV_HTTP_ADDR=" + httpAddr,
		"AIGOV_LOG_LEVEL=" + st.opts.LogLevel,
		"AIGOV_TRUST_FILE=" + st.Keys.TrustFile,
	}
	if st.Cluster != nil {
		e = append(e, "AIGOV_REPLICAS="+strconv.Itoa(st.Cluster.Topology().Replicas))
	}
	e = append(e, st.opts.ServiceEnv...)
	st.mu.Lock()
	e = append(e, st.extraEnv[name]...)
	st.mu.Unlock()
	if slices.Contains(devkeys.Roles, name) {
		e = append(e, "AIGOV_SIGNING_KEY="+st.Keys.KeyFile(name))
	}
	switch name {
	case "authn", "policy", "reaper":
		// The three end a session alike: authn and policy check its max
		// age from the token, so it holds while the reaper is down.
		e = append(e, "AIGOV_SESSION_MAX_AGE="+st.opts.SessionMaxAge.String())
	}
	switch name {
	case "authn":
		if st.issuersPath != "" {
			e = append(e, "AIGOV_OIDC_CONFIG="+st.issuersPath)
		} else {
			e = append(e, "AIGOV_OIDC_ISSUERS="+st.IdP.Issuer(), "AIGOV_OIDC_AUDIENCE="+st.IdP.ClientID())
		}
	case Gateway:
		st.mu.Lock()
		e = append(e, st.gatewayEnv...)
		st.mu.Unlock()
	case "policy":
		e = append(e, "AIGOV_POLICY_DIR="+filepath.Join(st.Root, "policies"))
		if st.webhooksFile != "" {
			e = append(e, "AIGOV_APPROVAL_WEBHOOKS_FILE="+st.webhooksFile)
		}
	case "audit":
		// The audit writes over TLS, verifying ClickHouse against its dev CA.
		e = append(e, "AIGOV_CLICKHOUSE_ADDR="+st.ClickHouse.SecureAddr(), "AIGOV_CLICKHOUSE_SECURE=true",
			"AIGOV_CLICKHOUSE_TLS_CA="+st.ClickHouse.CAFile(), "AIGOV_CLICKHOUSE_DATABASE="+Database,
			// A dev signing key for the audit's checkpoints, made on first start;
			// `aigov audit verify` reads its .pub next to it.
			"AIGOV_AUDIT_SIGNING_KEY="+st.AuditKeyPath(), "AIGOV_AUDIT_SIGNING_KEY_CREATE=true",
			// And a dev pseudonym key (HMAC of subjects and masked values).
			"AIGOV_AUDIT_PSEUDONYM_KEY="+st.PseudonymKeyPath(), "AIGOV_AUDIT_PSEUDONYM_KEY_CREATE=true")
	case "reaper":
		e = append(e, "AIGOV_REAPER_INTERVAL="+st.opts.ReaperInterval.String(),
			// Back-channel logout for the dev IdP's sessions.
			"AIGOV_LOGOUT_ADDR="+st.logoutAddr, "AIGOV_OIDC_ISSUERS="+st.IdP.Issuer(), "AIGOV_OIDC_AUDIENCE="+st.IdP.ClientID())
		if st.opts.LeaseHeartbeatTTL > 0 {
			e = append(e, "AIGOV_LEASE_HEARTBEAT_TTL="+st.opts.LeaseHeartbeatTTL.String())
		}
	}
	return e
}

// process is one running service binary.
type process struct {
	name     string
	httpAddr string
	cmd      *exec.Cmd
	logPath  string
	done     chan struct{}
	err      error
}

func (st *Stack) startService(ctx context.Context, name string, port int) error {
	return st.startProcess(ctx, name, name, port)
}

// StartReplica starts one more process of service (e.g. a second authn)
// under the name replica, with the same environment, and waits until it
// is ready. StopService(replica) and Stop end it.
func (st *Stack) StartReplica(ctx context.Context, service, replica string) error {
	st.mu.Lock()
	_, taken := st.procs[replica]
	st.mu.Unlock()
	if taken || slices.Contains(Services, replica) {
		return fmt.Errorf("stack: a process named %s is already running", replica)
	}
	if !slices.Contains(Services, service) {
		return fmt.Errorf("stack: unknown service %q", service)
	}
	return st.startProcess(ctx, replica, service, 0)
}

// StartGateway starts the gateway as the NATS user gateway, its API on
// apiPort (0 picks a free one) and its health port on httpPort, with env
// (KEY=value) added, and waits until it is ready. StopService(Gateway) and
// Stop end it; StartService(Gateway) brings it back on the same ports.
func (st *Stack) StartGateway(ctx context.Context, apiPort, httpPort int, env ...string) error {
	if apiPort == 0 {
		var err error
		if apiPort, err = proc.FreePort(); err != nil {
			return err
		}
	}
	st.mu.Lock()
	st.gatewayAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(apiPort))
	st.gatewayEnv = append([]string{"AIGOV_GATEWAY_ADDR=" + st.gatewayAddr}, env...)
	st.mu.Unlock()
	return st.startProcess(ctx, Gateway, Gateway, httpPort)
}

// Progress is where start-up steps are reported (Options.Progress).
func (st *Stack) Progress() io.Writer { return st.opts.Progress }

// GatewayURL is the gateway's API base URL (http://host:port).
func (st *Stack) GatewayURL() string {
	st.mu.Lock()
	defer st.mu.Unlock()
	return "http://" + st.gatewayAddr
}

// LogoutURL is the reaper's OIDC back-channel logout endpoint.
func (st *Stack) LogoutURL() string { return "http://" + st.logoutAddr + "/backchannel-logout" }

// startProcess runs binary bin as the process called name.
func (st *Stack) startProcess(ctx context.Context, name, bin string, port int) error {
	if port == 0 {
		var err error
		if port, err = proc.FreePort(); err != nil {
			return err
		}
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	logPath := filepath.Join(st.Dir, "logs", name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("stack: %w", err)
	}
	cmd := exec.Command(filepath.Join(st.opts.BinDir, bin))
	cmd.Env = st.env(bin, addr)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// The services must not outlive the stack, even if it is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("stack: start %s: %w", name, err)
	}
	p := &process{name: name, httpAddr: addr, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	st.mu.Lock()
	st.procs[name] = p
	st.addrs[name] = addr
	st.mu.Unlock()
	if err := waitReady(ctx, p, 60*time.Second); err != nil {
		return err
	}
	fmt.Fprintf(st.opts.Progress, "%-11s ready on http://%s (pid %d, log %s)\n", name, addr, cmd.Process.Pid, logPath)
	return nil
}

func waitReady(ctx context.Context, p *process, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	hc := &http.Client{Timeout: time.Second}
	for time.Now().Before(deadline) {
		select {
		case <-p.done:
			return fmt.Errorf("stack: %s exited during start (%v); last log lines:\n%s", p.name, p.err, proc.Tail(p.logPath, 20))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		resp, err := hc.Get("http://" + p.httpAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return fmt.Errorf("stack: %s not ready within %s; last log lines:\n%s", p.name, timeout, proc.Tail(p.logPath, 20))
}

// HTTPAddr is the health/metrics address of a running service.
func (st *Stack) HTTPAddr(name string) string {
	st.mu.Lock()
	defer st.mu.Unlock()
	if p, ok := st.procs[name]; ok {
		return p.httpAddr
	}
	return ""
}

// AuditKeyPath is the audit's checkpoint signing key; the public key is
// next to it with a .pub suffix.
func (st *Stack) AuditKeyPath() string { return filepath.Join(st.Dir, "audit-signing.key") }

// PseudonymKeyPath is the audit's pseudonym key (docs/privacy.md).
func (st *Stack) PseudonymKeyPath() string { return filepath.Join(st.Dir, "audit-pseudonym.key") }

// PeakRSS is the most memory a running service's process has held (its
// VmHWM), in bytes; 0 when it is not running or the system does not say
// (only Linux does).
func (st *Stack) PeakRSS(name string) int64 {
	st.mu.Lock()
	p, ok := st.procs[name]
	st.mu.Unlock()
	if !ok {
		return 0
	}
	rss, err := proc.PeakRSS(p.cmd.Process.Pid)
	if err != nil {
		return 0
	}
	return rss
}

// LogPath is the log file of a service.
func (st *Stack) LogPath(name string) string { return filepath.Join(st.Dir, "logs", name+".log") }

// StopService sends SIGTERM and waits for a clean exit (SIGKILL after 30s).
// It returns the process's exit error: nil means it shut down cleanly.
func (st *Stack) StopService(name string) error {
	st.mu.Lock()
	p, ok := st.procs[name]
	delete(st.procs, name)
	st.mu.Unlock()
	if !ok {
		return nil
	}
	// A paused service must run again to see the SIGTERM.
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(30 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("stack: %s did not stop within 30s of SIGTERM", name)
	}
}

// KillService SIGKILLs a service, as a crash would, and waits until it is
// gone. StartService brings it back.
func (st *Stack) KillService(name string) error {
	st.mu.Lock()
	p, ok := st.procs[name]
	delete(st.procs, name)
	st.mu.Unlock()
	if !ok {
		return fmt.Errorf("stack: %s is not running", name)
	}
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("stack: kill %s: %w", name, err)
	}
	<-p.done
	return nil
}

// StartService starts a stopped or killed service again with the same
// environment and HTTP address, and waits until it is ready.
func (st *Stack) StartService(ctx context.Context, name string) error {
	st.mu.Lock()
	_, running := st.procs[name]
	addr := st.addrs[name]
	st.mu.Unlock()
	if running {
		return fmt.Errorf("stack: %s is already running", name)
	}
	port := 0
	if _, p, err := net.SplitHostPort(addr); err == nil {
		port, _ = strconv.Atoi(p)
	}
	return st.startService(ctx, name, port)
}

// RestartService stops a service cleanly (SIGTERM) and starts it again
// with the same environment and HTTP address.
func (st *Stack) RestartService(ctx context.Context, name string) error {
	if err := st.StopService(name); err != nil {
		return err
	}
	return st.StartService(ctx, name)
}

// SetServiceEnv adds KEY=value settings to one service's environment from
// its next start (e.g. a dev clock offset); nil clears them.
func (st *Stack) SetServiceEnv(name string, env []string) {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.extraEnv[name] = env
}

// PauseService SIGSTOPs a service: it holds its connections and its
// messages in flight but does nothing until ResumeService.
func (st *Stack) PauseService(name string) error { return st.signal(name, syscall.SIGSTOP) }

// ResumeService SIGCONTs a paused service.
func (st *Stack) ResumeService(name string) error { return st.signal(name, syscall.SIGCONT) }

func (st *Stack) signal(name string, sig syscall.Signal) error {
	st.mu.Lock()
	p, ok := st.procs[name]
	st.mu.Unlock()
	if !ok {
		return fmt.Errorf("stack: %s is not running", name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("stack: signal %s: %w", name, err)
	}
	return nil
}

// Pid is the process id of a running service, 0 when it is not running.
func (st *Stack) Pid(name string) int {
	st.mu.Lock()
	defer st.mu.Unlock()
	if p, ok := st.procs[name]; ok {
		return p.cmd.Process.Pid
	}
	return 0
}

// RestartNATS restarts the bus on the same store, ports and passwords: the
// embedded server, or every node of the cluster (stopped cleanly, then
// started again). The services ride it out by reconnecting.
func (st *Stack) RestartNATS(ctx context.Context) error {
	if st.Cluster != nil {
		return st.Cluster.RestartAll(ctx, false)
	}
	return st.Server.Restart()
}

// Stop shuts everything down: services first (so they drain and flush),
// then ClickHouse, the IdP and NATS.
func (st *Stack) Stop() []error {
	var errs []error
	if st.Client != nil {
		_ = st.Client.Close()
	}
	if st.Platform != nil {
		st.Platform.Close()
	}
	// Replicas (StartReplica) first, then the services in reverse order.
	st.mu.Lock()
	var replicas []string
	for name := range st.procs {
		if !slices.Contains(Services, name) {
			replicas = append(replicas, name)
		}
	}
	st.mu.Unlock()
	for _, name := range replicas {
		if err := st.StopService(name); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	for i := len(Services) - 1; i >= 0; i-- {
		if err := st.StopService(Services[i]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", Services[i], err))
		}
	}
	if st.DB != nil {
		_ = st.DB.Close()
	}
	if st.Admin != nil {
		st.Admin.Close()
	}
	if st.ClickHouse != nil {
		if err := st.ClickHouse.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if st.IdP != nil {
		_ = st.IdP.Close()
	}
	if st.Webhooks != nil {
		if err := st.Webhooks.Close(); err != nil {
			errs = append(errs, fmt.Errorf("webhooks: %w", err))
		}
	}
	if st.NATS != nil {
		st.NATS.Shutdown()
	}
	return errs
}
