package e2e

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/mcpdemo"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// bearerTransport sends one caller's token, as an MCP client with an
// OAuth token does.
type bearerTransport struct{ token string }

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}

// The MCP gateway against the real stack, with the demo upstream behind
// it and a real go-sdk client in front: no token is a 401 pointing at the
// Protected Resource Metadata; tools/list differs by persona; an allowed
// call reaches the upstream, a denied one never does and carries its deny
// code; the dangerous production deploy goes through only after the
// approval flow; the upstream never sees a caller's token; every call is
// an audited decision with masked arguments and the MCP session.
func TestGatewayMCP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st, err := stack.Start(ctx, stack.Options{Root: built.root, Dir: t.TempDir(), BinDir: built.bin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })

	up := mcpdemo.New()
	upMux := http.NewServeMux()
	upMux.Handle("/mcp", up.Handler())
	upstream := httptest.NewServer(upMux)
	t.Cleanup(upstream.Close)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	base := "http://127.0.0.1:" + strconv.Itoa(port)
	cfg := map[string]any{
		"resource":              base + "/mcp",
		"authorization_servers": []string{st.IdP.Issuer()},
		"list_cache_ttl":        "2s",
		"servers": []map[string]any{
			{"name": "demo", "url": upstream.URL + "/mcp", "headers": map[string]string{"X-Upstream-Key": "demo-upstream-key"}},
			// Over stdio; its tools are in no entity store, so aigov
			// denies them (unknown_resource) and tools/list hides them.
			{"name": "local", "command": filepath.Join(built.bin, "mcpdemo")},
		},
	}
	cfgPath := filepath.Join(t.TempDir(), "mcp.json")
	b, _ := json.Marshal(cfg)
	if err := os.WriteFile(cfgPath, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := st.StartGateway(ctx, port, 0, "AIGOV_GATEWAY_MCP_CONFIG="+cfgPath); err != nil {
		t.Fatal(err)
	}

	// No token, or one that is no JWT: 401 naming the metadata.
	for name, auth := range map[string]string{"no token": "", "garbage": "Bearer not-a-jwt"} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, base+"/mcp", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}`))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		want := `resource_metadata="` + base + `/.well-known/oauth-protected-resource"`
		if resp.StatusCode != http.StatusUnauthorized || !strings.Contains(resp.Header.Get("WWW-Authenticate"), want) {
			t.Errorf("%s: %d WWW-Authenticate %q, want 401 with %s", name, resp.StatusCode, resp.Header.Get("WWW-Authenticate"), want)
		}
	}
	for _, path := range []string{"/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"} {
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		var prm struct {
			Resource             string   `json:"resource"`
			AuthorizationServers []string `json:"authorization_servers"`
		}
		err = json.NewDecoder(resp.Body).Decode(&prm)
		resp.Body.Close()
		if err != nil || prm.Resource != base+"/mcp" || !slices.Equal(prm.AuthorizationServers, []string{st.IdP.Issuer()}) {
			t.Errorf("GET %s: %+v %v", path, prm, err)
		}
	}

	tokens := map[string]string{}
	session := func(persona string) *mcp.ClientSession {
		t.Helper()
		tok, err := st.IdP.Token(ctx, persona)
		if err != nil {
			t.Fatal(err)
		}
		tokens[persona] = tok
		c := mcp.NewClient(&mcp.Implementation{Name: "e2e-agent", Version: "0.1"}, nil)
		cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: base + "/mcp",
			HTTPClient: &http.Client{Transport: bearerTransport{tok}}, DisableStandaloneSSE: true}, nil)
		if err != nil {
			t.Fatalf("%s: connect: %v", persona, err)
		}
		t.Cleanup(func() { _ = cs.Close() })
		return cs
	}
	alice, erin, fiona, oscar := session("alice"), session("erin"), session("fiona"), session("oscar")

	// tools/list shows each persona the tools it may call.
	for name, tc := range map[string]struct {
		cs   *mcp.ClientSession
		want []string
	}{
		"alice": {alice, []string{"demo.model.list", "demo.sql.query"}},
		"erin":  {erin, []string{"demo.model.deploy", "demo.model.list"}},
		"oscar": {oscar, nil},
	} {
		res, err := tc.cs.ListTools(ctx, nil)
		if err != nil {
			t.Fatalf("%s: tools/list: %v", name, err)
		}
		var got []string
		for _, tool := range res.Tools {
			got = append(got, tool.Name)
		}
		slices.Sort(got)
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: tools/list %v, want %v", name, got, tc.want)
		}
	}

	var ids []string
	call := func(cs *mcp.ClientSession, tool string, args map[string]any) *mcp.CallToolResult {
		t.Helper()
		res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tool, Arguments: args})
		if err != nil {
			t.Fatalf("tools/call %s: %v", tool, err)
		}
		id, _ := res.Meta["aigov/request_id"].(string)
		if id == "" {
			t.Fatalf("tools/call %s: no aigov/request_id in %+v", tool, res.Meta)
		}
		ids = append(ids, id)
		return res
	}
	textOf := func(res *mcp.CallToolResult) string {
		var s []string
		for _, c := range res.Content {
			if tc, ok := c.(*mcp.TextContent); ok {
				s = append(s, tc.Text)
			}
		}
		return strings.Join(s, "\n")
	}
	allowed := func(what string, res *mcp.CallToolResult, tool string, calls int) {
		t.Helper()
		if res.IsError || res.Meta["aigov/decision"] != schemas.Allow {
			t.Errorf("%s: %v %q, want an allowed, forwarded call", what, res.Meta, textOf(res))
		}
		if n := up.Calls(tool); n != calls {
			t.Errorf("%s: upstream saw %d calls of %s, want %d", what, n, tool, calls)
		}
	}
	deniedWith := func(code schemas.Code, what string, res *mcp.CallToolResult, tool string, calls int) {
		t.Helper()
		if !res.IsError || res.Meta["aigov/code"] != string(code) || res.Meta["aigov/reason"] == "" ||
			!strings.Contains(textOf(res), string(code)) {
			t.Errorf("%s: %v %q, want a tool error with code %s", what, res.Meta, textOf(res), code)
		}
		if n := up.Calls(tool); n != calls {
			t.Errorf("%s: upstream saw %d calls of %s, want %d: a denied call must never reach it", what, n, tool, calls)
		}
	}
	denied := func(what string, res *mcp.CallToolResult, tool string, calls int) {
		t.Helper()
		deniedWith(schemas.CodePolicyDenied, what, res, tool, calls)
	}

	res := call(alice, "demo.sql.query", map[string]any{"query": "SELECT count() FROM features", "read_only": true, "password": "hunter2"})
	allowed("alice read-only SQL", res, mcpdemo.ToolSQLQuery, 1)
	if !strings.Contains(textOf(res), "read_only=true") {
		t.Errorf("upstream result not returned: %q", textOf(res))
	}
	maskedID := ids[len(ids)-1]
	denied("alice SQL that may write", call(alice, "demo.sql.query", map[string]any{"query": "DELETE FROM features", "read_only": false}), mcpdemo.ToolSQLQuery, 1)
	denied("alice deploys", call(alice, "demo.model.deploy", map[string]any{"model": "fraud-detector", "environment": "staging"}), mcpdemo.ToolModelDeploy, 0)
	denied("oscar lists models", call(oscar, "demo.model.list", map[string]any{}), mcpdemo.ToolModelList, 0)
	allowed("erin deploys to staging", call(erin, "demo.model.deploy", map[string]any{"model": "fraud-detector", "environment": "staging"}), mcpdemo.ToolModelDeploy, 1)
	allowed("erin lists models", call(erin, "demo.model.list", nil), mcpdemo.ToolModelList, 1)

	// A stdio upstream's tool aigov does not know: hidden and denied.
	if res := call(alice, "local.model.list", nil); !res.IsError || res.Meta["aigov/code"] != string(schemas.CodeUnknownResource) {
		t.Errorf("local.model.list: %v %q, want a tool error unknown_resource", res.Meta, textOf(res))
	}

	// The dangerous call: a production deploy. Unapproved, it is denied
	// approval_required and opens an approval request; two risk reviewers
	// approve it (aigov approvals approve); the agent's retry of the same
	// call is allowed once, a second is approval_used.
	prod := map[string]any{"model": "churn-predictor", "environment": "production", "model_version": "3"}
	res = call(fiona, "demo.model.deploy", prod)
	deniedWith(schemas.CodeApprovalRequired, "fiona deploys to production unapproved", res, mcpdemo.ToolModelDeploy, 1)
	approvalID, _ := res.Meta["aigov/approval_id"].(string)
	if approvalID == "" {
		t.Fatalf("the approval_required tool error names no approval request: %v", res.Meta)
	}
	bus := []string{"--nats", st.NATS.URL(), "--tls-ca", st.NATS.CAFile(), "--trust-file", st.Keys.TrustFile, "--password", st.NATS.Password(schemas.RoleOperator)}
	for _, reviewer := range []string{"rita", "ravi"} {
		tok, err := st.IdP.Token(ctx, reviewer)
		if err != nil {
			t.Fatal(err)
		}
		f := filepath.Join(t.TempDir(), reviewer+".jwt")
		if err := os.WriteFile(f, []byte(tok), 0o600); err != nil {
			t.Fatal(err)
		}
		approve := exec.CommandContext(ctx, filepath.Join(built.bin, "aigov"), append([]string{"approvals", "approve", approvalID, "--token-file", f}, bus...)...)
		if out, err := approve.CombinedOutput(); err != nil {
			t.Fatalf("aigov approvals approve as %s: %v\n%s", reviewer, err, out)
		}
	}
	allowed("fiona deploys to production approved", call(fiona, "demo.model.deploy", prod), mcpdemo.ToolModelDeploy, 2)
	deniedWith(schemas.CodeApprovalUsed, "fiona deploys again on the used approval", call(fiona, "demo.model.deploy", prod), mcpdemo.ToolModelDeploy, 2)

	// The upstream never saw a caller's token: it gets only its own headers.
	if h := up.AuthorizationHeaders(); len(h) != 0 {
		t.Errorf("upstream saw Authorization headers %q; the gateway must not forward any", h)
	}

	// Every call is an audited decision: agent.tool_call, the MCP client
	// and session in its context, masked arguments.
	if err := demo.WaitAudited(ctx, st.DB, ids, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	rows, err := st.DB.Query(ctx, `SELECT request_id, action, decision, context FROM aigov.decisions FINAL WHERE has(?, request_id)`, ids)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	n := 0
	for rows.Next() {
		var id, action, decision, c string
		if err := rows.Scan(&id, &action, &decision, &c); err != nil {
			t.Fatal(err)
		}
		n++
		if action != "agent.tool_call" || !strings.Contains(c, `"mcp_session"`) || !strings.Contains(c, `"e2e-agent"`) {
			t.Errorf("audit row %s: action %s context %s, want agent.tool_call with the MCP client and session", id, action, c)
		}
		for _, tok := range tokens {
			if strings.Contains(c, tok) {
				t.Errorf("audit row %s carries a token", id)
			}
		}
		if id == maskedID && (strings.Contains(c, "hunter2") || !strings.Contains(c, `"***"`)) {
			t.Errorf("audit row %s: context %s, want the password argument masked", id, c)
		}
	}
	if n != len(ids) {
		t.Errorf("%d audit rows for %d tool calls", n, len(ids))
	}
	// The gateway's own log never holds a token.
	logb, _ := os.ReadFile(st.LogPath(stack.Gateway))
	for p, tok := range tokens {
		if strings.Contains(string(logb), tok) {
			t.Errorf("the gateway log holds %s's token", p)
		}
	}
}
