package verify

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/aigov/aigov/schemas"
)

// principal maps a verified token's claims to the principal. Claims are
// looked up by exact name in a map, not decoded into a struct, because
// encoding/json matches struct fields case-insensitively: a token carrying
// both "groups" and "GROUPS" must not let the second stand in for the first.
func principal(tok *oidc.IDToken, names ClaimNames) (schemas.Principal, error) {
	var raw map[string]json.RawMessage
	if err := tok.Claims(&raw); err != nil {
		return schemas.Principal{}, fmt.Errorf("decode claims: %w", err)
	}
	if tok.Subject == "" {
		return schemas.Principal{}, fmt.Errorf("no sub claim")
	}
	c := claimReader{raw: raw}
	p := schemas.Principal{
		ID:        schemas.PrincipalID(tok.Issuer, tok.Subject),
		Type:      schemas.PrincipalUser,
		Issuer:    tok.Issuer,
		Subject:   tok.Subject,
		Email:     c.str(names.Email),
		Name:      c.str(names.Name),
		Groups:    c.list(names.Groups),
		AMR:       c.list("amr"),
		SessionID: c.str("sid"),
		AuthTime:  c.time("auth_time"),
		IssuedAt:  tok.IssuedAt.UTC(),
		ExpiresAt: tok.Expiry.UTC(),
		TokenID:   c.str("jti"),
	}
	// OAuth access tokens say "scope" (RFC 8693: space-separated); Entra
	// and Okta say "scp", as an array or a string.
	for _, name := range []string{"scope", "scp"} {
		for _, s := range c.list(name) {
			p.Scopes = append(p.Scopes, strings.Fields(s)...)
		}
	}
	if c.err != nil {
		return schemas.Principal{}, c.err
	}
	return p, nil
}

// claimReader reads typed claims and keeps the first type error.
type claimReader struct {
	raw map[string]json.RawMessage
	err error
}

func (c *claimReader) present(name string) (json.RawMessage, bool) {
	v, ok := c.raw[name]
	if !ok || bytes.Equal(bytes.TrimSpace(v), []byte("null")) {
		return nil, false
	}
	return v, true
}

func (c *claimReader) fail(name, want string) {
	if c.err == nil {
		c.err = fmt.Errorf("claim %s is not %s", name, want)
	}
}

func (c *claimReader) str(name string) string {
	v, ok := c.present(name)
	if !ok {
		return ""
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		c.fail(name, "a string")
	}
	return s
}

// list reads an array of strings; a lone string is taken as one element,
// as some IdPs send a single group or scope that way.
func (c *claimReader) list(name string) []string {
	v, ok := c.present(name)
	if !ok {
		return nil
	}
	var l []string
	if err := json.Unmarshal(v, &l); err == nil {
		return l
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		c.fail(name, "a string or an array of strings")
		return nil
	}
	if s == "" {
		return nil
	}
	return []string{s}
}

// time reads a NumericDate (seconds since the epoch, possibly fractional).
func (c *claimReader) time(name string) *time.Time {
	v, ok := c.present(name)
	if !ok {
		return nil
	}
	var f float64
	if err := json.Unmarshal(v, &f); err != nil || f < 0 || f > math.MaxInt32*16 {
		c.fail(name, "a NumericDate")
		return nil
	}
	sec, frac := math.Modf(f)
	t := time.Unix(int64(sec), int64(frac*1e9)).UTC()
	return &t
}
