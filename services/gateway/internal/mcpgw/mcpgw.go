// Package mcpgw is the gateway's MCP front end: an MCP server over
// Streamable HTTP that re-exposes the tools of upstream MCP servers as
// "<server>.<tool>" and turns every tools/call into a governed aigov
// request (action agent.tool_call on Tool::"<server>.<tool>"). A call
// reaches its upstream only on allow; a deny is a tool error carrying the
// deny code and reason. tools/list shows only the tools the caller may
// see (action agent.tool_list, decided per tool and cached briefly). The
// caller's OIDC token goes to aigov in the request header and nowhere else:
// never upstream, never in a log.
package mcpgw

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
	"github.com/modelcontextprotocol/go-sdk/oauthex"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
)

// Actions the MCP gateway asks aigov about.
const (
	// ActionToolCall is a tools/call: may the caller call this tool with
	// these arguments?
	ActionToolCall = "agent.tool_call"
	// ActionToolList is tools/list's per-tool question: may the caller see
	// this tool? An allow grants nothing but visibility; every call is
	// still decided as ActionToolCall with its arguments.
	ActionToolList = "agent.tool_list"
	// ResourceTool is the resource type of a tool.
	ResourceTool = "Tool"
)

// Meta keys of the gateway's results.
const (
	MetaRequestID = "aigov/request_id"
	MetaDecision  = "aigov/decision"
	MetaCode      = "aigov/code"
	MetaReason    = "aigov/reason"
	// MetaApprovalID names the approval request an approval_required
	// deny opened; once reviewers approve it, the same call is allowed.
	MetaApprovalID = "aigov/approval_id"
)

// Codes of tool errors that are not aigov deny codes.
const (
	CodeInvalidArguments = "invalid_arguments"
	CodeUpstreamError    = "upstream_error"
)

// Authorizer asks aigov for a decision (*decider.Decider).
type Authorizer interface {
	Authorize(ctx context.Context, call client.Call) (schemas.Decision, error)
}

// Deps are what the MCP gateway runs on.
type Deps struct {
	Log  zerolog.Logger
	Auth Authorizer
	// Decisions counts decisions by front end (label frontend=mcp).
	Decisions *prometheus.CounterVec
	// DecisionTimeout bounds the wait for one decision.
	DecisionTimeout time.Duration
	// ErrorCode names an Authorize error for the caller (httpapi.ErrorStatus).
	ErrorCode func(error) string
	// Version is the gateway's, in its MCP implementation info.
	Version string
}

// Gateway is the MCP front end.
type Gateway struct {
	cfg       File
	deps      Deps
	server    *mcp.Server
	handler   http.Handler
	upstreams []*upstream
	masked    map[string]bool
	visible   *visibility
}

// New connects to every upstream, lists its tools and builds the server.
// A start-up failure of any upstream fails New.
func New(ctx context.Context, cfg File, deps Deps) (*Gateway, error) {
	switch {
	case deps.Auth == nil:
		return nil, errors.New("mcpgw: nil authorizer")
	case deps.Decisions == nil:
		return nil, errors.New("mcpgw: nil decisions counter")
	case deps.DecisionTimeout <= 0:
		return nil, errors.New("mcpgw: DecisionTimeout must be positive")
	case deps.ErrorCode == nil:
		return nil, errors.New("mcpgw: nil ErrorCode")
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("mcpgw: %w", err)
	}
	g := &Gateway{cfg: cfg, deps: deps, masked: map[string]bool{},
		visible: newVisibility(time.Duration(cfg.ListCacheTTL), cfg.ListCacheSize)}
	for _, k := range cfg.MaskedKeys {
		g.masked[strings.ToLower(k)] = true
	}
	g.server = mcp.NewServer(&mcp.Implementation{Name: "aigov-gateway", Version: deps.Version}, &mcp.ServerOptions{
		Instructions: "Every tool call is decided by aigov against your identity; a denied call returns an error with its deny code.",
	})
	for _, uc := range cfg.Servers {
		u := newUpstream(uc, deps.Version)
		g.upstreams = append(g.upstreams, u)
		lctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		tools, err := u.tools(lctx)
		cancel()
		if err != nil {
			g.Close()
			return nil, fmt.Errorf("mcpgw: %w", err)
		}
		for _, t := range tools {
			exposed := *t
			exposed.Name = uc.Name + "." + t.Name
			if exposed.InputSchema == nil {
				exposed.InputSchema = map[string]any{"type": "object"}
			}
			g.server.AddTool(&exposed, g.callHandler(u, t.Name, exposed.Name))
		}
		deps.Log.Info().Str("upstream", uc.Name).Int("tools", len(tools)).Msg("mcp upstream connected")
	}
	g.server.AddReceivingMiddleware(g.filterList)

	prm := g.metadataURL()
	streamable := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return g.server }, &mcp.StreamableHTTPOptions{
		SessionTimeout:      30 * time.Minute,
		MaxRequestBodyBytes: 1 << 20,
	})
	g.handler = auth.RequireBearerToken(g.verifyToken, &auth.RequireBearerTokenOptions{
		ResourceMetadataURL: prm,
	})(g.limitSessions(streamable))
	return g, nil
}

