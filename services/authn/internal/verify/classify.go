package verify

import (
	"errors"
	"strings"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"

	"github.com/aigov/aigov/schemas"
)

// classify maps a go-oidc verification failure to a deny. sigErr is what
// our key set returned, if Verify got that far: go-oidc flattens key set
// errors into text, so the typed error is carried back beside it.
//
// go-oidc v3.21 offers a type only for expiry (*oidc.TokenExpiredError);
// every other failure is a fmt.Errorf with %v, so the remaining cases match
// the fixed parts of its messages (oidc/verify.go). A message this does not
// know still denies, as bad_signature: the token was not proven authentic.
func classify(err, sigErr error, audience string) *Denial {
	var expired *oidc.TokenExpiredError
	switch {
	case err == nil:
		return nil
	case errors.Is(sigErr, errKeysUnavailable):
		return deny(schemas.CodeIssuerUnavailable, "the issuer's signing keys could not be fetched")
	case sigErr != nil:
		return deny(schemas.CodeBadSignature, "the signature does not verify with any of the issuer's published keys")
	case errors.As(err, &expired):
		return deny(schemas.CodeTokenExpired, "the token expired at %s", expired.Expiry.UTC().Format(time.RFC3339))
	}
	msg := err.Error()
	switch {
	case strings.HasPrefix(msg, "oidc: malformed jwt:") && strings.Contains(msg, "unexpected signature algorithm"):
		return deny(schemas.CodeBadSignature, "the token's signing algorithm is not allowed for its issuer")
	case strings.HasPrefix(msg, "oidc: malformed jwt:"),
		strings.HasPrefix(msg, "oidc: failed to unmarshal claims"),
		strings.HasPrefix(msg, "oidc: id token not signed"),
		strings.HasPrefix(msg, "oidc: multiple signatures"),
		strings.HasPrefix(msg, "oidc: failed to obtain source from claim name"),
		strings.HasPrefix(msg, "oidc: source does not exist"):
		return deny(schemas.CodeMalformedToken, "the token is not a well-formed signed JWT")
	case strings.HasPrefix(msg, "failed to verify signature:"):
		return deny(schemas.CodeBadSignature, "the signature does not verify with any of the issuer's published keys")
	case strings.HasPrefix(msg, "oidc: expected audience"):
		return deny(schemas.CodeWrongAudience, "the token's audience does not include %q", audience)
	case strings.Contains(msg, "before the nbf (not before) time"):
		return deny(schemas.CodeTokenNotYetValid, "the token's nbf is in the future")
	case strings.HasPrefix(msg, "oidc: id token issued by a different provider"):
		return deny(schemas.CodeUntrustedIssuer, "the token's iss does not match the issuer that verified it")
	default:
		return deny(schemas.CodeBadSignature, "the token failed verification")
	}
}
