// Package idp is the development OIDC provider used by `make run` and by the
// tests of every service.
//
// It runs a real OIDC issuer over HTTP (discovery document + JWKS) built on
// github.com/oauth2-proxy/mockoidc, so the authn service verifies dev tokens
// exactly as it verifies production ones: discovery, key fetch by `kid`,
// RS256 signature, iss/aud/exp checks. Tokens are obtained through the
// provider's own authorize → code → token endpoints; nothing here signs a
// "good" token by hand. The only hand-signing is Forge (forge.go), which exists
// to produce tokens that must be rejected.
//
// Issued id_tokens are RS256 JWTs whose header carries `kid` (the base64url
// SHA-256 of the signing key's PKIX DER, as published in the JWKS) and
// `typ: JWT`, and whose payload carries iss, sub, aud, exp, iat, nbf, jti,
// nonce, auth_time, sid, amr, scope, email, email_verified, name,
// preferred_username and groups.
package idp

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-jose/go-jose/v4"
	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
)

const (
	defaultAddr     = "127.0.0.1:0"
	defaultClientID = "aigov"
	defaultTTL      = 10 * time.Minute

	// requestedScopes is what Token asks for. mockoidc refuses any scope it
	// does not list in mockoidc.ScopesSupported, so this is also the widest
	// set it can grant; it ends up verbatim in the `scope` claim.
	requestedScopes = "openid email profile groups"

	// redirectURI is never fetched: Token stops at the authorize endpoint's
	// 302 and reads the code from Location. mockoidc does not register or
	// check redirect URIs, so any absolute URL works.
	redirectURI = "http://127.0.0.1/aigov/callback"

	// rsaBits matches what real IdPs use for RS256 keys.
	rsaBits = 2048
)

// Options configures Start. The zero value is usable: every field has a
// default suited to tests.
type Options struct {
	// Addr is the listen address, default "127.0.0.1:0" (a free port). The
	// issuer URL is derived from the address actually bound, so the host
	// must be one clients can dial: an unspecified host (":8080",
	// "0.0.0.0:8080", "[::]:8080") is refused, because it would put an
	// unusable issuer such as "http://[::]:8080/oidc" into every token.
	Addr string
	// ClientID is the audience (`aud`) of issued tokens and the OAuth client
	// the token flow authenticates as, default "aigov". The authn service
	// must configure its verifier with the same value.
	ClientID string
	// TokenTTL is the default lifetime of issued tokens (exp - iat), default
	// 10m. WithTTL overrides it per token.
	TokenTTL time.Duration
	// Now is the clock used for iat/auth_time/exp of issued tokens, default
	// time.Now. It lets tests and the demo mint a token that is already
	// expired (a clock in the past) without sleeping or touching
	// mockoidc's package-global NowFunc, which would leak across providers.
	Now func() time.Time
	// Extra personas beyond Personas(), keyed by name; load generators use
	// them for many distinct principals.
	Extra map[string]Persona
}

// Provider is a running dev OIDC issuer. It is safe for concurrent use.
type Provider struct {
	m        *mockoidc.MockOIDC
	issuer   string
	clientID string
	ttl      time.Duration
	now      func() time.Time
	personas map[string]Persona
	client   *http.Client

	// flow makes one Token call atomic. mockoidc binds a user to a login
	// through a FIFO queue popped by the authorize endpoint, so "queue user,
	// call authorize" must not interleave with another caller's, or two
	// goroutines could swap identities.
	flow sync.Mutex

	// serve serializes mockoidc's stateful endpoints (authorize, token,
	// userinfo) on the server side: its SessionStore is an unsynchronized
	// map, and clients other than Token (a browser during `make run`) must
	// not race with it. Discovery and JWKS stay lock-free so verifiers never
	// wait behind a token flow.
	serve sync.Mutex

	// jwksDown makes the JWKS endpoint fail (SetJWKSDown), as an IdP
	// outage would.
	jwksDown atomic.Bool

	closeOnce sync.Once
	closeErr  error
}

// SetJWKSDown makes the JWKS endpoint answer 503 (down) or serve the keys
// again: a verifier keeps the keys it knows and cannot learn new ones.
func (p *Provider) SetJWKSDown(down bool) { p.jwksDown.Store(down) }

// TokenOption adjusts a single token issued by Provider.Token.
type TokenOption func(*tokenOptions)

type tokenOptions struct {
	ttl      time.Duration
	issuedAt time.Time
	sid      string
	// sessionless omits sid and auth_time, as Dex and Google do.
	sessionless bool
}

