package verify

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/aigov/aigov/schemas"
)

// principal maps verified claims to the principal. Claims are read by
// exact name from a map, never decoded into a struct, because
// encoding/json matches struct fields without case (and parseToken has
// refused case variants anyway).
func principal(t *token, cfg *Issuer) (schemas.Principal, error) {
	c := claimReader{raw: t.claims}
	sub := c.str("sub")
	if sub == "" && c.err == nil {
		return schemas.Principal{}, errors.New("no sub claim")
	}
	m := &cfg.Claims
	localID, err := renderTemplate(cfg.tmpl, &c)
	if err != nil {
		return schemas.Principal{}, err
	}
	typ := cfg.PrincipalType
	if typ == "" {
		typ = schemas.PrincipalUser
	}
	p := schemas.Principal{
		ID:        schemas.PrincipalID(t.iss, localID),
		Type:      typ,
		Issuer:    t.iss,
		Subject:   sub,
		Email:     c.str(m.Email),
		Name:      c.str(m.Name),
		Groups:    c.list(m.Groups),
		AMR:       c.list("amr"),
		ACR:       c.str("acr"),
		SessionID: c.str("sid"),
		AuthTime:  c.time("auth_time"),
		TokenID:   c.str("jti"),
	}
	if iat := c.time("iat"); iat != nil {
		p.IssuedAt = *iat
	}
	if exp := c.time("exp"); exp != nil {
		p.ExpiresAt = *exp
	}
	// OAuth access tokens say "scope" (RFC 8693: space-separated); Entra
	// and Okta say "scp", as an array or a string.
	for _, name := range m.Scopes {
		for _, s := range c.list(name) {
			p.Scopes = append(p.Scopes, strings.Fields(s)...)
		}
	}
	p.MFA = schemas.AMRProvesMFA(p.AMR) ||
		(p.ACR != "" && slices.Contains(cfg.MFAACRValues, p.ACR))
	if len(m.Attributes) > 0 {
		p.Attributes = make(map[string]string, len(m.Attributes))
		for name, path := range m.Attributes {
			if v, ok := c.scalar(path); ok {
				p.Attributes[name] = v
			}
		}
		if len(p.Attributes) == 0 {
			p.Attributes = nil
		}
	}
	if c.err != nil {
		return schemas.Principal{}, c.err
	}
	return p, nil
}

// claimReader reads typed claims by path and keeps the first type error.
type claimReader struct {
	raw map[string]json.RawMessage
	err error
}

// lookup resolves a path: the whole path as one claim name first (so
// cognito:groups and names with dots work), else the longest name prefix
// up to a dot that is an object, then the rest inside it.
func (c *claimReader) lookup(path string) (json.RawMessage, bool) {
	return lookupPath(c.raw, path, 0)
}

// maxPathDepth bounds path resolution into nested objects.
const maxPathDepth = 8

func lookupPath(obj map[string]json.RawMessage, path string, depth int) (json.RawMessage, bool) {
	if v, ok := obj[path]; ok {
		if isJSONNull(v) {
			return nil, false
		}
		return v, true
	}
	if depth >= maxPathDepth {
		return nil, false
	}
	for i := len(path) - 1; i > 0; i-- {
		if path[i] != '.' {
			continue
		}
		v, ok := obj[path[:i]]
		if !ok {
			continue
		}
		var inner map[string]json.RawMessage
		if json.Unmarshal(v, &inner) != nil {
			return nil, false
		}
		return lookupPath(inner, path[i+1:], depth+1)
	}
	return nil, false
}

func (c *claimReader) fail(name, want string) {
	if c.err == nil {
		c.err = fmt.Errorf("claim %s is not %s", name, want)
	}
}

func (c *claimReader) str(name string) string {
	v, ok := c.lookup(name)
	if !ok {
		return ""
	}
	var s string
	if err := json.Unmarshal(v, &s); err != nil {
		c.fail(name, "a string")
	}
	return s
}

// scalar reads a string, number or boolean as a string: GitHub sends its
// numeric ids as strings, other issuers as numbers.
func (c *claimReader) scalar(name string) (string, bool) {
	v, ok := c.lookup(name)
	if !ok {
		return "", false
	}
	var s string
	if json.Unmarshal(v, &s) == nil {
		return s, true
	}
	var n json.Number
	if json.Unmarshal(v, &n) == nil {
		return n.String(), true
	}
	var b bool
	if json.Unmarshal(v, &b) == nil {
		return strconv.FormatBool(b), true
	}
	c.fail(name, "a string, number or boolean")
	return "", false
}

// list reads an array of strings; a lone string is taken as one element,
// as some IdPs send a single group or scope that way.
func (c *claimReader) list(name string) []string {
	v, ok := c.lookup(name)
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

// maxNumericDate bounds a NumericDate to years a token can mean.
const maxNumericDate = math.MaxInt32 * 16

// time reads a NumericDate (seconds since the epoch, possibly fractional).
func (c *claimReader) time(name string) *time.Time {
	v, ok := c.lookup(name)
	if !ok {
		return nil
	}
	var f float64
	if err := json.Unmarshal(v, &f); err != nil || f < 0 || f > maxNumericDate || math.IsNaN(f) {
		c.fail(name, "a NumericDate")
		return nil
	}
	sec, frac := math.Modf(f)
	t := time.Unix(int64(sec), int64(frac*1e9)).UTC()
	return &t
}

// template is a parsed principal id template: literal text and claim
// paths, alternating.
type template []templatePart

type templatePart struct {
	lit  string
	path string // "" for a literal
}

// parseTemplate parses "{sub}" or "repo:{repository_id}@{ref}".
func parseTemplate(s string) (template, error) {
	var out template
	for s != "" {
		open := strings.IndexByte(s, '{')
		if open < 0 {
			if strings.ContainsRune(s, '}') {
				return nil, errors.New("unbalanced }")
			}
			out = append(out, templatePart{lit: s})
			break
		}
		if strings.ContainsRune(s[:open], '}') {
			return nil, errors.New("unbalanced }")
		}
		if open > 0 {
			out = append(out, templatePart{lit: s[:open]})
		}
		end := strings.IndexByte(s[open:], '}')
		if end < 0 {
			return nil, errors.New("unclosed {")
		}
		path := s[open+1 : open+end]
		if path == "" || strings.ContainsAny(path, "{") {
			return nil, errors.New("empty or nested placeholder")
		}
		out = append(out, templatePart{path: path})
		s = s[open+end+1:]
	}
	if !slices.ContainsFunc(out, func(p templatePart) bool { return p.path != "" }) {
		return nil, errors.New("template names no claim")
	}
	return out, nil
}

// renderTemplate fills a template from claims; every claim it names must
// be present, so two principals can never collapse into one id.
func renderTemplate(t template, c *claimReader) (string, error) {
	if len(t) == 1 && t[0].path == "sub" {
		return c.str("sub"), nil
	}
	var b strings.Builder
	for _, p := range t {
		if p.path == "" {
			b.WriteString(p.lit)
			continue
		}
		v, ok := c.scalar(p.path)
		if !ok || v == "" {
			return "", fmt.Errorf("principal id claim %s is missing", p.path)
		}
		b.WriteString(v)
	}
	return b.String(), nil
}

// sortedKeys returns m's keys in order, for stable messages.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
