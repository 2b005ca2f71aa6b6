// Package logout is the reaper's OpenID Connect Back-Channel Logout 1.0
// endpoint: an IdP POSTs a logout token when a user's session ends there;
// the handler validates it as the spec requires and revokes the matching
// aigov sessions (session_revoked, by oidc-backchannel-logout).
package logout

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/reaper/internal/kvttl"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/oidcfile"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// EventBackchannelLogout is the member of the events claim that marks a
// logout token (spec 2.4).
const EventBackchannelLogout = "http://schemas.openid.net/event/backchannel-logout"

// Path is where the handler is served.
const Path = "/backchannel-logout"

// maxBody bounds the form body; a logout token is small.
const maxBody = 16 << 10

// Config says whose logout tokens are accepted.
type Config struct {
	// Issuers are the exact trusted issuer URLs: AIGOV_OIDC_ISSUERS, or the
	// issuers of authn's AIGOV_OIDC_CONFIG file.
	Issuers []string
	// Audience is aigov's client id at the issuers (AIGOV_LOGOUT_AUDIENCE).
	Audience string
	// Audiences overrides Audience per issuer: with AIGOV_OIDC_CONFIG and no
	// AIGOV_LOGOUT_AUDIENCE, an issuer's first audience in the file (the
	// client id its logout tokens are addressed to).
	Audiences map[string]string
	// MaxAge is how old a token's iat may be (AIGOV_LOGOUT_MAX_AGE).
	MaxAge time.Duration
	// Skew is the clock skew allowed for an iat in the future.
	Skew time.Duration
	// HTTPTimeout bounds discovery and JWKS fetches.
	HTTPTimeout time.Duration
}

// Deps are the handler's collaborators; every field is required.
type Deps struct {
	JS       jetstream.JetStream
	Topology topology.Topology
	Switch   *killswitch.Switch
	Log      zerolog.Logger
	Now      func() time.Time
}

// Handler serves back-channel logout requests.
type Handler struct {
	cfg    Config
	js     jetstream.JetStream
	jtis   jetstream.KeyValue
	sw     *killswitch.Switch
	log    zerolog.Logger
	now    func() time.Time
	client *http.Client

	mu        sync.Mutex
	verifiers map[string]*oidc.IDTokenVerifier // per issuer, once discovered
}

// New opens the jti bucket and returns the handler.
func New(ctx context.Context, cfg Config, d Deps) (*Handler, error) {
	switch {
	case d.JS == nil:
		return nil, errors.New("logout: nil jetstream")
	case d.Switch == nil:
		return nil, errors.New("logout: nil kill switch")
	case d.Now == nil:
		return nil, errors.New("logout: nil clock")
	case len(cfg.Issuers) == 0 || cfg.Audience == "" || cfg.MaxAge <= 0 || cfg.HTTPTimeout <= 0:
		return nil, fmt.Errorf("logout: invalid config %+v", cfg)
	}
	jtis, err := d.JS.KeyValue(ctx, d.Topology.BucketLogoutJTIs())
	if err != nil {
		return nil, fmt.Errorf("open bucket %s: %w", d.Topology.BucketLogoutJTIs(), err)
	}
	return &Handler{cfg: cfg, js: d.JS, jtis: jtis, sw: d.Switch, log: d.Log.With().Str("component", "logout").Logger(),
		now: d.Now, client: &http.Client{Timeout: cfg.HTTPTimeout}, verifiers: map[string]*oidc.IDTokenVerifier{}}, nil
}

// claims are the logout token claims the spec names.
type claims struct {
	Issuer string                     `json:"iss"`
	Sub    string                     `json:"sub"`
	SID    string                     `json:"sid"`
	JTI    string                     `json:"jti"`
	IAT    *json.Number               `json:"iat"`
	Exp    *json.Number               `json:"exp"`
	Events map[string]json.RawMessage `json:"events"`
	Nonce  *json.RawMessage           `json:"nonce"`
}

// badRequest is a logout token the spec says to refuse with 400.
type badRequest struct{ msg string }

func (e badRequest) Error() string { return e.msg }

func bad(format string, args ...any) error { return badRequest{fmt.Sprintf(format, args...)} }

