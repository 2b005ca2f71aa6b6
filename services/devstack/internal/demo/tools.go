package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// GatewayMCPConfig is the MCP configuration of the demo's gateway: its
// resource URL, the dev IdP as the one authorization server, and the demo
// upstream (services/devenv/mcpdemo) over stdio as server "demo".
func GatewayMCPConfig(resource, issuer, mcpdemo string) map[string]any {
	return map[string]any{
		"resource":              resource,
		"authorization_servers": []string{issuer},
		"servers":               []map[string]any{{"name": "demo", "command": mcpdemo}},
	}
}

// ToolCall is one thing an agent does through the MCP gateway, acting for
// a persona: a tools/list (Tool empty; each tool is decided on its own, so
// the listing's Decision is allow and Want names what it shows) or a
// tools/call, and what it must get.
type ToolCall struct {
	Name    string
	Persona string
	// Tool is the gateway's name for it (<server>.<tool>); empty is a
	// tools/list.
	Tool     string
	Args     map[string]any
	Decision string
	Code     schemas.Code
	// Want must be in the upstream's result of an allowed call; for a
	// tools/list, it is the visible tools, comma-joined.
	Want string
}

// ToolCalls are the agent's calls the demo plays through the gateway.
func ToolCalls() []ToolCall {
	staging := map[string]any{"model": "fraud-detector", "environment": "staging", "model_version": "7"}
	return []ToolCall{
		{Name: "data scientist's agent lists its tools", Persona: "alice", Decision: schemas.Allow, Want: "demo.model.list,demo.sql.query"},
		{Name: "platform agent lists its tools", Persona: "erin", Decision: schemas.Allow, Want: "demo.model.deploy,demo.model.list"},
		{Name: "agent of a user in no group lists", Persona: "oscar", Decision: schemas.Allow, Want: ""},
		{Name: "agent browses the model registry", Persona: "alice", Tool: "demo.model.list", Args: map[string]any{},
			Decision: schemas.Allow, Want: "fraud-detector"},
		{Name: "agent runs a read-only query", Persona: "alice", Tool: "demo.sql.query",
			Args:     map[string]any{"query": "SELECT count() FROM features", "read_only": true},
			Decision: schemas.Allow, Want: "read_only=true"},
		{Name: "agent runs a query that may write", Persona: "alice", Tool: "demo.sql.query",
			Args:     map[string]any{"query": "DELETE FROM features", "read_only": false},
			Decision: schemas.Deny, Code: schemas.CodePolicyDenied},
		{Name: "agent calls a tool its group may not", Persona: "alice", Tool: "demo.model.deploy", Args: staging,
			Decision: schemas.Deny, Code: schemas.CodePolicyDenied},
		{Name: "platform agent deploys to staging", Persona: "erin", Tool: "demo.model.deploy", Args: staging,
			Decision: schemas.Allow, Want: "deployed fraud-detector 7 to staging"},
		{Name: "agent of a user in no group", Persona: "oscar", Tool: "demo.model.list", Args: map[string]any{},
			Decision: schemas.Deny, Code: schemas.CodePolicyDenied},
		{Name: "platform agent deploys to production", Persona: "fiona", Tool: "demo.model.deploy",
			Args:     map[string]any{"model": "churn-predictor", "environment": "production", "model_version": "3"},
			Decision: schemas.Deny, Code: schemas.CodeApprovalRequired},
	}
}

// ToolResult is what one ToolCall got.
type ToolResult struct {
	Call      ToolCall
	Decision  string
	Code      string
	RequestID string
	// Result is the upstream's text (allow) or the gateway's tool error
	// (deny); for a tools/list, the visible tools.
	Result string
	Err    error
}

// OK reports whether the call got what it must.
func (r ToolResult) OK() bool {
	if r.Err != nil || r.Decision != r.Call.Decision || r.Code != string(r.Call.Code) {
		return false
	}
	if r.Call.Tool == "" {
		return r.Result == r.Call.Want
	}
	return r.Call.Decision != schemas.Allow || strings.Contains(r.Result, r.Call.Want)
}

// bearer sends one persona's token on every request, as an MCP client
// holding an OAuth access token does.
type bearer struct {
	token string
	next  http.RoundTripper
}

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}

// toolCallTimeout bounds one MCP session: connect, list or call, close.
const toolCallTimeout = 30 * time.Second

