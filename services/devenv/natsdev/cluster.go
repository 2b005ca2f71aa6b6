package natsdev

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devcerts"
	"github.com/aigov/aigov/services/devenv/proc"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Bus is what the dev stack needs of NATS, whether one embedded server
// (Server) or a cluster of node processes (Cluster).
type Bus interface {
	URL() string
	CAFile() string
	Password(role string) string
	Connect(role string, extra ...nats.Option) (*nats.Conn, error)
	ConnectT(tb testing.TB, role string, extra ...nats.Option) (*nats.Conn, jetstream.JetStream)
	InboxPrefix(user string) string
	ClientCert(role string) (certFile, keyFile string)
	Shutdown()
}

var (
	_ Bus = (*Server)(nil)
	_ Bus = (*Cluster)(nil)
)

// ClusterOptions configure a JetStream cluster of nats-server processes on
// loopback.
type ClusterOptions struct {
	// Dir holds each node's store, configuration and log, and the dev CA;
	// required.
	Dir string
	// NodeBin is the natsnode binary (BuildNode makes one); required.
	NodeBin string
	// Nodes in the cluster; 3 when zero.
	Nodes int
	// Topology supplies the per-role permissions; its Replicas is set to
	// the number of nodes (at most 3) for provisioning.
	Topology *topology.Topology
	// NoProvision leaves the bus empty.
	NoProvision bool
}

// Cluster is a running JetStream cluster whose nodes are child processes,
// with the same per-role users and permissions on every node as a single
// Server. A node can be killed, paused, resumed and started again on its
// own store with the same ports and passwords.
type Cluster struct {
	dir       string
	bin       string
	topo      topology.Topology
	certs     *devcerts.Bundle
	passwords map[string]string
	inboxes   map[string]string

	mu    sync.Mutex
	nodes []*node
}

type node struct {
	name                   string
	port, routePort, mPort int
	config, logPath, store string
	cmd                    *exec.Cmd
	done                   chan struct{}
	paused                 bool
}

// nodeStopTimeout bounds a node's clean shutdown before it is killed.
const nodeStopTimeout = 30 * time.Second

// BuildNode compiles the natsnode command into dir and returns its path.
// It needs the Go toolchain and the aigov workspace (the repository root
// as root).
func BuildNode(ctx context.Context, root, dir string) (string, error) {
	out := filepath.Join(dir, "natsnode")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "github.com/aigov/aigov/services/devenv/natsnode")
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("natsdev: build natsnode: %w\n%s", err, b)
	}
	return out, nil
}

// StartCluster writes each node's configuration, starts the nodes, waits
// until every one reports healthy JetStream and provisions the topology.
// On error whatever started is shut down.
func StartCluster(ctx context.Context, opts ClusterOptions) (*Cluster, error) {
	// Ports are picked free and bound by a node a moment later, so another
	// process can take one in between (seen on a loaded machine). A fresh
	// cluster then starts again on new ports, a bounded number of times.
	for attempt := 1; ; attempt++ {
		c, err := startCluster(ctx, opts)
		if err == nil || attempt == startAttempts || !errors.Is(err, errPortTaken) {
			return c, err
		}
		for _, n := range c.nodes {
			if err := os.RemoveAll(filepath.Join(opts.Dir, n.name)); err != nil {
				return nil, fmt.Errorf("natsdev: clear %s for a new start: %w", n.name, err)
			}
		}
	}
}

// startAttempts bounds StartCluster's restarts after a port was taken.
const startAttempts = 3

// errPortTaken marks a node that could not bind a port it was given.
var errPortTaken = errors.New("port taken")