// ServeHTTP implements spec 2.8: 200 when the sessions are revoked, 400
// with an error JSON when the token is invalid, 503 when aigov could not
// record the logout (the IdP may retry).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		writeError(w, http.StatusMethodNotAllowed, "invalid_request", "use POST")
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		writeError(w, http.StatusBadRequest, "invalid_request", "body is not a form")
		return
	}
	token := r.PostForm.Get("logout_token")
	if token == "" {
		writeError(w, http.StatusBadRequest, "invalid_request", "no logout_token")
		return
	}
	c, err := h.Validate(r.Context(), token)
	if err == nil {
		err = h.apply(r.Context(), c)
	}
	var br badRequest
	switch {
	case errors.As(err, &br):
		h.log.Warn().Str("reason", br.msg).Str("token_fingerprint", schemas.Fingerprint(token)).Msg("logout token refused")
		writeError(w, http.StatusBadRequest, "invalid_request", br.msg)
	case err != nil:
		h.log.Error().Err(err).Str("token_fingerprint", schemas.Fingerprint(token)).Msg("logout not recorded")
		writeError(w, http.StatusServiceUnavailable, "temporarily_unavailable", "logout could not be recorded; retry")
	default:
		w.WriteHeader(http.StatusOK)
	}
}

func writeError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": desc})
}

// Validate checks a logout token (spec 2.6) apart from jti replay, which
// apply records: the typ header, a trusted iss, the signature and aud
// (go-oidc against the issuer's JWKS), iat freshness, the events claim,
// sid and/or sub, and no nonce.
func (h *Handler) Validate(ctx context.Context, token string) (claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return claims{}, bad("logout token is not a signed JWT")
	}
	var hdr struct {
		Typ string `json:"typ"`
	}
	if err := decodeSegment(parts[0], &hdr); err != nil {
		return claims{}, bad("logout token header: %v", err)
	}
	// Explicit typing (spec 2.4) keeps an ID token from being replayed as
	// a logout token; a token without typ is still accepted.
	if t := strings.ToLower(hdr.Typ); t != "" && t != "logout+jwt" && t != "application/logout+jwt" {
		return claims{}, bad("logout token typ %q is not logout+jwt", hdr.Typ)
	}
	var c claims
	if err := decodeSegment(parts[1], &c); err != nil {
		return claims{}, bad("logout token claims: %v", err)
	}
	if !slices.Contains(h.cfg.Issuers, c.Issuer) {
		return claims{}, bad("issuer %q is not trusted", c.Issuer)
	}
	v, err := h.verifier(ctx, c.Issuer)
	if err != nil {
		return claims{}, err
	}
	if _, err := v.Verify(ctx, token); err != nil {
		return claims{}, bad("logout token does not verify: %v", err)
	}
	now := h.now()
	if c.IAT == nil {
		return claims{}, bad("logout token has no iat")
	}
	iat, err := c.IAT.Int64()
	if err != nil {
		return claims{}, bad("logout token iat is not a number")
	}
	switch at := time.Unix(iat, 0); {
	case now.Sub(at) > h.cfg.MaxAge:
		return claims{}, bad("logout token iat is older than %s", h.cfg.MaxAge)
	case at.Sub(now) > h.cfg.Skew:
		return claims{}, bad("logout token iat is in the future")
	}
	ev, ok := c.Events[EventBackchannelLogout]
	if !ok {
		return claims{}, bad("logout token events claim lacks %s", EventBackchannelLogout)
	}
	if t := bytes.TrimSpace(ev); len(t) == 0 || t[0] != '{' {
		return claims{}, bad("logout token event value is not a JSON object")
	}
	if c.SID == "" && c.Sub == "" {
		return claims{}, bad("logout token has neither sid nor sub")
	}
	if c.Nonce != nil {
		return claims{}, bad("logout token must not carry a nonce")
	}
	if c.JTI == "" {
		return claims{}, bad("logout token has no jti")
	}
	return c, nil
}

