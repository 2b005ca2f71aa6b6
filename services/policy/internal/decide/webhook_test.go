package decide

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/policy/internal/notify"
)

// TestApprovalRequestReachesTeamWebhook: the policy service's deny that
// opens an approval request reaches the risk reviewers' real HTTP
// endpoint, signed, after one failed try.
func TestApprovalRequestReachesTeamWebhook(t *testing.T) {
	t.Parallel()
	secret := []byte("risk-reviewers-webhook-secret")
	got := make(chan notify.Payload, 4)
	tries := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if !notify.Verify(secret, r.Header.Get(notify.HeaderTimestamp), body, r.Header.Get(notify.HeaderSignature)) {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		if tries++; tries == 1 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		var p notify.Payload
		_ = json.Unmarshal(body, &p)
		got <- p
	}))
	defer srv.Close()
	hooks, err := notify.New(notify.Options{Hooks: map[string]notify.Hook{"risk-reviewers": {URL: srv.URL, Secret: secret}},
		InitialBackoff: 10 * time.Millisecond, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- hooks.Run(ctx) }()
	defer func() { cancel(); <-done }()

	h := newHarness(t, 2)
	h.svc.notify = hooks
	h.start(t)
	churn := schemas.Resource{Type: "Model", ID: "churn-predictor"}
	d := h.decideOne(t, principalRequest(t, "fiona", []string{"ml-platform"}, "deploy-w1", "model.deploy", churn,
		map[string]any{"environment": "production"}))
	select {
	case p := <-got:
		if p.Type != schemas.TypeApprovalRequested || p.Approval.ApprovalID != d.ApprovalID || p.Team != "risk-reviewers" {
			t.Fatalf("delivery %+v for %s", p, d.ApprovalID)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no webhook delivery")
	}
}
