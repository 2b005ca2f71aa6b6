package mcpgw

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// claims are the few claims the MCP endpoint reads, unverified, to admit a
// bearer (see Gateway.verifyToken).
type claims struct {
	Issuer  string `json:"iss"`
	Subject string `json:"sub"`
	Expiry  int64  `json:"exp"`
	Scope   string `json:"scope"`
}

// unverifiedClaims decodes a compact JWS's payload without verifying it.
func unverifiedClaims(token string) (claims, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return claims{}, errors.New("not a JWT (want three dot-separated parts)")
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return claims{}, fmt.Errorf("not a JWT: payload: %w", err)
	}
	var c claims
	if err := json.Unmarshal(b, &c); err != nil {
		return claims{}, fmt.Errorf("not a JWT: payload: %w", err)
	}
	if c.Issuer == "" || c.Subject == "" {
		return claims{}, errors.New("the token names no issuer or subject")
	}
	return c, nil
}
