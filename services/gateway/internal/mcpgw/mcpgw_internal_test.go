package mcpgw

import (
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/modelcontextprotocol/go-sdk/auth"
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
