package verify

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/aigov/aigov/schemas"
)

// Denial is a request rejected by authn: a deny code and a reason that is
// safe to publish (it never contains the token).
type Denial struct {
	Code   schemas.Code
	Reason string
}

// Error implements error so a Denial can travel as one; callers tell it
// from a transient failure with errors.As.
func (d *Denial) Error() string { return string(d.Code) + ": " + d.Reason }

func deny(code schemas.Code, format string, args ...any) *Denial {
	return &Denial{Code: code, Reason: fmt.Sprintf(format, args...)}
}

// bearer extracts the token from the Authorization header values. The
// scheme is case-insensitive (RFC 6750 via RFC 9110). A token longer than
// maxBytes is refused before any other work.
func bearer(values []string, maxBytes int) (string, *Denial) {
	switch len(values) {
	case 0:
		return "", deny(schemas.CodeMissingToken, "no Authorization header")
	case 1:
	default:
		// Two headers could make two components disagree about who asked.
		return "", deny(schemas.CodeMalformedToken, "%d Authorization headers; want exactly one", len(values))
	}
	scheme, token, ok := strings.Cut(strings.TrimSpace(values[0]), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", deny(schemas.CodeMissingToken, "Authorization header is not a Bearer credential")
	}
	token = strings.TrimSpace(token)
	switch {
	case token == "":
		return "", deny(schemas.CodeMissingToken, "Bearer credential is empty")
	case len(token) > maxBytes:
		return "", deny(schemas.CodeTokenTooLarge, "token is %d bytes; at most %d are accepted", len(token), maxBytes)
	case strings.ContainsAny(token, " \t\r\n"):
		return "", deny(schemas.CodeMalformedToken, "token contains whitespace")
	}
	return token, nil
}

// maxReasonIssuer bounds how much of an untrusted iss is echoed in a reason.
const maxReasonIssuer = 200

// maxJSONDepth bounds nesting in a token's header and payload.
const maxJSONDepth = 32

// header is the JOSE header of a compact JWS. Only the fields aigov acts on
// are read; Has* record the presence of ones it refuses.
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
	// Refused: crit (an extension aigov cannot honour) and every header
	// that names a key or where to fetch one.
	Crit json.RawMessage `json:"crit"`
	JKU  json.RawMessage `json:"jku"`
	X5U  json.RawMessage `json:"x5u"`
	JWK  json.RawMessage `json:"jwk"`
	X5C  json.RawMessage `json:"x5c"`
}

// token is a compact JWS split and decoded, not yet verified. Nothing in
// it is trusted until the signature is checked; before that, iss only
// picks the verifier.
type token struct {
	raw     string
	header  header
	claims  map[string]json.RawMessage
	payload []byte
	iss     string
	// signingInput is the JWS signing input (header.payload) and sig the
	// decoded signature, so the signature check parses nothing again.
	signingInput string
	sig          []byte
}

// parseToken decodes a compact JWS's header and claims without verifying
// anything, refusing what no verifier could accept: the wrong shape, bad
// base64 or JSON, duplicate or case-variant names, no iss.
func parseToken(raw string) (*token, *Denial) {
	h, rest, ok := strings.Cut(raw, ".")
	p, sig, ok2 := strings.Cut(rest, ".")
	if !ok || !ok2 || strings.Contains(sig, ".") {
		if strings.Count(raw, ".") == 4 {
			return nil, deny(schemas.CodeMalformedToken, "token is an encrypted JWT (JWE) or has five parts; a signed JWT is required")
		}
		return nil, deny(schemas.CodeMalformedToken, "token has %d dot-separated parts; a signed JWT has 3", strings.Count(raw, ".")+1)
	}
	if sig == "" {
		// An unsecured JWT (alg none) has no signature; say so by its alg
		// when the header is readable.
		if hb, err := base64.RawURLEncoding.DecodeString(h); err == nil {
			var hd header
			if json.Unmarshal(hb, &hd) == nil && hd.Alg != "" {
				return nil, deny(schemas.CodeDisallowedAlgorithm, "alg %s is not allowed", quoteTrunc(hd.Alg, 20))
			}
		}
		return nil, deny(schemas.CodeMalformedToken, "token has no signature")
	}
	t := &token{raw: raw}
	hb, err := base64.RawURLEncoding.DecodeString(h)
	if err != nil {
		return nil, deny(schemas.CodeMalformedToken, "token header is not base64url")
	}
	if d := checkJSON(hb, "header"); d != nil {
		return nil, d
	}
	if err := json.Unmarshal(hb, &t.header); err != nil {
		return nil, deny(schemas.CodeMalformedToken, "token header is not a JOSE header: %s", reasonOf(err))
	}
	if t.payload, err = base64.RawURLEncoding.DecodeString(p); err != nil {
		return nil, deny(schemas.CodeMalformedToken, "token payload is not base64url")
	}
	if err := json.Unmarshal(t.payload, &t.claims); err != nil {
		return nil, deny(schemas.CodeMalformedToken, "token payload is not a JSON object")
	}
	if d := checkJSON(t.payload, "payload"); d != nil {
		return nil, d
	}
	if t.sig, err = base64.RawURLEncoding.DecodeString(sig); err != nil {
		return nil, deny(schemas.CodeMalformedToken, "token signature is not base64url")
	}
	t.signingInput = raw[:len(h)+1+len(p)]
	c := claimReader{raw: t.claims}
	t.iss = c.str("iss")
	if c.err != nil || t.iss == "" {
		return nil, deny(schemas.CodeMalformedToken, "token has no iss claim, or it is not a string")
	}
	return t, nil
}

