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
	// CodeUnknownAction: the action is not declared in the active set's
	// Cedar schema, e.g. a misspelt model.retrian.
	CodeUnknownAction       Code = "unknown_action"
	CodeLeaseExpired        Code = "lease_expired"
	CodeTokenTooLarge       Code = "token_too_large"
	CodeDuplicateClaims     Code = "duplicate_claims"
	CodeUnsupportedHeader   Code = "unsupported_header"
	CodeDisallowedAlgorithm Code = "disallowed_algorithm"
	CodeWrongTokenType      Code = "wrong_token_type"
	CodeUnknownKey          Code = "unknown_key"
	CodeJWKSUnavailable     Code = "jwks_unavailable"
	CodeIATInFuture         Code = "iat_in_future"
	CodeWrongAZP            Code = "wrong_azp"
	CodeWrongTenant         Code = "wrong_tenant"
	CodeWorkloadNotAllowed  Code = "workload_not_allowed"
	CodeTokenReplayed       Code = "token_replayed"
	// CodeContextTooLarge: the request's context is larger than
	// MaxContextBytes once encoded; refused before any policy sees it.
	CodeContextTooLarge Code = "context_too_large"
	// CodeBadEventSignature: the verified event policy received is not
	// signed by authn's key (a forgery on the bus); nothing is decided.
	CodeBadEventSignature Code = "bad_event_signature"
	// CodePolicyInvalid: a policy.update names a set that is not staged,
	// fails to parse or validate, or is already active; the previous set
	// stays active and no approval request is opened for it.
	CodePolicyInvalid Code = "policy_invalid"
	// CodeApprovalRequired: the request is denied only because a policy
	// annotated @approval needs reviewers' approval of this exact request
	// by this requester; the reason and Decision.ApprovalID name the
	// approval request opened (or still pending) for it.
	CodeApprovalRequired Code = "approval_required"
	// CodeApprovalUsed: the approval of this exact request was already
	// used as many times as its policy allows; a new approval request is
	// opened and named.
	CodeApprovalUsed Code = "approval_used"
	// CodeRequestIDReused: a retry (a request resent under a new
	// Nats-Msg-Id) names a request id already decided for another token,
	// action or resource; the first caller's decision is not given out.
	CodeRequestIDReused Code = "request_id_reused"
	// CodeSourceTooLong: the request event's source is longer than
	// MaxSourceLength.
	CodeSourceTooLong Code = "source_too_long"
	// CodeSubjectErased: policy could not open the request's sealed
	// personal fields (services/servicekit/personal): the subject's key was erased
	// while the request was in flight, or the value was not sealed for
	// this subject.
	CodeSubjectErased Code = "subject_erased"
)

