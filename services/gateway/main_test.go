package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/mcp"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/devkeys"
	"github.com/aigov/aigov/services/devenv/mcpdemo"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit"
)

// Every bad setting is reported at once, before anything starts.
func TestRunReportsEveryConfigError(t *testing.T) {
	t.Parallel()
	err := run(context.Background(), servicekit.MapLookup(map[string]string{
		"AIGOV_GATEWAY_DECISION_TIMEOUT": "soon",
		"AIGOV_GATEWAY_MAX_IN_FLIGHT":    "0",
		"AIGOV_GATEWAY_MAX_BODY_BYTES":   "99999999",
	}))
	if err == nil {
		t.Fatal("run started with a bad configuration")
	}
	for _, want := range []string{"AIGOV_TRUST_FILE", "AIGOV_GATEWAY_DECISION_TIMEOUT", "AIGOV_GATEWAY_MAX_IN_FLIGHT", "AIGOV_GATEWAY_MAX_BODY_BYTES"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

// run wired as main does, on a real NATS with no pipeline behind it: a
// request gets 504 and never an allow, tools/list shows nothing it cannot
// have decided, and cancelling ends run cleanly and promptly even with an
// MCP session open.
func TestRunFailsClosedAndStops(t *testing.T) {
	t.Parallel()
	srv := natsdev.StartT(t, natsdev.Options{})
	keys := devkeys.New(t)
	up := mcpdemo.New()
	upstream := httptest.NewServer(up.Handler())
	t.Cleanup(upstream.Close)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	const issuer = "http://idp.test"
	cfg, _ := json.Marshal(map[string]any{"resource": "http://" + addr + "/mcp", "authorization_servers": []string{issuer}, "max_sessions": 1,
		"servers": []map[string]any{{"name": "demo", "url": upstream.URL}}})
	cfgPath := filepath.Join(t.TempDir(), "mcp.json")
	if err := os.WriteFile(cfgPath, cfg, 0o600); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, servicekit.MapLookup(map[string]string{
			"AIGOV_NATS_URL":                 srv.URL(),
			"AIGOV_NATS_TLS_CA":              srv.CAFile(),
			"AIGOV_NATS_PASSWORD":            srv.Password(schemas.RoleGateway),
			"AIGOV_HTTP_ADDR":                "127.0.0.1:0",
			"AIGOV_GATEWAY_ADDR":             addr,
			"AIGOV_GATEWAY_DECISION_TIMEOUT": "300ms",
			"AIGOV_GATEWAY_MCP_CONFIG":       cfgPath,
			"AIGOV_TRUST_FILE":               keys.TrustFile,
			"AIGOV_LOG_LEVEL":                "warn",
		}))
	}()
	base := "http://" + addr
	waitReady := func() {
		t.Helper()
		deadline := time.Now().Add(30 * time.Second)
		for {
			resp, err := http.Get(base + "/readyz")
			if err == nil {
				resp.Body.Close()
				if resp.StatusCode == http.StatusOK {
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("gateway not ready: %v", err)
			}
			select {
			case err := <-done:
				t.Fatalf("run ended: %v", err)
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	waitReady()

	token := "e30." + base64.RawURLEncoding.EncodeToString([]byte(`{"iss":"`+issuer+`","sub":"alice","exp":`+
		strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)+`}`)) + ".c2ln"
	req, _ := http.NewRequest(http.MethodPost, base+"/v1/authorize",
		strings.NewReader(`{"action":"model.retrain","resource":{"type":"Model","id":"m"}}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusGatewayTimeout || body["error"] != "decision_timeout" || body["decision"] != nil {
		t.Errorf("no pipeline: %d %v, want 504 decision_timeout", resp.StatusCode, body)
	}

	c := mcp.NewClient(&mcp.Implementation{Name: "test", Version: "1"}, nil)
	cs, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: base + "/mcp", MaxRetries: -1,
		HTTPClient: &http.Client{Transport: bearer{token}}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	// One session is the configured most: a second is refused.
	if extra, err := c.Connect(ctx, &mcp.StreamableClientTransport{Endpoint: base + "/mcp", MaxRetries: -1,
		HTTPClient: &http.Client{Transport: bearer{token}}}, nil); err == nil {
		_ = extra.Close()
		t.Error("a second MCP session was opened with max_sessions 1")
	}
	tools, err := cs.ListTools(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(tools.Tools) != 0 {
		t.Errorf("tools/list with no decisions shows %d tools, want none", len(tools.Tools))
	}
	res, err := cs.CallTool(ctx, &mcp.CallToolParams{Name: "demo.model.list"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.IsError || res.Meta["aigov/code"] != "decision_timeout" || up.Calls(mcpdemo.ToolModelList) != 0 {
		t.Errorf("tools/call with no decision: %+v, upstream calls %d; want a decision_timeout error and no call", res, up.Calls(mcpdemo.ToolModelList))
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run returned %v on shutdown", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return within 15s of shutdown with an MCP session open")
	}
}

type bearer struct{ token string }

func (b bearer) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return http.DefaultTransport.RoundTrip(r)
}