// apply refuses a replayed jti, then revokes the sessions the token names.
// The jti is remembered until the token's exp (with skew) by a Create
// with a per-key TTL; if the revocation then fails it is forgotten again,
// so the IdP's retry is not refused as a replay.
func (h *Handler) apply(ctx context.Context, c claims) error {
	key := schemas.LeaseRevocationKey("logout\x00" + c.Issuer + "\x00" + c.JTI)
	ttl := h.cfg.MaxAge + h.cfg.Skew
	if c.Exp != nil {
		if exp, err := c.Exp.Int64(); err == nil {
			ttl = max(ttl, time.Until(time.Unix(exp, 0))+h.cfg.Skew)
		}
	}
	if _, err := h.jtis.Create(ctx, key, []byte(c.Issuer), jetstream.KeyTTL(kvttl.Clamp(ttl))); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			return bad("logout token jti was already used")
		}
		return fmt.Errorf("record logout jti: %w", err)
	}
	sel := killswitch.Selector{Issuer: c.Issuer, SessionID: c.SID}
	if c.SID == "" {
		sel.Subject = c.Sub
	}
	res, err := h.sw.Revoke(ctx, sel, schemas.ByLogout, "back-channel logout from "+c.Issuer)
	if err != nil {
		_ = h.jtis.Delete(ctx, key)
		return err
	}
	h.log.Info().Str("issuer", c.Issuer).Str("sid", c.SID).Int("revoked", len(res.Revoked)).
		Int("leases_ended", len(res.Leases)).Msg("back-channel logout")
	return nil
}

// verifier returns the issuer's verifier, discovering it on first use; a
// failed discovery is retried by the next request.
func (h *Handler) verifier(ctx context.Context, issuer string) (*oidc.IDTokenVerifier, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if v, ok := h.verifiers[issuer]; ok {
		return v, nil
	}
	dctx, cancel := context.WithTimeout(oidc.ClientContext(ctx, h.client), h.cfg.HTTPTimeout)
	defer cancel()
	p, err := oidc.NewProvider(dctx, issuer)
	if err != nil {
		return nil, fmt.Errorf("discover issuer %s: %w", issuer, err)
	}
	// The key set keeps using h.client (with its timeout) for refreshes.
	aud := h.cfg.Audience
	if a, ok := h.cfg.Audiences[issuer]; ok {
		aud = a
	}
	v := p.Verifier(&oidc.Config{ClientID: aud, Now: h.now})
	h.verifiers[issuer] = v
	return v, nil
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return fmt.Errorf("bad base64: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("bad JSON: %w", err)
	}
	return nil
}

// Defaults of the logout settings.
const (
	DefaultMaxAge      = 5 * time.Minute
	DefaultSkew        = 30 * time.Second
	DefaultHTTPTimeout = 5 * time.Second
)

// LoadConfig reads the logout variables. addr is empty when the endpoint is
// off (AIGOV_LOGOUT_ADDR unset); then nothing else is required.
func LoadConfig(e *servicekit.Env) (addr string, c Config) {
	addr = e.String("AIGOV_LOGOUT_ADDR")
	c = Config{
		Audience:    e.StringOr("AIGOV_LOGOUT_AUDIENCE", e.String("AIGOV_OIDC_AUDIENCE")),
		MaxAge:      e.Duration("AIGOV_LOGOUT_MAX_AGE"),
		Skew:        DefaultSkew,
		HTTPTimeout: e.Duration("AIGOV_OIDC_HTTP_TIMEOUT"),
	}
	if addr == "" {
		return "", c
	}
	d, urls, fromFile := oidcfile.Load(e, "AIGOV_OIDC_ISSUERS or AIGOV_OIDC_CONFIG is required when AIGOV_LOGOUT_ADDR is set")
	c.Issuers = urls
	if fromFile {
		audienceSet := e.String("AIGOV_LOGOUT_AUDIENCE") != ""
		c.Audiences = map[string]string{}
		for _, is := range d.Issuers {
			c.Issuers = append(c.Issuers, is.URL)
			if !audienceSet && len(is.Audiences) > 0 {
				c.Audiences[is.URL] = is.Audiences[0]
			}
		}
	}
	if c.MaxAge <= 0 || c.HTTPTimeout <= 0 {
		e.Fail("AIGOV_LOGOUT_MAX_AGE and AIGOV_OIDC_HTTP_TIMEOUT must be positive")
	}
	return addr, c
}

// Serve serves the handler on addr until ctx ends, then shuts down within
// timeout (a servicekit.Worker once bound).
func Serve(ctx context.Context, addr string, h http.Handler, timeout time.Duration) error {
	mux := http.NewServeMux()
	mux.Handle(Path, h)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 10 * time.Second, WriteTimeout: 10 * time.Second}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for back-channel logout on %s: %w", addr, err)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve back-channel logout: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down back-channel logout: %w", err)
	}
	<-errc
	return nil
}