// Codes documents every deny code. schemas/json/decision.json enumerates
// the same set; a test keeps the two equal.
var Codes = map[Code]string{
	CodeMissingToken:        "the request had no Authorization: Bearer header",
	CodeMalformedToken:      "the bearer value is not a well-formed signed JWT (bad base64, bad JSON, wrong number of parts, JWE)",
	CodeBadSignature:        "the signature does not verify with any of the issuer's published keys, or uses an algorithm not allowed",
	CodeTokenExpired:        "the token's exp has passed (or it has none)",
	CodeTokenNotYetValid:    "the token's nbf is in the future",
	CodeUntrustedIssuer:     "the token's iss is not one of the configured trusted issuers",
	CodeWrongAudience:       "the token's aud does not contain the audience configured for its issuer",
	CodeIssuerUnavailable:   "the issuer's discovery document or keys could not be fetched; aigov fails closed",
	CodeSessionRevoked:      "the token's session was revoked (kill switch or logout)",
	CodeSessionExpired:      "the token's session passed its maximum age or idle timeout",
	CodeMalformedRequest:    "the request event is not a valid CloudEvent or its data is not a valid request",
	CodePolicyDenied:        "no Cedar policy permits the request, or a forbid policy matched",
	CodePolicyError:         "a Cedar policy failed to evaluate; any evaluation error denies",
	CodeUnknownResource:     "the resource is not in the trusted entity store",
	CodeUnknownAction:       "the action is not declared in the active policy set's Cedar schema (a misspelt action name, or one no policy set knows yet)",
	CodeLeaseExpired:        "the job lease named by context.lease_id has ended (missed heartbeat, maximum duration, or revoked)",
	CodeTokenTooLarge:       "the bearer token is larger than the configured maximum; refused before any parsing",
	CodeDuplicateClaims:     "the token's header or payload repeats a name, exactly or differing only in case, so two readers could disagree about its value",
	CodeUnsupportedHeader:   "the token's header has crit, or names keys by itself (jku, x5u, jwk, x5c); aigov takes keys only from the issuer's JWKS",
	CodeDisallowedAlgorithm: "the token's alg is not allowed for its issuer (none, HS256 and every symmetric algorithm are never allowed)",
	CodeWrongTokenType:      "the token is not an access credential for aigov: a logout token (typ logout+jwt or an events claim), or a typ the issuer's configuration does not accept (at+jwt only where configured)",
	CodeUnknownKey:          "the token's kid is not among the issuer's published keys, even after a (rate-limited) refresh of its JWKS",
	CodeJWKSUnavailable:     "the token needs a key aigov does not hold and the issuer's JWKS cannot be fetched; known keys keep working, everything else fails closed",
	CodeIATInFuture:         "the token's iat is further in the future than the allowed clock skew",
	CodeWrongAZP:            "the token has several audiences and its azp is missing or not an accepted client (or azp is not among the issuer's configured authorized parties)",
	CodeWrongTenant:         "the token's tid is not the tenant its multi-tenant issuer is pinned to",
	CodeWorkloadNotAllowed:  "a workload token's attributes (e.g. GitHub repository_owner_id, Kubernetes namespace) are not among the values its issuer is pinned to",
	CodeTokenReplayed:       "the token's jti was already used by another request, and its issuer has replay protection on",
	CodeContextTooLarge:     "the request's context is larger than 16 KiB (schemas.MaxContextBytes) as encoded by the requester",
	CodeBadEventSignature:   "the verified event reaching policy is unsigned or not signed by a key the trust file gives to authn: a forgery on the bus; denied without evaluating any policy",
	CodePolicyInvalid:       "a pushed policy set is not staged, failed to parse or validate against the schema, or is already the active set; it was rejected whole, the previous set stays active, and no approval request is opened for it",
	CodeApprovalRequired:    "the request is denied only because a policy annotated @approval needs approval of this exact request (same requester, same digest) by a quorum of reviewers; Decision.approval_id names the approval request to review",
	CodeApprovalUsed:        "the approval of this exact request was already used as many times as its policy allows (once by default); a new approval request is opened and named",
	CodeSourceTooLong:       "the request event's source is longer than 256 bytes (schemas.MaxSourceLength); refused before the token is looked at",
	CodeSubjectErased:       "the request's personal fields are sealed under a subject key that is gone (the subject was erased while the request was in flight) or did not open; nothing is decided on data aigov cannot read",
	CodeRequestIDReused:     "a retried request names a request id already decided for another token, action or resource; the deny carries the retry's own id (its Nats-Msg-Id) and the first decision stays the only one recorded for the id",
}

// CodeStages says which service decides each code: authn, policy, or both
// (authn/policy: policy re-checks it when the request reaches it). The deny
// code table of docs/decisions.md is generated from Codes and CodeStages.
var CodeStages = map[Code]string{
	CodeMissingToken:        "authn",
	CodeMalformedToken:      "authn",
	CodeBadSignature:        "authn",
	CodeTokenExpired:        "authn/policy",
	CodeTokenNotYetValid:    "authn",
	CodeUntrustedIssuer:     "authn",
	CodeWrongAudience:       "authn",
	CodeIssuerUnavailable:   "authn",
	CodeSessionRevoked:      "authn/policy",
	CodeSessionExpired:      "authn/policy",
	CodeMalformedRequest:    "authn/policy",
	CodePolicyDenied:        "policy",
	CodePolicyError:         "policy",
	CodeUnknownResource:     "policy",
	CodeUnknownAction:       "policy",
	CodeLeaseExpired:        "authn/policy",
	CodeTokenTooLarge:       "authn",
	CodeDuplicateClaims:     "authn",
	CodeUnsupportedHeader:   "authn",
	CodeDisallowedAlgorithm: "authn",
	CodeWrongTokenType:      "authn",
	CodeUnknownKey:          "authn",
	CodeJWKSUnavailable:     "authn",
	CodeIATInFuture:         "authn",
	CodeWrongAZP:            "authn",
	CodeWrongTenant:         "authn",
	CodeWorkloadNotAllowed:  "authn",
	CodeTokenReplayed:       "authn",
	CodeContextTooLarge:     "authn",
	CodeBadEventSignature:   "policy",
	CodePolicyInvalid:       "policy",
	CodeApprovalRequired:    "policy",
	CodeApprovalUsed:        "policy",
	CodeRequestIDReused:     "authn",
	CodeSourceTooLong:       "authn",
	CodeSubjectErased:       "policy",
}
