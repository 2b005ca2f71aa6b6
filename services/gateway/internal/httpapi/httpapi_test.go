package httpapi_test

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/gateway/internal/decider"
	"github.com/aigov/aigov/services/gateway/internal/httpapi"
)

// refusing fails the test if a request reaches it: bad input must be
// refused before anything is published. (Decisions are tested against the
// real stack in services/devstack/internal/e2e.)
type refusing struct{ t *testing.T }

func (r refusing) Authorize(context.Context, client.Call) (schemas.Decision, error) {
	r.t.Error("a refused request reached the bus")
	return schemas.Decision{}, client.ErrTimeout
}

func TestBadInputIsRefusedWithItsCode(t *testing.T) {
	t.Parallel()
	api, err := httpapi.New(refusing{t}, zerolog.Nop(), prometheus.NewRegistry(),
		httpapi.Options{DecisionTimeout: time.Second, MaxBodyBytes: 4096, MaxInFlight: 4})
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Routes(mux)
	ok := `{"action":"model.retrain","resource":{"type":"Model","id":"m"}}`
	cases := []struct {
		name, method, auth, ctype, body string
		status                          int
		code                            string
	}{
		{"GET", http.MethodGet, "Bearer t", "", "", 405, httpapi.ErrMethodNotAllowed},
		{"no header", http.MethodPost, "", "", ok, 401, httpapi.ErrMissingBearer},
		{"basic auth", http.MethodPost, "Basic dXNlcjpwdw==", "", ok, 401, httpapi.ErrMissingBearer},
		{"empty bearer", http.MethodPost, "Bearer ", "", ok, 401, httpapi.ErrMissingBearer},
		{"huge token", http.MethodPost, "Bearer " + strings.Repeat("x", client.MaxTokenBytes+1), "", ok, 400, httpapi.ErrTokenTooLarge},
		{"form body", http.MethodPost, "Bearer t", "application/x-www-form-urlencoded", "a=b", 415, httpapi.ErrUnsupportedMedia},
		{"array", http.MethodPost, "Bearer t", "", `[1]`, 400, httpapi.ErrWrongType},
		{"context not an object", http.MethodPost, "Bearer t", "", `{"action":"model.retrain","resource":{"type":"Model","id":"m"},"context":"x"}`, 400, httpapi.ErrWrongType},
		{"resource type lower-case", http.MethodPost, "Bearer t", "", `{"action":"model.retrain","resource":{"type":"model","id":"m"}}`, 400, httpapi.ErrInvalidResource},
		{"trailing garbage", http.MethodPost, "Bearer t", "", ok + "}", 400, httpapi.ErrTrailingData},
		{"too large", http.MethodPost, "Bearer t", "", `{"action":"` + strings.Repeat("a", 5000) + `"}`, 413, httpapi.ErrBodyTooLarge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(tc.method, "/v1/authorize", strings.NewReader(tc.body))
			if tc.auth != "" {
				req.Header.Set("Authorization", tc.auth)
			}
			if tc.ctype != "" {
				req.Header.Set("Content-Type", tc.ctype)
			}
			rec := httptest.NewRecorder()
			mux.ServeHTTP(rec, req)
			var e httpapi.Error
			if err := json.Unmarshal(rec.Body.Bytes(), &e); err != nil {
				t.Fatalf("%d %q: not a JSON error", rec.Code, rec.Body)
			}
			if rec.Code != tc.status || e.Error != tc.code || e.Message == "" {
				t.Errorf("%d %+v, want %d %s with a message", rec.Code, e, tc.status, tc.code)
			}
		})
	}
}

// deciding answers every call at once, as if the pipeline took no time.
type deciding struct{}

func (deciding) Authorize(_ context.Context, call client.Call) (schemas.Decision, error) {
	return schemas.Decision{RequestID: call.ID, Decision: schemas.Allow, Action: call.Request.Action, Resource: call.Request.Resource,
		Stage: schemas.StagePolicy, PolicyIDs: []string{"data-scientists-retrain-staging"}, PolicyVersion: "sha256:0123456789abcdef"}, nil
}

// BenchmarkAuthorizeOverHTTP is the gateway's own cost per call, what it
// adds to the NATS path: a POST /v1/authorize over loopback HTTP through
// the API and the idempotency layer to an authorizer that answers at
// once. The SDK's publish and wait are not in it (a direct caller pays
// those too).
func BenchmarkAuthorizeOverHTTP(b *testing.B) {
	d, err := decider.New(deciding{}, decider.Options{Remember: 2 * time.Minute, MaxRemembered: 10000})
	if err != nil {
		b.Fatal(err)
	}
	api, err := httpapi.New(d, zerolog.Nop(), prometheus.NewRegistry(),
		httpapi.Options{DecisionTimeout: 5 * time.Second, MaxBodyBytes: 65536, MaxInFlight: 256})
	if err != nil {
		b.Fatal(err)
	}
	mux := http.NewServeMux()
	api.Routes(mux)
	srv := httptest.NewServer(mux)
	defer srv.Close()
	body := `{"action":"model.retrain","resource":{"type":"Model","id":"fraud-detector"},"context":{"environment":"staging"}}`
	token := "eyJhbGciOiJSUzI1NiIsImtpZCI6ImRldiJ9." + strings.Repeat("x", 600) + "." + strings.Repeat("y", 342)
	hc := srv.Client()
	b.ReportAllocs()
	for b.Loop() {
		req, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/authorize", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Content-Type", "application/json")
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		var r httpapi.Response
		if err := json.NewDecoder(resp.Body).Decode(&r); err != nil || r.Decision != schemas.Allow {
			b.Fatalf("%d %+v %v", resp.StatusCode, r, err)
		}
		resp.Body.Close()
	}
}