// WithTTL sets this token's lifetime (exp - iat), overriding
// Options.TokenTTL; d <= 0 keeps the provider default. Combined with
// WithIssuedAt it yields tokens that are already expired.
func WithTTL(d time.Duration) TokenOption {
	return func(o *tokenOptions) { o.ttl = d }
}

// WithIssuedAt sets this token's iat (and nbf and auth_time) to t instead of
// the provider clock, so a test can obtain a token issued in the past - e.g.
// an hour ago with a one-minute TTL - which any verifier must reject as
// expired, without sleeping.
func WithIssuedAt(t time.Time) TokenOption {
	return func(o *tokenOptions) { o.issuedAt = t }
}

// WithSessionID sets the token's `sid` claim, so tests can model several
// tokens from one IdP login session (e.g. for session revocation or
// back-channel logout). Without it every token gets a fresh random sid,
// because every Token call is a fresh login at the provider.
func WithSessionID(sid string) TokenOption {
	return func(o *tokenOptions) { o.sid = sid }
}

// WithoutSessionClaims issues the token with neither `sid` nor
// `auth_time`, as Dex and Google do: nothing in it ties it to a login
// session, so aigov keys its session by the token's iat (schemas.SessionKey).
func WithoutSessionClaims() TokenOption {
	return func(o *tokenOptions) { o.sessionless = true }
}

// Start generates a fresh RSA signing key, starts the provider on
// opts.Addr and returns once it accepts connections. ctx bounds only the
// start-up (binding the listener); the provider runs until Close.
//
// A fresh key per provider (rather than mockoidc's built-in default key,
// whose private half is published in its source) means no one can forge a
// token the dev stack accepts, and tokens from one test's provider are
// never accepted by another's.
func Start(ctx context.Context, opts Options) (*Provider, error) {
	if opts.Addr == "" {
		opts.Addr = defaultAddr
	}
	if opts.ClientID == "" {
		opts.ClientID = defaultClientID
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = defaultTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	host, _, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("idp: listen address %q: %w", opts.Addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		return nil, fmt.Errorf("idp: listen address %q has no concrete host; the issuer URL is derived from it and must be dialable (use e.g. 127.0.0.1 or localhost)", opts.Addr)
	}

	key, err := rsa.GenerateKey(rand.Reader, rsaBits)
	if err != nil {
		return nil, fmt.Errorf("idp: generate signing key: %w", err)
	}
	m, err := mockoidc.NewServer(key)
	if err != nil {
		return nil, fmt.Errorf("idp: new mockoidc server: %w", err)
	}
	m.ClientID = opts.ClientID
	// The access token is unused (the id_token is the bearer token) but keep
	// its lifetime consistent with the id_token's default.
	m.AccessTTL = opts.TokenTTL
	// Keypair.KeyID computes and caches the kid lazily without a lock;
	// compute it now so concurrent JWKS/token handlers only read it.
	if _, err := m.Keypair.KeyID(); err != nil {
		return nil, fmt.Errorf("idp: compute kid: %w", err)
	}

	p := &Provider{
		m:        m,
		clientID: opts.ClientID,
		ttl:      opts.TokenTTL,
		now:      opts.Now,
		personas: withExtra(Personas(), opts.Extra),
		client: &http.Client{
			Timeout: 10 * time.Second,
			// Stop at the authorize endpoint's redirect: the code is in
			// Location, and the redirect URI does not exist.
			CheckRedirect: func(*http.Request, []*http.Request) error {
				return http.ErrUseLastResponse
			},
		},
	}
	if err := m.AddMiddleware(p.serializeStateful); err != nil {
		return nil, fmt.Errorf("idp: add middleware: %w", err)
	}

	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("idp: listen on %s: %w", opts.Addr, err)
	}
	if err := m.Start(ln, nil); err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("idp: start mockoidc: %w", err)
	}
	p.issuer = m.Issuer()
	return p, nil
}

func (p *Provider) serializeStateful(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case mockoidc.JWKSEndpoint:
			if p.jwksDown.Load() {
				http.Error(w, "jwks down (dev fail switch)", http.StatusServiceUnavailable)
				return
			}
		case mockoidc.DiscoveryEndpoint:
		default:
			p.serve.Lock()
			defer p.serve.Unlock()
		}
		next.ServeHTTP(w, r)
	})
}

