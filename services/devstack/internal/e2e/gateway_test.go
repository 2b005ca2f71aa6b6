package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/devstack/internal/demo"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

// gatewayReply is a response of the gateway's authorize API: a decision
// (200) or an error body.
type gatewayReply struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (r gatewayReply) str(k string) string { s, _ := r.body[k].(string); return s }

func postAuthorize(ctx context.Context, t *testing.T, url, token, body string) gatewayReply {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/authorize", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Errorf("POST /v1/authorize: %v", err)
		return gatewayReply{}
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	r := gatewayReply{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	if err := json.Unmarshal(b, &r.body); err != nil {
		t.Errorf("POST /v1/authorize: %d with a body that is not JSON: %q", resp.StatusCode, b)
	}
	return r
}

// startGatewayStack starts the stack and the gateway with env.
func startGatewayStack(ctx context.Context, t *testing.T, env ...string) *stack.Stack {
	t.Helper()
	st, err := stack.Start(ctx, stack.Options{Root: built.root, Dir: t.TempDir(), BinDir: built.bin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Stop() })
	if err := st.StartGateway(ctx, 0, 0, env...); err != nil {
		t.Fatal(err)
	}
	return st
}

// The authorize API against the real stack: every decision (allow, policy
// deny, authn denies) is a 200 carrying code, reason, request id and
// policies; bad input gets a specific 4xx without reaching aigov; with
// policy stopped a request gets a 504 and never an allow, and its retry
// with the same id is the same request; a full gateway answers 503.
func TestGatewayAuthorizeAPI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st := startGatewayStack(ctx, t, "AIGOV_GATEWAY_DECISION_TIMEOUT=10s", "AIGOV_GATEWAY_MAX_IN_FLIGHT=3")
	url := st.GatewayURL()

	alice, err := st.IdP.Token(ctx, "alice")
	if err != nil {
		t.Fatal(err)
	}
	expired, err := st.IdP.Token(ctx, "alice", idp.WithIssuedAt(time.Now().Add(-time.Hour)), idp.WithTTL(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	forged, err := idp.Forge(alice)
	if err != nil {
		t.Fatal(err)
	}
	retrain := `{"action":"model.retrain","resource":{"type":"Model","id":"fraud-detector"},"context":{"environment":"staging"}}`
	datasetUpdate := `{"action":"dataset.update","resource":{"type":"Dataset","id":"transactions-training"},"context":{"environment":"staging"}}`

	var decided []string
	decisions := []struct {
		name, token, body, decision string
		code                        schemas.Code
	}{
		{"allow", alice, retrain, schemas.Allow, ""},
		{"policy deny", alice, datasetUpdate, schemas.Deny, schemas.CodePolicyDenied},
		{"expired token", expired, retrain, schemas.Deny, schemas.CodeTokenExpired},
		{"forged token", forged, retrain, schemas.Deny, schemas.CodeBadSignature},
		{"garbage token", "not-a-jwt", retrain, schemas.Deny, schemas.CodeMalformedToken},
	}
	for _, tc := range decisions {
		r := postAuthorize(ctx, t, url, tc.token, tc.body)
		if r.status != http.StatusOK || r.str("decision") != tc.decision || r.str("code") != string(tc.code) {
			t.Errorf("%s: %d %s, want 200 %s/%q", tc.name, r.status, r.raw, tc.decision, tc.code)
			continue
		}
		if r.str("request_id") == "" || r.str("stage") == "" {
			t.Errorf("%s: no request_id or stage: %s", tc.name, r.raw)
		}
		if tc.decision == schemas.Deny && r.str("reason") == "" {
			t.Errorf("%s: a deny without a reason: %s", tc.name, r.raw)
		}
		if tc.decision == schemas.Allow {
			if ids, _ := r.body["policy_ids"].([]any); len(ids) == 0 || !strings.HasPrefix(r.str("policy_version"), "sha256:") {
				t.Errorf("%s: an allow must name its policies and policy version: %s", tc.name, r.raw)
			}
			if p, _ := r.body["principal"].(map[string]any); p["subject"] != "alice" {
				t.Errorf("%s: principal %v, want alice", tc.name, p)
			}
		}
		if strings.Contains(r.raw, tc.token) {
			t.Errorf("%s: the response carries the token", tc.name)
		}
		decided = append(decided, r.str("request_id"))
	}

	// Refused by the gateway itself, each with its own code.
	refusals := []struct {
		name, token, body string
		status            int
		code              string
	}{
		{"no bearer", "", retrain, http.StatusUnauthorized, "missing_bearer"},
		{"not JSON", alice, `{"action":`, http.StatusBadRequest, "invalid_json"},
		{"empty body", alice, ``, http.StatusBadRequest, "invalid_json"},
		{"unknown field", alice, `{"action":"model.retrain","resource":{"type":"Model","id":"m"},"principal":"admin"}`, http.StatusBadRequest, "unknown_field"},
		{"wrong type", alice, `{"action":7,"resource":{"type":"Model","id":"m"}}`, http.StatusBadRequest, "wrong_type"},
		{"bad action", alice, `{"action":"Retrain!","resource":{"type":"Model","id":"m"}}`, http.StatusBadRequest, "invalid_action"},
		{"no resource", alice, `{"action":"model.retrain"}`, http.StatusBadRequest, "invalid_resource"},
		{"no resource id", alice, `{"action":"model.retrain","resource":{"type":"Model"}}`, http.StatusBadRequest, "invalid_resource_id"},
		{"bad id", alice, `{"id":"has space","action":"model.retrain","resource":{"type":"Model","id":"m"}}`, http.StatusBadRequest, "invalid_id"},
		{"two values", alice, retrain + retrain, http.StatusBadRequest, "trailing_data"},
		{"oversized", alice, `{"action":"model.retrain","resource":{"type":"Model","id":"m"},"context":{"x":"` + strings.Repeat("a", 70<<10) + `"}}`, http.StatusRequestEntityTooLarge, "body_too_large"},
		{"context too large", alice, `{"action":"model.retrain","resource":{"type":"Model","id":"m"},"context":{"x":"` + strings.Repeat("a", 20<<10) + `"}}`, http.StatusBadRequest, "context_too_large"},
	}
	for _, tc := range refusals {
		r := postAuthorize(ctx, t, url, tc.token, tc.body)
		if r.status != tc.status || r.str("error") != tc.code || r.str("message") == "" || r.body["decision"] != nil {
			t.Errorf("%s: %d %s, want %d error %s with a message", tc.name, r.status, r.raw, tc.status, tc.code)
		}
		if tc.status == http.StatusUnauthorized && !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: WWW-Authenticate %q", tc.name, r.header.Get("WWW-Authenticate"))
		}
	}

	// A retry with the same id is the same request: same id, same
	// decision; the id reused for another request is refused.
	withID := `{"id":"gw-retry-1","action":"model.retrain","resource":{"type":"Model","id":"fraud-detector"},"context":{"environment":"staging"}}`
	first := postAuthorize(ctx, t, url, alice, withID)
	again := postAuthorize(ctx, t, url, alice, withID)
	if first.status != 200 || again.status != 200 || first.str("request_id") != "gw-retry-1" || again.str("request_id") != "gw-retry-1" ||
		first.str("decision") != again.str("decision") {
		t.Errorf("retry: first %d %s, again %d %s; want the same decision for gw-retry-1", first.status, first.raw, again.status, again.raw)
	}
	decided = append(decided, "gw-retry-1")
	reused := postAuthorize(ctx, t, url, alice, strings.Replace(withID, "fraud-detector", "churn-predictor", 1))
	if reused.status != http.StatusConflict || reused.str("error") != "id_conflict" {
		t.Errorf("reused id: %d %s, want 409 id_conflict", reused.status, reused.raw)
	}

	// Every decision the API returned is audited under its request id.
	if err := demo.WaitAudited(ctx, st.DB, decided, 30*time.Second); err != nil {
		t.Fatal(err)
	}

	// Health and metrics.
	for _, u := range []string{url + "/healthz", url + "/readyz", "http://" + st.HTTPAddr(stack.Gateway) + "/readyz"} {
		resp, err := http.Get(u)
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("GET %s: %v %v", u, resp, err)
		}
		if resp != nil {
			resp.Body.Close()
		}
	}
	resp, err := http.Get("http://" + st.HTTPAddr(stack.Gateway) + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`aigov_gateway_decisions_total{code="",decision="allow",frontend="http"}`, `aigov_gateway_decisions_total{code="policy_denied",decision="deny",frontend="http"}`, "aigov_gateway_authorize_seconds_bucket"} {
		if !bytes.Contains(metrics, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Policy stopped: no decision comes, the caller gets a 504 and no
	// allow; while requests wait, a full gateway answers 503 at once.
	if err := st.StopService("policy"); err != nil {
		t.Fatal(err)
	}
	outage := `{"id":"gw-outage-1","action":"model.retrain","resource":{"type":"Model","id":"fraud-detector"},"context":{"environment":"staging"}}`
	var wg sync.WaitGroup
	replies := make([]gatewayReply, 3)
	for i := range replies {
		body := outage
		if i > 0 {
			body = strings.Replace(outage, "gw-outage-1", "gw-outage-"+string(rune('1'+i)), 1)
		}
		wg.Go(func() { replies[i] = postAuthorize(ctx, t, url, alice, body) })
	}
	time.Sleep(time.Second) // all three are waiting for a decision
	full := postAuthorize(ctx, t, url, alice, retrain)
	if full.status != http.StatusServiceUnavailable || full.str("error") != "overloaded" || full.header.Get("Retry-After") == "" {
		t.Errorf("a fourth request with 3 in flight: %d %s, want 503 overloaded with Retry-After", full.status, full.raw)
	}
	wg.Wait()
	for _, r := range replies {
		if r.status != http.StatusGatewayTimeout || r.str("error") != "decision_timeout" || r.body["decision"] != nil {
			t.Errorf("policy stopped: %d %s, want 504 decision_timeout and no decision", r.status, r.raw)
		}
	}
	if replies[0].str("request_id") != "gw-outage-1" {
		t.Errorf("504 names request %q, want gw-outage-1", replies[0].str("request_id"))
	}

	// Policy back, the queued requests are decided while no caller waits:
	// the retry with the same id (which JetStream de-duplicates, so nothing
	// decides it again) gets the decision of that same request.
	if err := st.StartService(ctx, "policy"); err != nil {
		t.Fatal(err)
	}
	if err := demo.WaitAudited(ctx, st.DB, []string{"gw-outage-1"}, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r := postAuthorize(ctx, t, url, alice, outage)
	if r.status != http.StatusOK || r.str("request_id") != "gw-outage-1" || r.str("decision") != schemas.Allow {
		t.Errorf("retry after the outage: %d %s, want 200 allow of gw-outage-1", r.status, r.raw)
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("the retry took %s: the decision had arrived, it should be answered at once", el)
	}

	// The gateway logs fingerprints, never a token.
	logb, err := os.ReadFile(st.LogPath(stack.Gateway))
	if err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"alice": alice, "expired": expired, "forged": forged} {
		if bytes.Contains(logb, []byte(tok)) {
			t.Errorf("the gateway log holds the %s token", name)
		}
	}
	if !bytes.Contains(logb, []byte(schemas.Fingerprint(alice))) {
		t.Error("the gateway log does not name alice's requests by token fingerprint")
	}
}

// The standard-library Python client (clients/python/aigov.py) and its
// MLflow example, run with the system python3 against the real stack and
// gateway: the client's own tests, then a transition to Production denied
// until a risk reviewer approves exactly it, then allowed.
func TestGatewayPythonClient(t *testing.T) {
	python, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3 on PATH: the Python client needs one")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	st := startGatewayStack(ctx, t)
	tokens := filepath.Join(t.TempDir(), "tokens")
	if err := st.WriteTokens(ctx, tokens); err != nil {
		t.Fatal(err)
	}
	pyDir := filepath.Join(built.root, "clients", "python")
	run := func(name string, args ...string) (int, string, string) {
		t.Helper()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = pyDir
		cmd.Env = append(os.Environ(), "AIGOV_GATEWAY_URL="+st.GatewayURL(), "AIGOV_TOKENS="+tokens, "PYTHONDONTWRITEBYTECODE=1")
		var stdout, stderr strings.Builder
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case errors.As(err, &ee):
			return ee.ExitCode(), stdout.String(), stderr.String()
		case err != nil:
			t.Fatalf("%s %v: %v", name, args, err)
		}
		return 0, stdout.String(), stderr.String()
	}

	code, out, errOut := run(python, "-m", "unittest", "-v", "test_aigov")
	if code != 0 || !strings.Contains(errOut, "\nOK") || strings.Contains(errOut, "skipped") {
		t.Fatalf("python3 -m unittest test_aigov: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("python client tests:\n%s", errOut)

	transition := func(id string) (int, map[string]any, string) {
		code, out, errOut := run(python, "examples/mlflow_transition.py", "--gateway", st.GatewayURL(), "--token-file", filepath.Join(tokens, "fiona.jwt"),
			"--model", "churn-predictor", "--version", "3", "--stage", "Production", "--request-id", id)
		var d map[string]any
		if err := json.Unmarshal([]byte(out), &d); err != nil {
			t.Fatalf("mlflow_transition: exit %d, output %q %s: %v", code, out, errOut, err)
		}
		return code, d, errOut
	}
	code, d, errOut := transition("mlflow-prod-1")
	if code != 1 || d["decision"] != schemas.Deny || d["code"] != string(schemas.CodeApprovalRequired) ||
		!strings.Contains(errOut, "denied") || !slicesContain(d["policy_ids"], "production-release-needs-risk-approval") {
		t.Fatalf("transition without approval: exit %d %v %s, want exit 1 and the risk-approval deny", code, d, errOut)
	}
	// The deny opened an approval request; two risk reviewers approve it.
	reason, _ := d["reason"].(string)
	approvalID := regexp.MustCompile(`apr-[0-9a-f]+`).FindString(reason)
	if approvalID == "" || d["approval_id"] != approvalID {
		t.Fatalf("the deny names no approval request: reason %q, approval_id %v", reason, d["approval_id"])
	}
	bus := []string{"--nats", st.NATS.URL(), "--tls-ca", st.NATS.CAFile(), "--trust-file", st.Keys.TrustFile, "--password", st.NATS.Password(schemas.RoleOperator)}
	for _, reviewer := range []string{"rita", "ravi"} {
		approve := exec.CommandContext(ctx, filepath.Join(built.bin, "aigov"), append([]string{"approvals", "approve", approvalID,
			"--token-file", filepath.Join(tokens, reviewer+".jwt")}, bus...)...)
		if out, err := approve.CombinedOutput(); err != nil {
			t.Fatalf("aigov approvals approve as %s: %v\n%s", reviewer, err, out)
		}
	}

	code, d, errOut = transition("mlflow-prod-2")
	if code != 0 || d["decision"] != schemas.Allow || !slicesContain(d["policy_ids"], "ml-platform-release-production-with-approval") {
		t.Fatalf("transition after the approval: exit %d %v %s, want exit 0 and an allow", code, d, errOut)
	}
	code, d, errOut = transition("mlflow-prod-3")
	if code != 1 || d["code"] != string(schemas.CodeApprovalUsed) {
		t.Fatalf("a second transition on the same approval: exit %d %v %s, want exit 1 and approval_used", code, d, errOut)
	}
	if err := demo.WaitAudited(ctx, st.DB, []string{"mlflow-prod-1", "mlflow-prod-2", "mlflow-prod-3"}, 30*time.Second); err != nil {
		t.Fatal(err)
	}
}

func slicesContain(v any, want string) bool {
	items, _ := v.([]any)
	for _, it := range items {
		if it == want {
			return true
		}
	}
	return false
}
