// Package httpapi is the gateway's HTTP authorize API: POST /v1/authorize
// with the caller's OIDC bearer token turns a JSON body into an aigov
// request and answers with its decision. It decides nothing itself; a
// deny is a 200 like an allow, and no decision in time is a 504 (fail
// closed).
package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/gateway/internal/decider"
)

// Error codes of the API's own refusals (the "error" field), before any
// request reaches aigov. They are part of the API contract
// (schemas/openapi/gateway.yaml).
const (
	ErrMissingBearer      = "missing_bearer"
	ErrTokenTooLarge      = "token_too_large"
	ErrMethodNotAllowed   = "method_not_allowed"
	ErrUnsupportedMedia   = "unsupported_media_type"
	ErrBodyTooLarge       = "body_too_large"
	ErrInvalidJSON        = "invalid_json"
	ErrUnknownField       = "unknown_field"
	ErrWrongType          = "wrong_type"
	ErrTrailingData       = "trailing_data"
	ErrInvalidAction      = "invalid_action"
	ErrInvalidResource    = "invalid_resource"
	ErrInvalidResourceID  = "invalid_resource_id"
	ErrInvalidID          = "invalid_id"
	ErrContextTooLarge    = "context_too_large"
	ErrIDConflict         = "id_conflict"
	ErrOverloaded         = "overloaded"
	ErrDecisionTimeout    = "decision_timeout"
	ErrBusRefused         = "bus_refused"
	ErrBusUnavailable     = "bus_unavailable"
	ErrShuttingDown       = "shutting_down"
	ErrNotFound           = "not_found"
	errBodyReadIncomplete = "body_read_failed"
)

// Request is the body of POST /v1/authorize.
type Request struct {
	// ID is the request id and idempotency key; empty means a new one.
	ID       string           `json:"id,omitempty"`
	Action   string           `json:"action"`
	Resource schemas.Resource `json:"resource"`
	Context  map[string]any   `json:"context,omitempty"`
}

// Principal is who the decision is about, as authn verified it.
type Principal struct {
	ID      string   `json:"id"`
	Type    string   `json:"type,omitempty"`
	Issuer  string   `json:"issuer"`
	Subject string   `json:"subject"`
	Groups  []string `json:"groups,omitempty"`
}

// Response is the 200 body: the decision, allow or deny.
type Response struct {
	RequestID     string           `json:"request_id"`
	Decision      string           `json:"decision"`
	Code          schemas.Code     `json:"code,omitempty"`
	Reason        string           `json:"reason,omitempty"`
	Stage         string           `json:"stage"`
	Action        string           `json:"action"`
	Resource      schemas.Resource `json:"resource"`
	PolicyIDs     []string         `json:"policy_ids"`
	PolicyVersion string           `json:"policy_version,omitempty"`
	Principal     *Principal       `json:"principal,omitempty"`
	Approvals     []string         `json:"approvals,omitempty"`
	// ApprovalID names the approval request an approval_required deny
	// opened (aigov approvals approve <id>); retry the same request once
	// it is approved.
	ApprovalID string         `json:"approval_id,omitempty"`
	Lease      *schemas.Lease `json:"lease,omitempty"`
	DecisionUS int64          `json:"decision_us"`
}

// Error is the body of every non-200 answer.
type Error struct {
	Error     string `json:"error"`
	Message   string `json:"message"`
	RequestID string `json:"request_id,omitempty"`
}

// Authorizer is what the API sends requests through (*decider.Decider).
type Authorizer interface {
	Authorize(ctx context.Context, call client.Call) (schemas.Decision, error)
}

// Options configure the API.
type Options struct {
	DecisionTimeout time.Duration
	MaxBodyBytes    int
	MaxInFlight     int
}

// API serves the authorize endpoint.
type API struct {
	auth    Authorizer
	log     zerolog.Logger
	opts    Options
	slots   chan struct{}
	metrics *metrics
}

type metrics struct {
	requests  *prometheus.CounterVec
	decisions *prometheus.CounterVec
	latency   prometheus.Histogram
	inFlight  prometheus.Gauge
}

// Metric names.
const (
	RequestsMetric  = "aigov_gateway_http_requests_total"
	DecisionsMetric = "aigov_gateway_decisions_total"
	LatencyMetric   = "aigov_gateway_authorize_seconds"
	InFlightMetric  = "aigov_gateway_in_flight"
)

