package deploycheck

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/generate"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// The compose demo plays exactly the scenarios of `make run`.
func TestDemoScenariosAreMakeRuns(t *testing.T) {
	outs, err := generate.Scenarios()
	checkGenerated(t, outs, err)
	for kind, name := range generate.TokenKinds() {
		if !strings.Contains(string(readFile(t, "deploy/demo/play.sh")), "\t"+name+")") {
			t.Errorf("deploy/demo/play.sh has no case for token kind %q (%d)", name, kind)
		}
	}
}

// tokenEndpoint serves an OAuth2 password grant the way Dex does for the
// demo, minting each id_token with the dev OIDC provider's real
// authorization-code flow (idp.Provider.Token).
func tokenEndpoint(t *testing.T, p *idp.Provider, clientID, secret string, ttl time.Duration) *httptest.Server {
	t.Helper()
	personas := idp.Personas()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, sec, ok := r.BasicAuth()
		switch {
		case r.Method != http.MethodPost || r.URL.Path != "/token":
			http.NotFound(w, r)
			return
		case !ok || id != clientID || sec != secret:
			http.Error(w, `{"error":"invalid_client"}`, http.StatusUnauthorized)
			return
		case r.PostFormValue("grant_type") != "password" || !slices.Contains(strings.Fields(r.PostFormValue("scope")), "openid"):
			http.Error(w, `{"error":"invalid_request"}`, http.StatusBadRequest)
			return
		}
		user := r.PostFormValue("username")
		if _, ok := personas[user]; !ok || r.PostFormValue("password") != user+"-dev-password" {
			http.Error(w, `{"error":"invalid_grant"}`, http.StatusUnauthorized)
			return
		}
		tok, err := p.Token(r.Context(), user, idp.WithTTL(ttl))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{"id_token": tok, "access_token": "unused", "token_type": "bearer", "expires_in": int(ttl.Seconds())})
	}))
	t.Cleanup(srv.Close)
	return srv
}

// TestDemoScriptAndDashboardAgainstDevStack runs deploy/demo/play.sh, the
// compose demo, for real: against the dev stack (embedded NATS with the
// per-role users, a real ClickHouse, the four service binaries) with tokens
// from a password-grant endpoint backed by the dev OIDC provider. Then it
// runs every Grafana panel's SQL on the tables the audit service created
// and filled, and checks the generated replicated schema.
func TestDemoScriptAndDashboardAgainstDevStack(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: runs the compose demo script against a whole dev stack")
	}
	for _, tool := range []string{"sh", "curl", "jq", "base64", "awk", "cut", "tr", "date"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("deploy/demo/play.sh needs %s: %v (apt-get install curl jq)", tool, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r := repoRoot(t)
	bin := t.TempDir()
	if err := stack.Build(ctx, r, bin); err != nil {
		t.Fatal(err)
	}
	const maxAge, interval = 3 * time.Second, 200 * time.Millisecond
	st, err := stack.Start(ctx, stack.Options{
		Root: r, Dir: t.TempDir(), BinDir: bin, SessionMaxAge: maxAge, ReaperInterval: interval,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, err := range st.Stop() {
			t.Errorf("stop: %v", err)
		}
	})

	const clientID, secret = "aigov-demo", "demo-secret"
	tokens := tokenEndpoint(t, st.IdP, clientID, secret, 10*time.Second)
	cmd := exec.CommandContext(ctx, "sh", repoPath(t, "deploy/demo/play.sh"))
	cmd.Env = []string{
		"PATH=" + bin + string(filepath.ListSeparator) + os.Getenv("PATH"),
		"HOME=" + t.TempDir(),
		"AIGOV_NATS_URL=" + st.NATS.URL(),
		"AIGOV_NATS_PASSWORD=" + st.NATS.Password(schemas.RolePlatform),
		"AIGOV_NATS_TLS_CA=" + st.NATS.CAFile(),
		"AIGOV_TRUST_FILE=" + st.Keys.TrustFile,
		"DEX_TOKEN_URL=" + tokens.URL + "/token",
		"DEX_CLIENT_ID=" + clientID,
		"DEX_CLIENT_SECRET=" + secret,
		"CLICKHOUSE_URL=http://" + st.ClickHouse.HTTPAddr(),
		"CLICKHOUSE_USER=default",
		"AIGOV_SESSION_MAX_AGE=" + maxAge.String(),
		"AIGOV_REAPER_INTERVAL=" + interval.String(),
		"DEMO_SCENARIOS=" + repoPath(t, "deploy/demo/scenarios.json"),
	}
	out, err := cmd.CombinedOutput()
	t.Logf("deploy/demo/play.sh:\n%s", out)
	if err != nil {
		t.Fatalf("deploy/demo/play.sh failed: %v", err)
	}
	n := len(demo.Scenarios())
	if want := fmt.Sprintf("== %d scenarios: 0 failed, 0 skipped", n); !strings.Contains(string(out), want) {
		t.Errorf("play.sh output lacks %q", want)
	}
	if got := strings.Count(string(out), "\nok    "); got != n {
		t.Errorf("play.sh reported %d scenarios ok, want %d", got, n)
	}
	if want := fmt.Sprintf("%d of %d decisions audited", n, n); !strings.Contains(string(out), want) {
		t.Errorf("play.sh output lacks %q", want)
	}

	t.Run("dashboard queries", func(t *testing.T) { checkDashboardQueries(ctx, t, st) })
	t.Run("replicated schema", func(t *testing.T) { checkReplicatedSchema(ctx, t, st) })
}
