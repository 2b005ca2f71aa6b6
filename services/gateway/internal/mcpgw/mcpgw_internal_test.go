package mcpgw

import (
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
	"github.com/modelcontextprotocol/go-sdk/mcp"
)

func TestLoadFileReportsEveryViolation(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"resource":"mcp","servers":[{"name":"Demo"},{"name":"x","command":"a","url":"http://h/mcp"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := LoadFile(bad)
	if err == nil {
		t.Fatal("a bad file loaded")
	}
	for _, want := range []string{"resource \"mcp\"", "authorization_servers", "name must be lower-case", "give command (stdio) or url", "not both"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	root := filepath.Join(dir, "root.json")
	if err := os.WriteFile(root, []byte(`{"resource":"http://h/","authorization_servers":["http://idp"],"servers":[{"name":"a","command":"x"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(root); err == nil || !strings.Contains(err.Error(), "its path must name the MCP endpoint") {
		t.Errorf("resource at /: %v", err)
	}
	unknown := filepath.Join(dir, "unknown.json")
	if err := os.WriteFile(unknown, []byte(`{"resourc":"x"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadFile(unknown); err == nil || !strings.Contains(err.Error(), "unknown field") {
		t.Errorf("misspelt field: %v", err)
	}
	good := filepath.Join(dir, "good.json")
	if err := os.WriteFile(good, []byte(`{"resource":"http://127.0.0.1:8090/mcp","authorization_servers":["http://idp"],
		"servers":[{"name":"demo","command":"mcpdemo"}],"list_cache_ttl":"5s"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := LoadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	if time.Duration(f.ListCacheTTL) != 5*time.Second || len(f.MaskedKeys) == 0 || f.ListCacheSize != 10000 {
		t.Errorf("defaults not applied: %+v", f)
	}
}

func TestMaskAtAnyDepth(t *testing.T) {
	t.Parallel()
	g := &Gateway{masked: map[string]bool{"password": true, "api_key": true}}
	got := g.mask(map[string]any{"Password": "p", "q": "x", "nested": map[string]any{"api_key": "k", "list": []any{map[string]any{"password": "p2"}}}}, 0)
	s := toJSON(got)
	for _, secret := range []string{`"p"`, `"k"`, `"p2"`} {
		if strings.Contains(s, secret) {
			t.Errorf("masked %s still holds %s", s, secret)
		}
	}
	if !strings.Contains(s, `"q":"x"`) {
		t.Errorf("unmasked value lost: %s", s)
	}
}

func TestVerifyTokenAdmitsOnlyTrustedUnexpiredJWTs(t *testing.T) {
	t.Parallel()
	g := &Gateway{cfg: File{AuthorizationServers: []string{"http://idp"}}}
	jwt := func(payload string) string {
		return "e30." + base64.RawURLEncoding.EncodeToString([]byte(payload)) + ".c2ln"
	}
	exp := time.Now().Add(time.Hour).Unix()
	if info, err := g.verifyToken(context.Background(), jwt(`{"iss":"http://idp","sub":"bob","exp":`+itoa(exp)+`.5}`), nil); err != nil || info.Expiration.Unix() != exp {
		t.Errorf("fractional exp: %+v %v", info, err)
	}
	info, err := g.verifyToken(context.Background(), jwt(`{"iss":"http://idp","sub":"alice","exp":`+itoa(exp)+`,"scope":"openid groups"}`), nil)
	if err != nil || info.UserID != "http://idp#alice" || len(info.Scopes) != 2 {
		t.Fatalf("good token: %+v %v", info, err)
	}
	for name, tok := range map[string]string{
		"not a JWT":   "garbage",
		"bad payload": "a.!!.c",
		"untrusted":   jwt(`{"iss":"http://evil","sub":"alice","exp":` + itoa(exp) + `}`),
		"no exp":      jwt(`{"iss":"http://idp","sub":"alice"}`),
		"no subject":  jwt(`{"iss":"http://idp","exp":` + itoa(exp) + `}`),
	} {
		if _, err := g.verifyToken(context.Background(), tok, nil); !errors.Is(err, auth.ErrInvalidToken) {
			t.Errorf("%s: %v, want ErrInvalidToken", name, err)
		}
	}
}

func TestVisibilityCacheIsBounded(t *testing.T) {
	t.Parallel()
	v := newVisibility(time.Minute, 3)
	for _, k := range []string{"a", "b", "c", "d", "e"} {
		v.put(k, true)
	}
	if len(v.m) > 3 {
		t.Errorf("%d entries, bound 3", len(v.m))
	}
	if ok, found := v.get("e"); !ok || !found {
		t.Error("the newest entry is missing")
	}
}

// The configuration files compose and the dev cluster mount load as the
// gateway loads them (deploycheck checks them against the deployments).
func TestDeployConfigsLoad(t *testing.T) {
	for _, p := range []string{"../../../../deploy/gateway/mcp.json", "../../../../deploy/k8s/overlays/dev/gateway-mcp.json"} {
		if _, err := LoadFile(p); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// A session that never initialized (what the SDK opens for a session-less
// probe such as server/discover, and closes after it) does not use up the
// session budget: with MaxSessions 1 it once refused the initialize that
// follows the probe. An initialized session does.
func TestProbeSessionsDoNotCount(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	g := &Gateway{cfg: File{MaxSessions: 1}, server: mcp.NewServer(&mcp.Implementation{Name: "test", Version: "1"}, nil)}
	passed := 0
	h := g.limitSessions(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { passed++ }))
	newSession := func() int {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/mcp", strings.NewReader(`{}`)))
		return rec.Code
	}

	probeT, _ := mcp.NewInMemoryTransports()
	probe, err := g.server.Connect(ctx, probeT, nil) // a session that never initializes
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	if n := g.openSessions(); n != 0 {
		t.Errorf("%d sessions counted with only an uninitialized one open", n)
	}
	if code := newSession(); code != http.StatusOK || passed != 1 {
		t.Errorf("a new session beside a probe: %d (passed %d), want it let through", code, passed)
	}

	serverT, clientT := mcp.NewInMemoryTransports()
	ss, err := g.server.Connect(ctx, serverT, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	cs, err := mcp.NewClient(&mcp.Implementation{Name: "agent", Version: "1"}, nil).Connect(ctx, clientT, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer cs.Close()
	if n := g.openSessions(); n != 1 {
		t.Errorf("%d sessions counted with one initialized", n)
	}
	if code := newSession(); code != http.StatusServiceUnavailable || passed != 1 {
		t.Errorf("a new session at the limit: %d (passed %d), want 503", code, passed)
	}
}