// limitSessions refuses a new session (a POST without Mcp-Session-Id)
// while MaxSessions are open. Two initializes racing past the check can
// open one more each: the overshoot is bounded by the requests in flight.
func (g *Gateway) limitSessions(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.Header.Get("Mcp-Session-Id") == "" {
			if n := g.openSessions(); n >= g.cfg.MaxSessions {
				w.Header().Set("Retry-After", "5")
				http.Error(w, fmt.Sprintf("overloaded: %d MCP sessions open, the most the gateway keeps", n), http.StatusServiceUnavailable)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// openSessions counts the initialized MCP sessions. Any POST without a
// session id makes the SDK open a session, and one that is no initialize
// (the go-sdk client's server/discover probe, sent before it falls back to
// initialize) is closed only after its request: counted, such a probe
// refused the initialize right behind it whenever its close lagged, the
// whole budget with MaxSessions 1 (TestRunFailsClosedAndStops's flake).
func (g *Gateway) openSessions() int {
	n := 0
	for ss := range g.server.Sessions() {
		if ss.InitializeParams() != nil {
			n++
		}
	}
	return n
}

// metadataURL is where the Protected Resource Metadata is served:
// /.well-known/oauth-protected-resource on the resource's origin.
func (g *Gateway) metadataURL() string {
	u, _ := url.Parse(g.cfg.Resource) // validated
	return u.Scheme + "://" + u.Host + "/.well-known/oauth-protected-resource"
}

// Routes registers /mcp (wrapped by limit, the gateway's in-flight bound)
// and the Protected Resource Metadata (RFC 9728) at
// /.well-known/oauth-protected-resource and, path-suffixed as RFC 9728
// §3.1 derives it from the resource, /.well-known/oauth-protected-resource/mcp.
func (g *Gateway) Routes(mux *http.ServeMux, limit func(http.Handler) http.Handler) {
	u, _ := url.Parse(g.cfg.Resource)
	mux.Handle(u.Path, limit(g.handler))
	meta := auth.ProtectedResourceMetadataHandler(&oauthex.ProtectedResourceMetadata{
		Resource:               g.cfg.Resource,
		AuthorizationServers:   g.cfg.AuthorizationServers,
		ScopesSupported:        g.cfg.ScopesSupported,
		BearerMethodsSupported: []string{"header"},
		ResourceName:           "aigov MCP gateway",
	})
	mux.Handle("/.well-known/oauth-protected-resource", meta)
	if u.Path != "" && u.Path != "/" {
		mux.Handle("/.well-known/oauth-protected-resource"+u.Path, meta)
	}
}

// Close ends every client session (their streams too, so the HTTP server's
// shutdown is not held by them) and every upstream connection.
func (g *Gateway) Close() {
	if g.server != nil {
		for ss := range g.server.Sessions() {
			_ = ss.Close()
		}
	}
	for _, u := range g.upstreams {
		u.close()
	}
}

// bearer is the token of a request's Authorization header.
func bearer(extra *mcp.RequestExtra) string {
	if extra == nil || extra.Header == nil {
		return ""
	}
	scheme, tok, ok := strings.Cut(extra.Header.Get("Authorization"), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// verifyToken admits a bearer to the MCP endpoint: a JWT of a trusted
// issuer, not expired. It reads the claims without checking the signature:
// the gateway decides nothing, and every call and every listing is a
// request authn verifies in full. This only sends clients without a usable
// token to the authorization servers (401 with the metadata URL), and binds
// an MCP session to one issuer and subject.
func (g *Gateway) verifyToken(_ context.Context, token string, _ *http.Request) (*auth.TokenInfo, error) {
	if len(token) > client.MaxTokenBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", auth.ErrInvalidToken, client.MaxTokenBytes)
	}
	c, err := unverifiedClaims(token)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", auth.ErrInvalidToken, err)
	}
	trusted := false
	for _, iss := range g.cfg.AuthorizationServers {
		trusted = trusted || iss == c.Issuer
	}
	if !trusted {
		return nil, fmt.Errorf("%w: issuer %q is not one of the authorization servers", auth.ErrInvalidToken, c.Issuer)
	}
	if c.Expiry == 0 {
		return nil, fmt.Errorf("%w: the token has no exp", auth.ErrInvalidToken)
	}
	return &auth.TokenInfo{
		Scopes:     strings.Fields(c.Scope),
		Expiration: time.Unix(int64(c.Expiry), 0),
		UserID:     schemas.PrincipalID(c.Issuer, c.Subject),
	}, nil
}

// callHandler decides a tools/call and forwards it upstream only on allow.
func (g *Gateway) callHandler(u *upstream, upstreamName, exposed string) mcp.ToolHandler {
	return func(ctx context.Context, req *mcp.CallToolRequest) (*mcp.CallToolResult, error) {
		token := bearer(req.Extra)
		id := schemas.NewID()
		log := g.deps.Log.With().Str("request_id", id).Str("tool", exposed).Str("token_fp", schemas.Fingerprint(token)).
			Str("mcp_session", req.Session.ID()).Logger()
		raw := req.Params.Arguments
		if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
			raw = json.RawMessage("{}")
		}
		args, err := decodeArguments(raw)
		if err != nil {
			return toolError(id, CodeInvalidArguments, err.Error()), nil
		}
		call := client.Call{ID: id, Token: token, Request: schemas.Request{
			Action:   ActionToolCall,
			Resource: schemas.Resource{Type: ResourceTool, ID: exposed},
			Context:  g.requestContext(exposed, u.cfg.Name, args, req),
		}}
		dctx, cancel := context.WithTimeout(ctx, g.deps.DecisionTimeout)
		d, err := g.deps.Auth.Authorize(dctx, call)
		cancel()
		if err != nil {
			code := g.deps.ErrorCode(err)
			log.Warn().Err(err).Str("code", code).Msg("tool call: no decision")
			return toolError(id, code, "no decision from aigov; the call was not made: "+err.Error()), nil
		}
		g.deps.Decisions.WithLabelValues("mcp", d.Decision, string(d.Code)).Inc()
		if !d.Allowed() {
			log.Info().Str("code", string(d.Code)).Msg("tool call denied")
			res := toolError(id, string(d.Code), d.Reason)
			res.Meta[MetaDecision] = schemas.Deny
			if d.ApprovalID != "" {
				res.Meta[MetaApprovalID] = d.ApprovalID
			}
			return res, nil
		}
		cctx, cancel := context.WithTimeout(ctx, time.Duration(g.cfg.CallTimeout))
		defer cancel()
		res, err := u.call(cctx, &mcp.CallToolParams{Name: upstreamName, Arguments: raw})
		if err != nil {
			log.Warn().Err(err).Msg("tool call allowed, upstream failed")
			res := toolError(id, CodeUpstreamError, err.Error())
			res.Meta[MetaDecision] = schemas.Allow
			return res, nil
		}
		if res.Meta == nil {
			res.Meta = mcp.Meta{}
		}
		res.Meta[MetaRequestID] = id
		res.Meta[MetaDecision] = schemas.Allow
		log.Info().Bool("is_error", res.IsError).Msg("tool call allowed and forwarded")
		return res, nil
	}
}

// toolError is a tools/call result that is an error the model can read.
func toolError(id, code, reason string) *mcp.CallToolResult {
	return &mcp.CallToolResult{
		IsError: true,
		Content: []mcp.Content{&mcp.TextContent{Text: fmt.Sprintf("aigov: %s: %s (request %s)", code, reason, id)}},
		Meta:    mcp.Meta{MetaRequestID: id, MetaCode: code, MetaReason: reason},
	}
}

// decodeArguments reads a call's arguments: a JSON object.
func decodeArguments(raw json.RawMessage) (map[string]any, error) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var args map[string]any
	if err := dec.Decode(&args); err != nil {
		return nil, fmt.Errorf("the arguments must be a JSON object: %v", err)
	}
	return args, nil
}

// requestContext is the decision context of a call: the (masked)
// arguments, the configured context keys lifted to the top, the tool, and
// the MCP client and session.
func (g *Gateway) requestContext(tool, server string, args map[string]any, req *mcp.CallToolRequest) map[string]any {
	masked := g.mask(args, 0).(map[string]any)
	c := map[string]any{}
	for _, k := range g.cfg.ContextKeys {
		if v, ok := masked[k]; ok {
			c[k] = v
		}
	}
	c["arguments"] = masked
	if b, err := json.Marshal(masked); err != nil || len(b) > schemas.MaxContextBytes/2 {
		// Too large to audit whole: the lifted keys stay, the rest is
		// recorded as truncated.
		c["arguments"] = map[string]any{"truncated": true, "bytes": len(b)}
	}
	for k, v := range sessionContext(tool, server, req.Session, clientInfo(req)) {
		c[k] = v
	}
	return c
}

func sessionContext(tool, server string, ss *mcp.ServerSession, ci *mcp.Implementation) map[string]any {
	c := map[string]any{"tool": tool, "mcp_server": server}
	if ss != nil {
		c["mcp_session"] = ss.ID()
	}
	if ci != nil {
		c["mcp_client"] = map[string]any{"name": ci.Name, "version": ci.Version}
	}
	return c
}

func clientInfo(req *mcp.CallToolRequest) *mcp.Implementation {
	if ci := req.ClientInfo(); ci != nil {
		return ci
	}
	if req.Session != nil {
		if p := req.Session.InitializeParams(); p != nil {
			return p.ClientInfo
		}
	}
	return nil
}

// mask copies v with the values of masked keys replaced, at any depth
// (bounded).
func (g *Gateway) mask(v any, depth int) any {
	if depth > 16 {
		return "***"
	}
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		for k, e := range x {
			if g.masked[strings.ToLower(k)] {
				out[k] = "***"
			} else {
				out[k] = g.mask(e, depth+1)
			}
		}
		return out
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			out[i] = g.mask(e, depth+1)
		}
		return out
	default:
		return v
	}
}