func startCluster(ctx context.Context, opts ClusterOptions) (c *Cluster, err error) {
	if opts.Dir == "" || opts.NodeBin == "" {
		return nil, errors.New("natsdev: ClusterOptions.Dir and NodeBin are required")
	}
	if opts.Nodes == 0 {
		opts.Nodes = 3
	}
	if opts.Nodes < 1 || opts.Nodes > 9 {
		return nil, fmt.Errorf("natsdev: %d nodes: want 1 to 9", opts.Nodes)
	}
	topo := topology.New("")
	if opts.Topology != nil {
		topo = *opts.Topology
	}
	if len(topo.Tenants) > 0 {
		return nil, errors.New("natsdev: a cluster runs without tenant accounts")
	}
	topo.Replicas = min(opts.Nodes, 3)
	c = &Cluster{dir: opts.Dir, bin: opts.NodeBin, topo: topo, passwords: map[string]string{}, inboxes: map[string]string{}}
	defer func() {
		if err != nil {
			c.Shutdown()
		}
	}()
	if c.certs, err = devcerts.Ensure(filepath.Join(opts.Dir, TLSDir)); err != nil {
		return c, fmt.Errorf("natsdev: %w", err)
	}
	users, err := c.users()
	if err != nil {
		return c, err
	}
	for i := range opts.Nodes {
		n := &node{name: fmt.Sprintf("aigov-n%d", i)}
		for _, p := range []*int{&n.port, &n.routePort, &n.mPort} {
			if *p, err = proc.FreePort(); err != nil {
				return c, err
			}
		}
		n.store = filepath.Join(opts.Dir, n.name, "store")
		n.config = filepath.Join(opts.Dir, n.name, "node.conf")
		n.logPath = filepath.Join(opts.Dir, n.name, "node.log")
		if err := os.MkdirAll(n.store, 0o755); err != nil {
			return c, fmt.Errorf("natsdev: %w", err)
		}
		c.nodes = append(c.nodes, n)
	}
	for _, n := range c.nodes {
		if err := c.writeConfig(n, users); err != nil {
			return c, err
		}
	}
	for i := range c.nodes {
		if err := c.spawn(i); err != nil {
			return c, err
		}
	}
	for i := range c.nodes {
		if err := c.WaitHealthy(ctx, i, readyTimeout); err != nil {
			return c, err
		}
	}
	if !opts.NoProvision {
		if err := c.provision(ctx); err != nil {
			return c, err
		}
	}
	return c, nil
}

// confUser is a user of a node's configuration file.
type confUser struct {
	User        string         `json:"user"`
	Password    string         `json:"password"`
	Permissions map[string]any `json:"permissions,omitempty"`
}

func (c *Cluster) users() ([]confUser, error) {
	accs, err := c.topo.Accounts()
	if err != nil {
		return nil, fmt.Errorf("natsdev: %w", err)
	}
	users := []confUser{}
	add := func(name string, perms *topology.Permissions) {
		c.passwords[name] = randomPassword()
		u := confUser{User: name, Password: c.passwords[name]}
		if perms != nil {
			u.Permissions = map[string]any{
				"publish":   map[string]any{"allow": nonNil(perms.Publish)},
				"subscribe": map[string]any{"allow": nonNil(perms.Subscribe)},
			}
		}
		users = append(users, u)
	}
	add(AdminUser, nil)
	c.inboxes[AdminUser] = schemas.InboxPrefix(AdminUser)
	for _, a := range accs {
		for _, nu := range a.Users {
			p := nu.Permissions
			add(nu.Name, &p)
			c.inboxes[nu.Name] = nu.Inbox
		}
	}
	return users, nil
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

// writeConfig writes a node's configuration: JSON, which nats-server's
// configuration format accepts. Client connections are TLS with the dev
// CA; routes stay on loopback in plain text.
func (c *Cluster) writeConfig(n *node, users []confUser) error {
	var routes []string
	for _, o := range c.nodes {
		if o != n {
			routes = append(routes, "nats-route://127.0.0.1:"+strconv.Itoa(o.routePort))
		}
	}
	conf := map[string]any{
		"server_name": n.name,
		"host":        "127.0.0.1",
		"port":        n.port,
		"http":        "127.0.0.1:" + strconv.Itoa(n.mPort),
		"max_payload": schemas.MaxPayloadBytes,
		"jetstream":   map[string]any{"store_dir": n.store},
		"tls": map[string]any{
			"cert_file": c.certs.ServerCert, "key_file": c.certs.ServerKey, "timeout": tlsTimeout,
		},
		"authorization": map[string]any{"users": users},
	}
	if len(c.nodes) > 1 {
		conf["cluster"] = map[string]any{"name": "aigov-dev", "host": "127.0.0.1", "port": n.routePort, "routes": routes}
	}
	// nats-server's parser knows no \u escapes: keep > and & as they are.
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(conf); err != nil {
		return fmt.Errorf("natsdev: node config: %w", err)
	}
	// The file holds every password: readable by the owner only.
	if err := os.WriteFile(n.config, b.Bytes(), 0o600); err != nil {
		return fmt.Errorf("natsdev: node config: %w", err)
	}
	return nil
}

// spawn starts node i's process.
func (c *Cluster) spawn(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.cmd != nil {
		return fmt.Errorf("natsdev: node %s is already running", n.name)
	}
	logFile, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("natsdev: %w", err)
	}
	cmd := exec.Command(c.bin, n.config)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// A node must not outlive whoever started it, even if that is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return fmt.Errorf("natsdev: start node %s: %w", n.name, err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logFile.Close()
		close(done)
	}()
	n.cmd, n.done, n.paused = cmd, done, false
	return nil
}