// Issuer returns the issuer URL exactly as it appears in the discovery
// document and in every token's `iss`, e.g. "http://127.0.0.1:41234/oidc"
// (no trailing slash). Verifiers compare it byte for byte, so pass this
// string unchanged to oidc.NewProvider; discovery lives at
// Issuer()+"/.well-known/openid-configuration".
func (p *Provider) Issuer() string { return p.issuer }

// ClientID returns the audience of issued tokens, which the authn service's
// verifier must be configured with.
func (p *Provider) ClientID() string { return p.clientID }

// Token logs persona in through the provider's real endpoints - authorize
// (with PKCE and a nonce) → code → token - and returns the id_token, an
// RS256 JWT meant to be sent as `Authorization: Bearer <token>`. An unknown
// persona is an error. Concurrent calls are safe; flows are serialized.
func (p *Provider) Token(ctx context.Context, persona string, opt ...TokenOption) (string, error) {
	who, ok := p.personas[persona]
	if !ok {
		return "", fmt.Errorf("idp: unknown persona %q", persona)
	}
	o := tokenOptions{ttl: p.ttl}
	for _, f := range opt {
		f(&o)
	}
	if o.ttl <= 0 {
		o.ttl = p.ttl
	}
	if o.issuedAt.IsZero() {
		o.issuedAt = p.now()
	}
	if o.sid == "" && !o.sessionless {
		var err error
		if o.sid, err = randomString(); err != nil {
			return "", err
		}
	}
	state, err := randomString()
	if err != nil {
		return "", err
	}
	nonce, err := randomString()
	if err != nil {
		return "", err
	}
	verifier, err := randomString()
	if err != nil {
		return "", err
	}

	p.flow.Lock()
	defer p.flow.Unlock()

	// Drop anything a previous, aborted flow (e.g. cancelled ctx) may have
	// left queued, so this login pops exactly our user.
	p.m.UserQueue.Lock()
	p.m.UserQueue.Queue = nil
	p.m.UserQueue.Unlock()
	p.m.QueueUser(&user{persona: who, username: persona, opts: o})

	code, err := p.authorize(ctx, state, nonce, verifier)
	if err != nil {
		return "", err
	}
	idToken, err := p.exchange(ctx, code, verifier)
	// mockoidc never forgets a session; drop ours (the code is spent, and
	// the access/refresh tokens are not used) so a long `make run` or a load
	// test minting many tokens does not grow the store without bound.
	p.serve.Lock()
	delete(p.m.SessionStore.Store, code)
	p.serve.Unlock()
	if err != nil {
		return "", err
	}
	// Guard against a stray request having popped our queued user: never
	// hand out a token for the wrong person or from another flow.
	if err := checkIssued(idToken, who.Subject, nonce); err != nil {
		return "", err
	}
	return idToken, nil
}