// filterList drops from a tools/list result the tools the caller may not
// see.
func (g *Gateway) filterList(next mcp.MethodHandler) mcp.MethodHandler {
	return func(ctx context.Context, method string, req mcp.Request) (mcp.Result, error) {
		res, err := next(ctx, method, req)
		if err != nil || method != "tools/list" {
			return res, err
		}
		lr, ok := res.(*mcp.ListToolsResult)
		if !ok {
			return res, nil
		}
		token := bearer(req.GetExtra())
		var ss *mcp.ServerSession
		if s, ok := req.GetSession().(*mcp.ServerSession); ok {
			ss = s
		}
		var ci *mcp.Implementation
		if ss != nil && ss.InitializeParams() != nil {
			ci = ss.InitializeParams().ClientInfo
		}
		allowed := make([]bool, len(lr.Tools))
		var wg sync.WaitGroup
		sem := make(chan struct{}, 8)
		for i, t := range lr.Tools {
			wg.Go(func() {
				sem <- struct{}{}
				defer func() { <-sem }()
				allowed[i] = g.mayList(ctx, token, t.Name, ss, ci)
			})
		}
		wg.Wait()
		out := *lr
		out.Tools = nil
		for i, t := range lr.Tools {
			if allowed[i] {
				out.Tools = append(out.Tools, t)
			}
		}
		if out.Tools == nil {
			out.Tools = []*mcp.Tool{}
		}
		return &out, nil
	}
}

