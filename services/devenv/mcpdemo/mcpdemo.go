// Package mcpdemo is a demo upstream MCP server for the gateway's MCP
// front end: a model registry and a SQL warehouse an agent can drive, with
// the tools model.list, model.deploy and sql.query. It counts the calls
// each tool receives and records every Authorization header it is sent, so
// tests can prove that a denied call never reaches it and that a caller's
// token is never forwarded.
package mcpdemo

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/modelcontextprotocol/go-sdk/mcp"
)

// Tool names, as the demo serves them (the gateway adds "<server>.").
const (
	ToolModelList   = "model.list"
	ToolModelDeploy = "model.deploy"
	ToolSQLQuery    = "sql.query"
)

// maxHeaders bounds the Authorization headers remembered.
const maxHeaders = 1000

// Demo is one demo server and what it has seen.
type Demo struct {
	server *mcp.Server

	mu      sync.Mutex
	calls   map[string]int
	headers []string
}

// DeployArgs are model.deploy's arguments.
type DeployArgs struct {
	Model        string `json:"model" jsonschema:"the registered model to deploy"`
	Environment  string `json:"environment" jsonschema:"staging or production"`
	ModelVersion string `json:"model_version,omitempty" jsonschema:"the version to deploy"`
}

// QueryArgs are sql.query's arguments.
type QueryArgs struct {
	Query    string `json:"query" jsonschema:"the SQL to run"`
	ReadOnly bool   `json:"read_only" jsonschema:"run in a read-only transaction"`
	// Password is the warehouse password (the gateway masks it in the
	// decision context and so in the audit; the upstream still gets it).
	Password string `json:"password,omitempty" jsonschema:"the warehouse password, if the caller has its own"`
}

// ListArgs are model.list's arguments.
type ListArgs struct {
	Stage string `json:"stage,omitempty" jsonschema:"only models in this stage"`
}

// New builds the demo server.
func New() *Demo {
	d := &Demo{calls: map[string]int{}}
	s := mcp.NewServer(&mcp.Implementation{Name: "aigov-mcpdemo", Version: "1.0.0"}, nil)
	mcp.AddTool(s, &mcp.Tool{Name: ToolModelList, Description: "List the registered models."},
		func(_ context.Context, req *mcp.CallToolRequest, in ListArgs) (*mcp.CallToolResult, any, error) {
			d.saw(ToolModelList, req)
			return text("fraud-detector (staging, candidate)\nchurn-predictor (production, serving)"), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: ToolModelDeploy, Description: "Deploy a model version to an environment."},
		func(_ context.Context, req *mcp.CallToolRequest, in DeployArgs) (*mcp.CallToolResult, any, error) {
			d.saw(ToolModelDeploy, req)
			if in.Model == "" || in.Environment == "" {
				return &mcp.CallToolResult{IsError: true, Content: []mcp.Content{&mcp.TextContent{Text: "model and environment are required"}}}, nil, nil
			}
			return text(fmt.Sprintf("deployed %s %s to %s", in.Model, in.ModelVersion, in.Environment)), nil, nil
		})
	mcp.AddTool(s, &mcp.Tool{Name: ToolSQLQuery, Description: "Run a SQL query on the feature warehouse."},
		func(_ context.Context, req *mcp.CallToolRequest, in QueryArgs) (*mcp.CallToolResult, any, error) {
			d.saw(ToolSQLQuery, req)
			return text(fmt.Sprintf("1 row (read_only=%t): %s", in.ReadOnly, strings.TrimSpace(in.Query))), nil, nil
		})
	d.server = s
	return d
}

func text(s string) *mcp.CallToolResult {
	return &mcp.CallToolResult{Content: []mcp.Content{&mcp.TextContent{Text: s}}}
}

func (d *Demo) saw(tool string, req *mcp.CallToolRequest) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.calls[tool]++
	if req.Extra != nil {
		d.record(req.Extra.Header.Get("Authorization"))
	}
}

// record keeps h; the caller holds mu.
func (d *Demo) record(h string) {
	if h != "" && len(d.headers) < maxHeaders {
		d.headers = append(d.headers, h)
	}
}

// Server is the MCP server, for a stdio or in-memory transport.
func (d *Demo) Server() *mcp.Server { return d.server }

// Handler serves the demo over Streamable HTTP, recording the
// Authorization header of every HTTP request.
func (d *Demo) Handler() http.Handler {
	h := mcp.NewStreamableHTTPHandler(func(*http.Request) *mcp.Server { return d.server }, &mcp.StreamableHTTPOptions{JSONResponse: true})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.mu.Lock()
		d.record(r.Header.Get("Authorization"))
		d.mu.Unlock()
		h.ServeHTTP(w, r)
	})
}

// Calls is how many calls tool has received.
func (d *Demo) Calls(tool string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.calls[tool]
}

// AllCalls returns the call counts by tool, in name order as "tool=n".
func (d *Demo) AllCalls() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.calls))
	for t, n := range d.calls {
		out = append(out, fmt.Sprintf("%s=%d", t, n))
	}
	sort.Strings(out)
	return out
}

// AuthorizationHeaders are the Authorization headers the demo was sent.
func (d *Demo) AuthorizationHeaders() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]string(nil), d.headers...)
}
