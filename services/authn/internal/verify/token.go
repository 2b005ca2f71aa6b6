package verify

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/aigov/aigov/schemas"
)

// MaxTokenBytes bounds a bearer token. Real id and access tokens are a few
// KB; anything larger is refused before any parsing or hashing work.
const MaxTokenBytes = 16 << 10

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
// scheme is case-insensitive (RFC 6750 via RFC 9110).
func bearer(values []string) (string, *Denial) {
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
	case len(token) > MaxTokenBytes:
		return "", deny(schemas.CodeMalformedToken, "token is %d bytes; at most %d are accepted", len(token), MaxTokenBytes)
	case strings.ContainsAny(token, " \t\r\n"):
		return "", deny(schemas.CodeMalformedToken, "token contains whitespace")
	}
	return token, nil
}

// maxReasonIssuer bounds how much of an untrusted iss is echoed in a reason.
const maxReasonIssuer = 200

// peekIssuer reads the iss claim of a compact JWS without verifying it, so
// that an untrusted or garbage token costs no network and no key lookup.
// Nothing read here is trusted: it only picks which verifier to use.
func peekIssuer(token string) (string, *Denial) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		if len(parts) == 5 {
			return "", deny(schemas.CodeMalformedToken, "token is an encrypted JWT (JWE); a signed JWT is required")
		}
		return "", deny(schemas.CodeMalformedToken, "token has %d dot-separated parts; a signed JWT has 3", len(parts))
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return "", deny(schemas.CodeMalformedToken, "token payload is not base64url")
	}
	var claims struct {
		Issuer *string `json:"iss"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil {
		return "", deny(schemas.CodeMalformedToken, "token payload is not a JSON object with a string iss")
	}
	if claims.Issuer == nil || *claims.Issuer == "" {
		return "", deny(schemas.CodeMalformedToken, "token has no iss claim")
	}
	return *claims.Issuer, nil
}

// quoteTrunc quotes an untrusted string for a reason, bounded.
func quoteTrunc(s string, n int) string {
	if len(s) > n {
		return fmt.Sprintf("%q…", s[:n])
	}
	return fmt.Sprintf("%q", s)
}