// New builds the API; reg receives its metrics.
func New(auth Authorizer, log zerolog.Logger, reg prometheus.Registerer, opts Options) (*API, error) {
	if auth == nil {
		return nil, errors.New("httpapi: nil authorizer")
	}
	if reg == nil {
		return nil, errors.New("httpapi: nil metrics registerer")
	}
	if opts.DecisionTimeout <= 0 || opts.MaxBodyBytes <= 0 || opts.MaxInFlight <= 0 {
		return nil, fmt.Errorf("httpapi: DecisionTimeout, MaxBodyBytes and MaxInFlight must be positive, got %+v", opts)
	}
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: RequestsMetric,
			Help: "Authorize API requests answered, by HTTP status and error code (empty for a decision)."}, []string{"status", "error"}),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{Name: DecisionsMetric,
			Help: "Decisions returned by the gateway, by front end (http, mcp), decision and deny code."}, []string{"frontend", "decision", "code"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{Name: LatencyMetric,
			Help:    "Time from receiving an authorize request to answering it with a decision.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{Name: InFlightMetric, Help: "Authorize requests being served."}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.decisions, m.latency, m.inFlight} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("httpapi: register metrics: %w", err)
		}
	}
	return &API{auth: auth, log: log, opts: opts, slots: make(chan struct{}, opts.MaxInFlight), metrics: m}, nil
}

// Decisions counts decisions by front end; the MCP gateway shares it.
func (a *API) Decisions() *prometheus.CounterVec { return a.metrics.decisions }

