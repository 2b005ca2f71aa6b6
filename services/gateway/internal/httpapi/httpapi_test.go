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
