package notify_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/policy/internal/notify"
)

var secret = []byte("0123456789abcdef-team-secret")

func event(name string) schemas.ApprovalEvent {
	return schemas.ApprovalEvent{
		ApprovalID: "apr-1", Event: name, Status: schemas.StatusPending, RequesterID: "https://idp#riley", Digest: "sha256:ab",
		Action: "model.deploy", Resource: schemas.Resource{Type: "Model", ID: "churn-predictor"},
		Requirements: []schemas.ApprovalRequirement{{Team: "risk-reviewers", Quorum: 2, PolicyID: "p"}, {Team: "security", Quorum: 1, PolicyID: "q"}},
		MaxUses:      1, ExpiresAt: time.Date(2026, 12, 3, 18, 0, 0, 0, time.UTC), At: time.Date(2026, 12, 3, 17, 0, 0, 0, time.UTC),
	}
}

// receiver is a real HTTP server that verifies every delivery's signature
// and answers the first `failures` tries with 503.
type receiver struct {
	mu       sync.Mutex
	failures int
	tries    int
	bodies   [][]byte
	bad      []string
	got      chan struct{}
}

func (r *receiver) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	body, _ := io.ReadAll(req.Body)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.tries++
	if !notify.Verify(secret, req.Header.Get(notify.HeaderTimestamp), body, req.Header.Get(notify.HeaderSignature)) {
		r.bad = append(r.bad, req.Header.Get(notify.HeaderSignature))
		w.WriteHeader(http.StatusUnauthorized)
		return
	}
	if r.tries <= r.failures {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	r.bodies = append(r.bodies, body)
	w.WriteHeader(http.StatusNoContent)
	r.got <- struct{}{}
}

func start(t *testing.T, hooks map[string]notify.Hook) *notify.Webhooks {
	t.Helper()
	w, err := notify.New(notify.Options{Hooks: hooks, InitialBackoff: 10 * time.Millisecond, MaxBackoff: 40 * time.Millisecond,
		MaxAttempts: 4, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("webhooks did not stop")
		}
	})
	return w
}

// TestWebhookDeliveredAndRetried: the requested event reaches the
// team's real HTTP endpoint signed, after two 503s, as the JSON payload;
// a team without a hook gets nothing.
func TestWebhookDeliveredAndRetried(t *testing.T) {
	t.Parallel()
	rcv := &receiver{failures: 2, got: make(chan struct{}, 4)}
	srv := httptest.NewServer(rcv)
	defer srv.Close()
	w := start(t, map[string]notify.Hook{"risk-reviewers": {URL: srv.URL, Secret: secret}})
	w.Notify(event(schemas.ApprovalRequested))
	select {
	case <-rcv.got:
	case <-time.After(5 * time.Second):
		t.Fatal("no delivery")
	}
	rcv.mu.Lock()
	defer rcv.mu.Unlock()
	if rcv.tries != 3 || len(rcv.bad) != 0 || len(rcv.bodies) != 1 {
		t.Fatalf("tries %d, bad signatures %v, deliveries %d", rcv.tries, rcv.bad, len(rcv.bodies))
	}
	var p notify.Payload
	if err := json.Unmarshal(rcv.bodies[0], &p); err != nil {
		t.Fatal(err)
	}
	if p.Type != schemas.TypeApprovalRequested || p.Team != "risk-reviewers" || p.Approval.ApprovalID != "apr-1" ||
		!strings.Contains(p.Text, "aigov approvals show apr-1") {
		t.Fatalf("payload %+v", p)
	}
}

// TestWebhookSlackFormatAndGivingUp: the Slack format is {"text": ...};
// a receiver that keeps failing is tried MaxAttempts times, no more; a 4xx
// is not retried.
func TestWebhookSlackFormatAndGivingUp(t *testing.T) {
	t.Parallel()
	var (
		mu    sync.Mutex
		tries = map[string]int{}
		texts []string
	)
	done := make(chan struct{}, 16)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		tries[r.URL.Path]++
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		if s, ok := m["text"].(string); ok && len(m) == 1 {
			texts = append(texts, s)
		}
		mu.Unlock()
		switch r.URL.Path {
		case "/down":
			w.WriteHeader(http.StatusBadGateway)
		case "/gone":
			w.WriteHeader(http.StatusGone)
		default:
			w.WriteHeader(http.StatusOK)
		}
		done <- struct{}{}
	}))
	defer srv.Close()
	w := start(t, map[string]notify.Hook{
		"risk-reviewers": {URL: srv.URL + "/down", Secret: secret, Format: notify.FormatSlack},
		"security":       {URL: srv.URL + "/gone", Secret: secret},
	})
	w.Notify(event(schemas.ApprovalApproved))
	for range 5 { // 4 tries of /down, 1 of /gone
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatal("deliveries missing")
		}
	}
	time.Sleep(100 * time.Millisecond) // nothing more may come
	mu.Lock()
	defer mu.Unlock()
	if tries["/down"] != 4 || tries["/gone"] != 1 {
		t.Fatalf("tries %v, want 4 to /down and 1 to /gone", tries)
	}
	if len(texts) != 4 || !strings.Contains(texts[0], "Approval apr-1 approved") {
		t.Fatalf("slack texts %q", texts)
	}
}

func TestLoadFile(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	sec := filepath.Join(dir, "secret")
	if err := os.WriteFile(sec, append(secret, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	good := filepath.Join(dir, "good.json")
	if err := os.WriteFile(good, []byte(`{"risk-reviewers": {"url": "https://hooks.example/r", "secret_file": "`+sec+`", "format": "slack"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	hooks, err := notify.LoadFile(good)
	if err != nil || string(hooks["risk-reviewers"].Secret) != string(secret) || hooks["risk-reviewers"].Format != notify.FormatSlack {
		t.Fatalf("hooks %+v, err %v", hooks, err)
	}
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"a": {"url": "ftp://x", "secret_file": "`+sec+`", "format": "xml"}, "b": {"url": "https://x"}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = notify.LoadFile(bad)
	for _, want := range []string{`team "a": url`, `team "a": format`, `team "b": secret_file is required`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
}