// PlayToolCalls plays ToolCalls as an agent would: a go-sdk MCP client per
// call connects to endpoint (the gateway's /mcp) over Streamable HTTP with
// a fresh token of the persona from the dev IdP, then lists or calls.
// progress gets a line per call.
func PlayToolCalls(ctx context.Context, st *stack.Stack, endpoint string, progress io.Writer) []ToolResult {
	httpc := &http.Client{Timeout: toolCallTimeout, Transport: http.DefaultTransport}
	var out []ToolResult
	for _, tc := range ToolCalls() {
		r := playToolCall(ctx, st, httpc, endpoint, tc)
		what := "tools/list"
		if tc.Tool != "" {
			what = "tools/call " + tc.Tool
		}
		fmt.Fprintf(progress, "[%s] agent %s: %s %s\n", tc.Persona, what, dash(r.Decision), dash(r.Code))
		out = append(out, r)
	}
	return out
}

func playToolCall(ctx context.Context, st *stack.Stack, httpc *http.Client, endpoint string, tc ToolCall) ToolResult {
	r := ToolResult{Call: tc}
	ctx, cancel := context.WithTimeout(ctx, toolCallTimeout)
	defer cancel()
	tok, err := st.IdP.Token(ctx, tc.Persona)
	if err != nil {
		r.Err = fmt.Errorf("token for %s: %w", tc.Persona, err)
		return r
	}
	c := *httpc
	c.Transport = bearer{token: tok, next: httpc.Transport}
	client := mcp.NewClient(&mcp.Implementation{Name: "aigov-demo-agent", Version: "1.0.0"}, nil)
	cs, err := client.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: endpoint, HTTPClient: &c, DisableStandaloneSSE: true}, nil)
	if err != nil {
		r.Err = fmt.Errorf("connect to %s: %w", endpoint, err)
		return r
	}
	defer cs.Close()
	if tc.Tool == "" {
		res, err := cs.ListTools(ctx, nil)
		if err != nil {
			r.Err = fmt.Errorf("tools/list: %w", err)
			return r
		}
		var names []string
		for _, t := range res.Tools {
			names = append(names, t.Name)
		}
		slices.Sort(names)
		r.Decision, r.Result = schemas.Allow, strings.Join(names, ",")
		return r
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: tc.Tool, Arguments: tc.Args})
	if err != nil {
		r.Err = fmt.Errorf("tools/call %s: %w", tc.Tool, err)
		return r
	}
	r.Decision, _ = res.Meta["aigov/decision"].(string)
	r.Code, _ = res.Meta["aigov/code"].(string)
	r.RequestID, _ = res.Meta["aigov/request_id"].(string)
	if r.Decision == "" || r.RequestID == "" {
		r.Err = errors.New("the result carries no aigov decision")
	}
	var texts []string
	for _, c := range res.Content {
		if t, ok := c.(*mcp.TextContent); ok {
			texts = append(texts, t.Text)
		}
	}
	r.Result = strings.Join(texts, " / ")
	if id, _ := res.Meta["aigov/approval_id"].(string); id != "" {
		r.Result = "approval request " + id + " opened"
	}
	return r
}

// PrintToolCalls writes the tool calls' table.
func PrintToolCalls(w io.Writer, results []ToolResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "AGENT CALL\tWHO\tTOOL\tARGUMENTS\tDECISION\tCODE\tRESULT\tOK")
	for _, r := range results {
		what, args, decision := "(tools/list)", "-", "-"
		if r.Call.Tool != "" {
			what, args, decision = r.Call.Tool, compactArgs(r.Call.Args), r.Decision
		}
		result := r.Result
		switch {
		case r.Err != nil:
			result = r.Err.Error()
		case r.Call.Tool == "" && result == "":
			result = "(no tools)"
		case r.Decision == schemas.Deny && r.Call.Tool != "" && !strings.HasPrefix(result, "approval"):
			result = "(not forwarded)"
		}
		ok := "yes"
		if !r.OK() {
			ok = fmt.Sprintf("NO (want %s %s %q)", r.Call.Decision, dash(string(r.Call.Code)), r.Call.Want)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Call.Name, r.Call.Persona, what, truncate(args, 60),
			dash(decision), dash(r.Code), truncate(result, 56), ok)
	}
	tw.Flush()
}

// compactArgs shows arguments as k=v, in key order.
func compactArgs(args map[string]any) string {
	keys := make([]string, 0, len(args))
	for k := range args {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s=%v", k, args[k]))
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

func truncate(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " / ")
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}