// Limit bounds h by the API's in-flight limit (shared with
// /v1/authorize): a POST beyond it gets 503 overloaded. Other methods
// (an MCP client's long-lived GET stream, DELETE) are not counted.
func (a *API) Limit(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodPost {
			h.ServeHTTP(w, r)
			return
		}
		select {
		case a.slots <- struct{}{}:
			defer func() { <-a.slots }()
		default:
			w.Header().Set("Retry-After", "1")
			a.fail(w, http.StatusServiceUnavailable, ErrOverloaded, fmt.Sprintf("%d requests in flight, the most the gateway serves at once", a.opts.MaxInFlight), "")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// Routes registers the API on mux.
func (a *API) Routes(mux *http.ServeMux) {
	mux.HandleFunc("/v1/authorize", a.serveAuthorize)
}

// BearerToken returns the token of an Authorization: Bearer header, or ""
// (RFC 6750: the scheme is case-insensitive).
func BearerToken(r *http.Request) string {
	h := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

func (a *API) fail(w http.ResponseWriter, status int, code, msg, requestID string) {
	a.metrics.requests.WithLabelValues(strconv.Itoa(status), code).Inc()
	WriteError(w, status, Error{Error: code, Message: msg, RequestID: requestID})
}

// WriteError writes an Error body.
func WriteError(w http.ResponseWriter, status int, e Error) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(e)
}

func (a *API) serveAuthorize(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		a.fail(w, http.StatusMethodNotAllowed, ErrMethodNotAllowed, "use POST", "")
		return
	}
	token := BearerToken(r)
	if token == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="aigov"`)
		a.fail(w, http.StatusUnauthorized, ErrMissingBearer, "an Authorization: Bearer <OIDC token> header is required", "")
		return
	}
	if len(token) > client.MaxTokenBytes {
		a.fail(w, http.StatusBadRequest, ErrTokenTooLarge, fmt.Sprintf("the bearer token is %d bytes, at most %d", len(token), client.MaxTokenBytes), "")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !isJSON(ct) {
		a.fail(w, http.StatusUnsupportedMediaType, ErrUnsupportedMedia, fmt.Sprintf("Content-Type %q: send application/json", ct), "")
		return
	}
	select {
	case a.slots <- struct{}{}:
		defer func() { <-a.slots }()
	default:
		w.Header().Set("Retry-After", "1")
		a.fail(w, http.StatusServiceUnavailable, ErrOverloaded, fmt.Sprintf("%d requests in flight, the most the gateway serves at once", a.opts.MaxInFlight), "")
		return
	}
	a.metrics.inFlight.Inc()
	defer a.metrics.inFlight.Dec()

	req, status, code, err := a.decode(w, r)
	if err != nil {
		a.fail(w, status, code, err.Error(), req.ID)
		return
	}
	call := client.Call{ID: req.ID, Token: token, Request: schemas.Request{Action: req.Action, Resource: req.Resource, Context: req.Context}}
	if call.ID == "" {
		call.ID = schemas.NewID()
	}
	// The request's fields (and the token's fingerprint, a SHA-256) are
	// added only to an event that is logged: at warn, a decided request
	// costs no logging work.
	logged := func(e *zerolog.Event) *zerolog.Event {
		if !e.Enabled() {
			return e
		}
		return e.Str("request_id", call.ID).Str("action", req.Action).Str("resource", req.Resource.String()).
			Str("token_fp", schemas.Fingerprint(token))
	}

	ctx, cancel := context.WithTimeout(r.Context(), a.opts.DecisionTimeout)
	defer cancel()
	d, err := a.auth.Authorize(ctx, call)
	if err != nil {
		status, code := ErrorStatus(err)
		logged(a.log.Warn()).Err(err).Int("status", status).Msg("no decision")
		a.fail(w, status, code, errorMessage(code, err), call.ID)
		return
	}
	a.metrics.latency.Observe(time.Since(start).Seconds())
	a.metrics.decisions.WithLabelValues("http", d.Decision, string(d.Code)).Inc()
	a.metrics.requests.WithLabelValues("200", "").Inc()
	logged(a.log.Info()).Str("decision", d.Decision).Str("code", string(d.Code)).Dur("took", time.Since(start)).Msg("decided")
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(ResponseOf(d))
}

// ResponseOf is the API's view of a decision.
func ResponseOf(d schemas.Decision) Response {
	resp := Response{
		RequestID: d.RequestID, Decision: d.Decision, Code: d.Code, Reason: d.Reason, Stage: d.Stage,
		Action: d.Action, Resource: d.Resource, PolicyIDs: d.PolicyIDs, PolicyVersion: d.PolicyVersion,
		Approvals: d.Approvals, ApprovalID: d.ApprovalID, Lease: d.Lease, DecisionUS: d.Timings.TotalMicros,
	}
	if resp.PolicyIDs == nil {
		resp.PolicyIDs = []string{}
	}
	if p := d.Principal; p != nil {
		resp.Principal = &Principal{ID: p.ID, Type: p.Type, Issuer: p.Issuer, Subject: p.Subject, Groups: p.Groups}
	}
	return resp
}

// ErrorStatus maps an error of Authorize to the HTTP status and error
// code the caller gets. No decision is never an allow.
func ErrorStatus(err error) (int, string) {
	switch {
	case errors.Is(err, decider.ErrIDConflict):
		return http.StatusConflict, ErrIDConflict
	case errors.Is(err, client.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return http.StatusGatewayTimeout, ErrDecisionTimeout
	case errors.Is(err, client.ErrTokenTooLarge):
		return http.StatusBadRequest, ErrTokenTooLarge
	case errors.Is(err, client.ErrBusRefused):
		return http.StatusBadGateway, ErrBusRefused
	case errors.Is(err, client.ErrClosed):
		return http.StatusServiceUnavailable, ErrShuttingDown
	case errors.Is(err, schemas.ErrInvalidEvent):
		return http.StatusBadRequest, ErrInvalidJSON
	default:
		return http.StatusServiceUnavailable, ErrBusUnavailable
	}
}

func errorMessage(code string, err error) string {
	switch code {
	case ErrDecisionTimeout:
		return "no decision arrived in time; nothing is allowed. Retrying with the same id is safe: it is the same request"
	case ErrIDConflict:
		return "this id was already used for a different request (action, resource, context or token); use a new id"
	case ErrBusUnavailable, ErrBusRefused:
		return "the request could not be sent to aigov; nothing is allowed: " + err.Error()
	default:
		return err.Error()
	}
}

func isJSON(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	mt = strings.ToLower(strings.TrimSpace(mt))
	return mt == "application/json" || (strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json"))
}

// decode reads and checks the body, answering which status and error
// code a bad one gets.
func (a *API) decode(w http.ResponseWriter, r *http.Request) (Request, int, string, error) {
	var req Request
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(a.opts.MaxBodyBytes)))
	if err != nil {
		if mbe := (*http.MaxBytesError)(nil); errors.As(err, &mbe) {
			return req, http.StatusRequestEntityTooLarge, ErrBodyTooLarge, fmt.Errorf("the body is larger than %d bytes", a.opts.MaxBodyBytes)
		}
		return req, http.StatusBadRequest, errBodyReadIncomplete, fmt.Errorf("read body: %w", err)
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return req, http.StatusBadRequest, ErrInvalidJSON, errors.New("the body is empty; send a JSON object with action and resource")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	if err := dec.Decode(&req); err != nil {
		var syn *json.SyntaxError
		var typ *json.UnmarshalTypeError
		switch {
		case errors.As(err, &syn):
			return req, http.StatusBadRequest, ErrInvalidJSON, fmt.Errorf("the body is not valid JSON at offset %d: %v", syn.Offset, syn)
		case errors.As(err, &typ):
			field := typ.Field
			if field == "" {
				field = "body"
			}
			return req, http.StatusBadRequest, ErrWrongType, fmt.Errorf("%s must be %s, not JSON %s", field, jsonKind(typ.Type.Kind().String()), typ.Value)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return req, http.StatusBadRequest, ErrUnknownField, fmt.Errorf("%s; the fields are id, action, resource and context", strings.TrimPrefix(err.Error(), "json: "))
		default:
			return req, http.StatusBadRequest, ErrInvalidJSON, fmt.Errorf("the body is not a JSON object: %v", err)
		}
	}
	if dec.More() {
		return req, http.StatusBadRequest, ErrTrailingData, errors.New("the body holds more than one JSON value")
	}
	if rest, err := io.ReadAll(dec.Buffered()); err == nil && len(bytes.TrimSpace(rest)) > 0 {
		return req, http.StatusBadRequest, ErrTrailingData, errors.New("the body has data after its JSON object")
	}
	if req.ID != "" {
		if len(req.ID) > schemas.MaxIDLength || strings.ContainsFunc(req.ID, func(r rune) bool { return r <= ' ' || r > '~' }) {
			return req, http.StatusBadRequest, ErrInvalidID, fmt.Errorf("id must be 1 to %d printable ASCII characters without spaces", schemas.MaxIDLength)
		}
	}
	if err := (schemas.Request{Action: req.Action, Resource: schemas.Resource{Type: "Model", ID: "x"}}).Validate(); err != nil {
		return req, http.StatusBadRequest, ErrInvalidAction, validation(err)
	}
	if err := (schemas.Request{Action: "a.b", Resource: schemas.Resource{Type: req.Resource.Type, ID: "x"}}).Validate(); err != nil {
		return req, http.StatusBadRequest, ErrInvalidResource, validation(err)
	}
	if err := (schemas.Request{Action: "a.b", Resource: schemas.Resource{Type: "Model", ID: req.Resource.ID}}).Validate(); err != nil {
		return req, http.StatusBadRequest, ErrInvalidResourceID, validation(err)
	}
	// Encoded, a JSON value is at most 6 times its raw bytes (a byte
	// escaped as \u00XX), so a small body's context needs no re-encoding
	// to be known small enough.
	if req.Context != nil && 6*len(body) > schemas.MaxContextBytes {
		b, err := json.Marshal(req.Context)
		if err != nil {
			return req, http.StatusBadRequest, ErrInvalidJSON, fmt.Errorf("context: %w", err)
		}
		if len(b) > schemas.MaxContextBytes {
			return req, http.StatusBadRequest, ErrContextTooLarge, fmt.Errorf("context is %d bytes encoded, at most %d", len(b), schemas.MaxContextBytes)
		}
	}
	return req, 0, "", nil
}

func jsonKind(goKind string) string {
	switch goKind {
	case "string":
		return "a string"
	case "map", "struct":
		return "an object"
	case "slice":
		return "an array"
	default:
		return "a " + goKind
	}
}

// validation is a schemas validation error without its "invalid event"
// prefix: the caller sent a body, not an event.
func validation(err error) error {
	return errors.New(strings.TrimPrefix(err.Error(), schemas.ErrInvalidEvent.Error()+": "))
}