func (p *Provider) authorize(ctx context.Context, state, nonce, verifier string) (string, error) {
	challenge := sha256.Sum256([]byte(verifier))
	q := url.Values{
		"client_id":             {p.clientID},
		"response_type":         {"code"},
		"scope":                 {requestedScopes},
		"redirect_uri":          {redirectURI},
		"state":                 {state},
		"nonce":                 {nonce},
		"code_challenge":        {base64.RawURLEncoding.EncodeToString(challenge[:])},
		"code_challenge_method": {mockoidc.CodeChallengeMethodS256},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.m.AuthorizationEndpoint()+"?"+q.Encode(), nil)
	if err != nil {
		return "", fmt.Errorf("idp: authorize request: %w", err)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("idp: authorize: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusFound {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return "", fmt.Errorf("idp: authorize: status %d: %s", resp.StatusCode, body)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		return "", fmt.Errorf("idp: authorize: bad redirect: %w", err)
	}
	if got := loc.Query().Get("state"); got != state {
		return "", fmt.Errorf("idp: authorize: state mismatch")
	}
	code := loc.Query().Get("code")
	if code == "" {
		return "", errors.New("idp: authorize: no code in redirect")
	}
	return code, nil
}

func (p *Provider) exchange(ctx context.Context, code, verifier string) (string, error) {
	form := url.Values{
		"grant_type":    {"authorization_code"},
		"code":          {code},
		"redirect_uri":  {redirectURI},
		"client_id":     {p.clientID},
		"client_secret": {p.m.ClientSecret},
		"code_verifier": {verifier},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.m.TokenEndpoint(), strings.NewReader(form.Encode()))
	if err != nil {
		return "", fmt.Errorf("idp: token request: %w", err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := p.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("idp: token: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", fmt.Errorf("idp: token: read body: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("idp: token: status %d: %s", resp.StatusCode, body)
	}
	var tr struct {
		IDToken string `json:"id_token"`
	}
	if err := json.Unmarshal(body, &tr); err != nil {
		return "", fmt.Errorf("idp: token: decode response: %w", err)
	}
	if tr.IDToken == "" {
		return "", errors.New("idp: token: response has no id_token")
	}
	return tr.IDToken, nil
}

// checkIssued is a sanity check on our own freshly issued token, not
// verification: the signature is ours by construction.
func checkIssued(idToken, subject, nonce string) error {
	jws, err := jose.ParseSigned(idToken, []jose.SignatureAlgorithm{jose.RS256})
	if err != nil {
		return fmt.Errorf("idp: issued token: %w", err)
	}
	var c struct {
		Sub   string `json:"sub"`
		Nonce string `json:"nonce"`
	}
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &c); err != nil {
		return fmt.Errorf("idp: issued token claims: %w", err)
	}
	if c.Sub != subject || c.Nonce != nonce {
		return fmt.Errorf("idp: issued token is for sub %q, want %q (login flows interleaved)", c.Sub, subject)
	}
	return nil
}

// Close stops the HTTP server. It is idempotent so it can be both deferred
// and registered with t.Cleanup.
func (p *Provider) Close() error {
	p.closeOnce.Do(func() {
		p.client.CloseIdleConnections()
		p.closeErr = p.m.Shutdown()
	})
	return p.closeErr
}

func randomString() (string, error) {
	b := make([]byte, 24)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("idp: random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b), nil
}

// user is the mockoidc.User queued for one login. Implementing the interface
// ourselves (instead of mockoidc.MockUser) is how the id_token gets `name`,
// `auth_time`, `sid`, `amr`, `scope` and per-token iat/exp: mockoidc signs
// whatever claims the user returns, on top of the registered claims it
// built (iss, sub, aud, exp, iat, nbf, jti) and the nonce.
type user struct {
	persona  Persona
	username string
	opts     tokenOptions
}

var _ mockoidc.User = (*user)(nil)

// idTokenClaims is the id_token payload. Groups has no omitempty so an
// outsider's token says `"groups": []` explicitly.
type idTokenClaims struct {
	*mockoidc.IDTokenClaims
	AuthTime          *int64   `json:"auth_time,omitempty"`
	SID               string   `json:"sid,omitempty"`
	AMR               []string `json:"amr"`
	Scope             string   `json:"scope"`
	Email             string   `json:"email"`
	EmailVerified     bool     `json:"email_verified"`
	Name              string   `json:"name"`
	PreferredUsername string   `json:"preferred_username"`
	Groups            []string `json:"groups"`
}

// ID implements mockoidc.User: it becomes `sub`.
func (u *user) ID() string { return u.persona.Subject }

// Claims implements mockoidc.User. base is freshly built by mockoidc for this
// token, so overriding its times here is safe and per-token.
func (u *user) Claims(scopes []string, base *mockoidc.IDTokenClaims) (jwt.Claims, error) {
	iat := u.opts.issuedAt
	base.IssuedAt = jwt.NewNumericDate(iat)
	base.NotBefore = jwt.NewNumericDate(iat)
	base.ExpiresAt = jwt.NewNumericDate(iat.Add(u.opts.ttl))
	var authTime *int64
	if !u.opts.sessionless {
		at := iat.Unix()
		authTime = &at
	}
	return &idTokenClaims{
		IDTokenClaims:     base,
		AuthTime:          authTime,
		SID:               u.opts.sid,
		AMR:               u.amr(),
		Scope:             strings.Join(scopes, " "),
		Email:             u.persona.Email,
		EmailVerified:     true,
		Name:              u.persona.Name,
		PreferredUsername: u.username,
		Groups:            u.groups(),
	}, nil
}

// Userinfo implements mockoidc.User, so the userinfo endpoint agrees with
// the id_token.
func (u *user) Userinfo([]string) ([]byte, error) {
	return json.Marshal(map[string]any{
		"sub":                u.persona.Subject,
		"email":              u.persona.Email,
		"email_verified":     true,
		"name":               u.persona.Name,
		"preferred_username": u.username,
		"groups":             u.groups(),
	})
}

func (u *user) amr() []string {
	if len(u.persona.AMR) == 0 {
		return []string{"pwd"}
	}
	return append([]string{}, u.persona.AMR...)
}

func (u *user) groups() []string {
	return append([]string{}, u.persona.Groups...)
}

func withExtra(base, extra map[string]Persona) map[string]Persona {
	for name, p := range extra {
		base[name] = p
	}
	return base
}