// WaitHealthy waits until node i's monitoring endpoint reports healthy
// JetStream (/healthz: the node is in the cluster and current).
func (c *Cluster) WaitHealthy(ctx context.Context, i int, timeout time.Duration) error {
	c.mu.Lock()
	n := c.nodes[i]
	done := n.done
	c.mu.Unlock()
	hc := &http.Client{Timeout: time.Second}
	url := "http://127.0.0.1:" + strconv.Itoa(n.mPort) + "/healthz"
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case <-done:
			tail := proc.Tail(n.logPath, 10)
			if strings.Contains(tail, "address already in use") {
				return fmt.Errorf("natsdev: node %s: %w; last log lines:\n%s", n.name, errPortTaken, tail)
			}
			return fmt.Errorf("natsdev: node %s exited during start; last log lines:\n%s", n.name, tail)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		resp, err := hc.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
	}
	return fmt.Errorf("natsdev: node %s not healthy within %s; last log lines:\n%s", n.name, timeout, proc.Tail(n.logPath, 10))
}

func (c *Cluster) provision(ctx context.Context) error {
	nc, err := c.Connect(schemas.RoleProvisioner)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("natsdev: jetstream: %w", err)
	}
	// Right after forming, a cluster may still be electing leaders:
	// retry, each attempt bounded, the whole bounded too.
	deadline := time.Now().Add(90 * time.Second)
	for {
		actx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err = c.topo.Provision(actx, js)
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("natsdev: provision cluster: %w", err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("natsdev: provision cluster: %w", ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// Topology is the provisioned topology (Replicas set for the cluster).
func (c *Cluster) Topology() topology.Topology { return c.topo }

// Nodes is the number of nodes.
func (c *Cluster) Nodes() int { return len(c.nodes) }

// NodeName is node i's server name.
func (c *Cluster) NodeName(i int) string { return c.nodes[i].name }

// NodeURL is node i's client URL.
func (c *Cluster) NodeURL(i int) string {
	return "tls://127.0.0.1:" + strconv.Itoa(c.nodes[i].port)
}

// NodeIndex returns the index of the node called name, or -1.
func (c *Cluster) NodeIndex(name string) int {
	for i, n := range c.nodes {
		if n.name == name {
			return i
		}
	}
	return -1
}

// NodeLog is node i's log file.
func (c *Cluster) NodeLog(i int) string { return c.nodes[i].logPath }

// Pid is node i's process id, 0 when it is not running.
func (c *Cluster) Pid(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if n := c.nodes[i]; n.cmd != nil {
		return n.cmd.Process.Pid
	}
	return 0
}

// Kill SIGKILLs node i, as a crash would, and waits until it is gone.
func (c *Cluster) Kill(i int) error {
	c.mu.Lock()
	n := c.nodes[i]
	cmd, done := n.cmd, n.done
	n.cmd, n.paused = nil, false
	c.mu.Unlock()
	if cmd == nil {
		return fmt.Errorf("natsdev: node %s is not running", n.name)
	}
	if err := cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("natsdev: kill node %s: %w", n.name, err)
	}
	<-done
	return nil
}

// Stop shuts node i down cleanly (SIGTERM; SIGKILL after 30 s).
func (c *Cluster) Stop(i int) error {
	c.mu.Lock()
	n := c.nodes[i]
	cmd, done, paused := n.cmd, n.done, n.paused
	n.cmd, n.paused = nil, false
	c.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if paused {
		_ = cmd.Process.Signal(syscall.SIGCONT)
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
		return nil
	case <-time.After(nodeStopTimeout):
		_ = cmd.Process.Kill()
		<-done
		return fmt.Errorf("natsdev: node %s did not stop within %s of SIGTERM", n.name, nodeStopTimeout)
	}
}

// Pause SIGSTOPs node i: it holds its connections but answers nothing.
func (c *Cluster) Pause(i int) error { return c.signal(i, syscall.SIGSTOP, true) }

// Resume SIGCONTs a paused node i.
func (c *Cluster) Resume(i int) error { return c.signal(i, syscall.SIGCONT, false) }

func (c *Cluster) signal(i int, sig syscall.Signal, paused bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.cmd == nil {
		return fmt.Errorf("natsdev: node %s is not running", n.name)
	}
	if err := n.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("natsdev: signal node %s: %w", n.name, err)
	}
	n.paused = paused
	return nil
}

// Restart starts a killed or stopped node i again on its own store, ports
// and passwords, and waits until it is healthy.
func (c *Cluster) Restart(ctx context.Context, i int) error {
	if err := c.spawn(i); err != nil {
		return err
	}
	return c.WaitHealthy(ctx, i, readyTimeout)
}

// RestartAll stops every node cleanly, then starts them all again on
// their stores and waits until each is healthy: a whole-cluster restart.
// With kill, the nodes are SIGKILLed instead.
func (c *Cluster) RestartAll(ctx context.Context, kill bool) error {
	var errs []error
	for i := range c.nodes {
		if kill {
			if err := c.Kill(i); err != nil {
				errs = append(errs, err)
			}
		} else if err := c.Stop(i); err != nil {
			errs = append(errs, err)
		}
	}
	for i := range c.nodes {
		if err := c.spawn(i); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
	for i := range c.nodes {
		if err := c.WaitHealthy(ctx, i, 2*readyTimeout); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
	return errors.Join(errs...)
}

// StreamLeader returns the index of the node leading stream, as the
// cluster reports it to nc's JetStream.
func (c *Cluster) StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return -1, fmt.Errorf("natsdev: stream %s: %w", stream, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return -1, fmt.Errorf("natsdev: stream %s: %w", stream, err)
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, fmt.Errorf("natsdev: stream %s has no leader", stream)
	}
	i := c.NodeIndex(info.Cluster.Leader)
	if i < 0 {
		return -1, fmt.Errorf("natsdev: stream %s led by unknown node %q", stream, info.Cluster.Leader)
	}
	return i, nil
}

// URL lists every node's client URL, comma-separated, as AIGOV_NATS_URL
// and nats.Connect take it.
func (c *Cluster) URL() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.NodeURL(i)
	}
	return strings.Join(urls, ",")
}

// CAFile is the dev CA's PEM file.
func (c *Cluster) CAFile() string { return c.certs.CA }

// Password returns the password of a role's user.
func (c *Cluster) Password(role string) string { return c.passwords[role] }

// ClientCert returns empty strings: the cluster's users have passwords.
func (c *Cluster) ClientCert(string) (certFile, keyFile string) { return "", "" }

// InboxPrefix is the inbox prefix of a user's connection.
func (c *Cluster) InboxPrefix(user string) string {
	if p, ok := c.inboxes[user]; ok {
		return p
	}
	return schemas.InboxPrefix(user)
}

// Connect opens a connection as role to any node of the cluster.
func (c *Cluster) Connect(role string, extra ...nats.Option) (*nats.Conn, error) {
	return connectAs(c.URL(), role, c.InboxPrefix(role), c.passwords, append([]nats.Option{nats.RootCAs(c.certs.CA)}, extra...))
}

// Shutdown stops every node and waits for each process to end.
func (c *Cluster) Shutdown() {
	for i := range c.nodes {
		_ = c.Stop(i)
	}
}
