package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

func sign(secret []byte, ts string, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts + "."))
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// TestReceiverVerifies: a delivery signed with the team's secret and a
// fresh timestamp is kept; one with another secret, a changed body or a
// stale timestamp is refused 401 and kept nowhere; FailFirst answers 503
// first, so the sender retries.
func TestReceiverVerifies(t *testing.T) {
	t.Parallel()
	r, err := Start(Options{Teams: []string{"risk-reviewers"}, FailFirst: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	path, err := r.WriteConfig(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var cfg map[string]struct {
		URL        string `json:"url"`
		SecretFile string `json:"secret_file"`
	}
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &cfg); err != nil || cfg["risk-reviewers"].URL != r.URL("risk-reviewers") {
		t.Fatalf("config %s: %v", b, err)
	}
	secret, err := os.ReadFile(cfg["risk-reviewers"].SecretFile)
	if err != nil || len(secret) < 16 {
		t.Fatalf("secret file: %v (%d bytes)", err, len(secret))
	}
	body := []byte(`{"type":"dev.aigov.approval.requested.v1","team":"risk-reviewers","text":"Approval apr-1 requested","approval":{"approval_id":"apr-1","event":"requested"}}`)
	post := func(ts string, body []byte, sig string) int {
		req, _ := http.NewRequest(http.MethodPost, r.URL("risk-reviewers"), strings.NewReader(string(body)))
		req.Header.Set(headerTimestamp, ts)
		req.Header.Set(headerSignature, sig)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	now := strconv.FormatInt(time.Now().Unix(), 10)
	stale := strconv.FormatInt(time.Now().Add(-10*time.Minute).Unix(), 10)
	tampered := []byte(strings.Replace(string(body), "apr-1", "apr-2", 2))
	for name, code := range map[string]int{
		"another secret":    post(now, body, sign([]byte("not-the-teams-secret-at-all"), now, body)),
		"a changed body":    post(now, tampered, sign(secret, now, body)),
		"a stale timestamp": post(stale, body, sign(secret, stale, body)),
		"no signature":      post(now, body, ""),
	} {
		if code != http.StatusUnauthorized {
			t.Errorf("%s: %d, want 401", name, code)
		}
	}
	if code := post(now, body, sign(secret, now, body)); code != http.StatusServiceUnavailable {
		t.Fatalf("first good delivery: %d, want 503 (FailFirst)", code)
	}
	if code := post(now, body, sign(secret, now, body)); code != http.StatusNoContent {
		t.Fatalf("retried delivery: %d, want 204", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	n, err := r.Wait(ctx, func(n Note) bool { return n.ApprovalID == "apr-1" })
	if err != nil || n.Event != "requested" || n.Team != "risk-reviewers" || !strings.Contains(n.String(), "notified risk-reviewers: approval apr-1 requested") {
		t.Fatalf("note %+v: %v", n, err)
	}
	if tries, rejected := r.Stats(); tries != 2 || rejected != 4 || len(r.Notes()) != 1 {
		t.Fatalf("tries %d, rejected %d, notes %d", tries, rejected, len(r.Notes()))
	}
}
