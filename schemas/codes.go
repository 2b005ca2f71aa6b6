package schemas

// Code is a machine-readable reason for a deny. Every deny carries exactly
// one. The list is part of the wire contract: add, never rename.
type Code string

// Deny codes. Each one's meaning is in Codes.
const (
	CodeMissingToken      Code = "missing_token"
	CodeMalformedToken    Code = "malformed_token"
	CodeBadSignature      Code = "bad_signature"
	CodeTokenExpired      Code = "token_expired"
	CodeTokenNotYetValid  Code = "token_not_yet_valid"
	CodeUntrustedIssuer   Code = "untrusted_issuer"
	CodeWrongAudience     Code = "wrong_audience"
	CodeIssuerUnavailable Code = "issuer_unavailable"
	CodeSessionRevoked    Code = "session_revoked"
	CodeSessionExpired    Code = "session_expired"
	CodeMalformedRequest  Code = "malformed_request"
	CodePolicyDenied      Code = "policy_denied"
	CodePolicyError       Code = "policy_error"
	CodeUnknownResource   Code = "unknown_resource"
)

// Codes documents every deny code. schemas/json/decision.json enumerates
// the same set; a test keeps the two equal.
var Codes = map[Code]string{
	CodeMissingToken:      "the request had no Authorization: Bearer header",
	CodeMalformedToken:    "the bearer value is not a well-formed signed JWT (bad base64, bad JSON, wrong number of parts, JWE)",
	CodeBadSignature:      "the signature does not verify with any of the issuer's published keys, or uses an algorithm not allowed",
	CodeTokenExpired:      "the token's exp has passed (or it has none)",
	CodeTokenNotYetValid:  "the token's nbf is in the future",
	CodeUntrustedIssuer:   "the token's iss is not one of the configured trusted issuers",
	CodeWrongAudience:     "the token's aud does not contain the audience configured for its issuer",
	CodeIssuerUnavailable: "the issuer's discovery document or keys could not be fetched; aigov fails closed",
	CodeSessionRevoked:    "the token's session was revoked (kill switch or logout)",
	CodeSessionExpired:    "the token's session passed its maximum age or idle timeout",
	CodeMalformedRequest:  "the request event is not a valid CloudEvent or its data is not a valid request",
	CodePolicyDenied:      "no Cedar policy permits the request, or a forbid policy matched",
	CodePolicyError:       "a Cedar policy failed to evaluate; any evaluation error denies",
	CodeUnknownResource:   "the resource is not in the trusted entity store",
}