// checkJSON refuses a header or payload whose objects repeat a name, or
// hold two names differing only in case: encoding/json keeps the last of
// a duplicate and matches struct fields case-insensitively, and another
// reader (Cedar, an IdP library) may pick the other one. b must be valid
// JSON, as json.Unmarshal has just shown.
func checkJSON(b []byte, what string) *Denial {
	name, err := duplicateName(b)
	switch {
	case err != nil:
		return deny(schemas.CodeMalformedToken, "token %s: %s", what, err)
	case name != "":
		return deny(schemas.CodeDuplicateClaims, "token %s repeats the name %s (names are compared without case)", what, quoteTrunc(name, 40))
	}
	return nil
}

// errTooDeep refuses JSON nested past maxJSONDepth.
var errTooDeep = fmt.Errorf("nested deeper than %d levels", maxJSONDepth)

// duplicateName scans valid JSON and returns the first object member name
// that repeats another of the same object, compared without case; "" if
// none. It is linear in len(b) and never panics on invalid input (fuzzed).
func duplicateName(b []byte) (string, error) {
	type level struct {
		object bool
		names  []string
	}
	var stack []level
	// expectKey is true where the next string in an object is a name.
	expectKey := false
	for i := 0; i < len(b); i++ {
		switch c := b[i]; c {
		case '{', '[':
			if len(stack) >= maxJSONDepth {
				return "", errTooDeep
			}
			stack = append(stack, level{object: c == '{'})
			expectKey = c == '{'
		case '}', ']':
			if len(stack) > 0 {
				stack = stack[:len(stack)-1]
			}
			expectKey = false
		case ',':
			expectKey = len(stack) > 0 && stack[len(stack)-1].object
		case '"':
			end, escaped := stringEnd(b, i)
			if end < 0 {
				return "", errors.New("unterminated string")
			}
			if expectKey && len(stack) > 0 {
				raw := b[i : end+1]
				var name string
				if escaped {
					if err := json.Unmarshal(raw, &name); err != nil {
						return "", errors.New("bad string escape")
					}
				} else {
					name = string(raw[1 : len(raw)-1])
				}
				lower := strings.ToLower(name)
				top := &stack[len(stack)-1]
				for _, n := range top.names {
					if n == lower {
						return name, nil
					}
				}
				top.names = append(top.names, lower)
				expectKey = false
			}
			i = end
		}
	}
	return "", nil
}

// stringEnd returns the index of the quote closing the string opened at
// b[i], and whether the string holds escapes; -1 if it is not closed.
func stringEnd(b []byte, i int) (int, bool) {
	escaped := false
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			escaped = true
			j++
		case '"':
			return j, escaped
		}
	}
	return -1, escaped
}

// quoteTrunc quotes an untrusted string for a reason, bounded.
func quoteTrunc(s string, n int) string {
	if len(s) > n {
		return fmt.Sprintf("%q…", s[:n])
	}
	return fmt.Sprintf("%q", s)
}

// isJSONNull reports whether a raw claim is absent-equivalent.
func isJSONNull(v json.RawMessage) bool {
	return bytes.Equal(bytes.TrimSpace(v), []byte("null"))
}