// mayList decides (or recalls) whether token may see tool. Anything but
// an allow hides it.
func (g *Gateway) mayList(ctx context.Context, token, tool string, ss *mcp.ServerSession, ci *mcp.Implementation) bool {
	key := schemas.Fingerprint(token) + "\x00" + tool
	if v, ok := g.visible.get(key); ok {
		return v
	}
	server, _, _ := strings.Cut(tool, ".")
	dctx, cancel := context.WithTimeout(ctx, g.deps.DecisionTimeout)
	defer cancel()
	d, err := g.deps.Auth.Authorize(dctx, client.Call{Token: token, Request: schemas.Request{
		Action:   ActionToolList,
		Resource: schemas.Resource{Type: ResourceTool, ID: tool},
		Context:  sessionContext(tool, server, ss, ci),
	}})
	if err != nil {
		g.deps.Log.Warn().Err(err).Str("tool", tool).Str("token_fp", schemas.Fingerprint(token)).Msg("tools/list: no decision, tool hidden")
		return false
	}
	g.deps.Decisions.WithLabelValues("mcp", d.Decision, string(d.Code)).Inc()
	g.visible.put(key, d.Allowed())
	return d.Allowed()
}

// visibility caches per-token, per-tool listing decisions, bounded in
// time and size.
type visibility struct {
	ttl time.Duration
	max int

	mu sync.Mutex
	m  map[string]visEntry
}

type visEntry struct {
	allowed bool
	expires time.Time
}

func newVisibility(ttl time.Duration, max int) *visibility {
	return &visibility{ttl: ttl, max: max, m: map[string]visEntry{}}
}

func (v *visibility) get(key string) (bool, bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	e, ok := v.m[key]
	if !ok || time.Now().After(e.expires) {
		return false, false
	}
	return e.allowed, true
}

func (v *visibility) put(key string, allowed bool) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.m) >= v.max {
		now := time.Now()
		for k, e := range v.m {
			if now.After(e.expires) {
				delete(v.m, k)
			}
		}
		// Still full: drop arbitrary entries down to 90 %, so that the
		// sweep above, O(max), runs once per max/10 puts, not on each.
		for k := range v.m {
			if len(v.m) < v.max-v.max/10 {
				break
			}
			delete(v.m, k)
		}
	}
	v.m[key] = visEntry{allowed: allowed, expires: time.Now().Add(v.ttl)}
}
