package mcpgw

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// upstream is one connected upstream server.
type upstream struct {
	cfg    Upstream
	client *mcp.Client

	mu      sync.Mutex
	session *mcp.ClientSession
}

// headerTransport adds the upstream's configured headers, and only those:
// the request is the gateway's own, never carrying the caller's token.
type headerTransport struct {
	headers map[string]string
	base    http.RoundTripper
}

func (t headerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	for k, v := range t.headers {
		r.Header.Set(k, v)
	}
	return t.base.RoundTrip(r)
}

func newUpstream(cfg Upstream, version string) *upstream {
	return &upstream{cfg: cfg, client: mcp.NewClient(&mcp.Implementation{Name: "aigov-gateway", Version: version}, nil)}
}

func (u *upstream) transport() mcp.Transport {
	if u.cfg.URL != "" {
		return &mcp.StreamableClientTransport{
			Endpoint:             u.cfg.URL,
			HTTPClient:           &http.Client{Transport: headerTransport{headers: u.cfg.Headers, base: http.DefaultTransport}},
			MaxRetries:           2,
			DisableStandaloneSSE: true,
		}
	}
	cmd := exec.Command(u.cfg.Command, u.cfg.Args...)
	cmd.Env = append([]string{}, u.cfg.Env...) // nothing of the gateway's environment
	return &mcp.CommandTransport{Command: cmd, TerminateDuration: 2 * time.Second}
}

// connected returns the session, connecting (again) when there is none.
func (u *upstream) connected(ctx context.Context) (*mcp.ClientSession, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.session != nil {
		return u.session, nil
	}
	cs, err := u.client.Connect(ctx, u.transport(), nil)
	if err != nil {
		return nil, fmt.Errorf("connect to upstream %s: %w", u.cfg.Name, err)
	}
	u.session = cs
	return cs, nil
}

// drop forgets a broken session so the next use reconnects.
func (u *upstream) drop(cs *mcp.ClientSession) {
	u.mu.Lock()
	if u.session == cs {
		u.session = nil
	}
	u.mu.Unlock()
	_ = cs.Close()
}

// tools lists the upstream's tools (every page, at most maxTools).
func (u *upstream) tools(ctx context.Context) ([]*mcp.Tool, error) {
	cs, err := u.connected(ctx)
	if err != nil {
		return nil, err
	}
	var out []*mcp.Tool
	for t, err := range cs.Tools(ctx, nil) {
		if err != nil {
			u.drop(cs)
			return nil, fmt.Errorf("list tools of upstream %s: %w", u.cfg.Name, err)
		}
		if len(out) >= maxTools {
			return nil, fmt.Errorf("upstream %s lists more than %d tools", u.cfg.Name, maxTools)
		}
		out = append(out, t)
	}
	return out, nil
}

// call calls a tool, reconnecting once if the session broke.
func (u *upstream) call(ctx context.Context, params *mcp.CallToolParams) (*mcp.CallToolResult, error) {
	for attempt := 0; ; attempt++ {
		cs, err := u.connected(ctx)
		if err != nil {
			return nil, err
		}
		res, err := cs.CallTool(ctx, params)
		if err == nil {
			return res, nil
		}
		if attempt > 0 || !errors.Is(err, mcp.ErrConnectionClosed) {
			return nil, fmt.Errorf("call %s on upstream %s: %w", params.Name, u.cfg.Name, err)
		}
		u.drop(cs)
	}
}

func (u *upstream) close() {
	u.mu.Lock()
	cs := u.session
	u.session = nil
	u.mu.Unlock()
	if cs != nil {
		_ = cs.Close()
	}
}

// maxTools bounds the tools one upstream may list.
const maxTools = 1000
