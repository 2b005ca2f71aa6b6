package decide

import (
	"context"
	"fmt"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
)

// DefaultRevocationsMax is the default of Deps.RevocationsMax (keys of the
// revocation bucket held in memory), authn's default too.
const DefaultRevocationsMax = 500000

// recheck re-applies, at decision time, the checks authn made when the
// request arrived and that time can undo while the verified event waits in
// AIGOV_VERIFIED: the token's expiry, the session's revocation and max age
// (from the token: sessionlimits), and the job lease's revocation. It returns the deny to publish, or nil to let Cedar
// decide. An error means the answer is unknown (the revocation set could
// neither answer nor read the bucket): the runner redelivers, so a request
// is never allowed for want of a check.
//
// Ordering: the lookup passes the set's freshness barrier, so every
// revocation whose KV write returned before the lookup began denies the
// request, however recently it was written and however long the event
// waited. A request decided after a revocation was stored is therefore
// never allowed; one whose lookup began before the write is a decision
// made before the revocation, like one decided a moment earlier.
func (s *Service) recheck(ctx context.Context, v schemas.Verified, snap *snapshot) (*schemas.Decision, error) {
	now := s.clock()
	// authn's rule: exp gets no clock-skew leeway, and a token without exp
	// is expired (a verified event always carries one; a zero one is not
	// believed).
	if exp := v.Principal.ExpiresAt; exp.IsZero() || !now.Before(exp) {
		return s.recheckDeny(v, snap, now, schemas.CodeTokenExpired,
			fmt.Sprintf("the token expired at %s, before the request was decided", exp.UTC().Format(time.RFC3339))), nil
	}
	leaseKey := ""
	if lease, ok := schemas.LeaseIDOf(v.Request.Context); ok {
		leaseKey = schemas.LeaseRevocationKey(lease)
	}
	recs, err := s.revs.Lookup(ctx, v.SessionKey, leaseKey)
	if err != nil {
		return nil, fmt.Errorf("revocation recheck of request %s: %w", v.RequestID, err)
	}
	if recs[0] != nil {
		code, reason := recs[0].SessionDenial()
		return s.recheckDeny(v, snap, s.clock(), code, reason), nil
	}
	// Max age holds without the reaper: a session the token dates is over
	// at its max age, revocation written or not (authn's check, again at
	// decision time, for a request that waited in the stream).
	if maxAge, over := s.limits.CheckToken(v.Principal, now); over {
		return s.recheckDeny(v, snap, now, schemas.CodeSessionExpired, sessionlimits.MaxAgeReason(maxAge)), nil
	}
	if recs[1] != nil {
		code, reason := recs[1].LeaseDenial()
		return s.recheckDeny(v, snap, s.clock(), code, reason), nil
	}
	return nil, nil
}

// recheckDeny is the policy-stage deny of a request that failed a recheck;
// it carries what a Cedar deny carries, with no policy ids (none ran).
func (s *Service) recheckDeny(v schemas.Verified, snap *snapshot, at time.Time, code schemas.Code, reason string) *schemas.Decision {
	p := v.Principal
	return &schemas.Decision{
		RequestID:        v.RequestID,
		Action:           v.Request.Action,
		Resource:         v.Request.Resource,
		Context:          v.Request.Context,
		Principal:        &p,
		Decision:         schemas.Deny,
		Code:             code,
		Reason:           reason,
		Stage:            schemas.StagePolicy,
		PolicyVersion:    snap.eval.Set().Version(),
		SessionKey:       v.SessionKey,
		TokenFingerprint: v.TokenFingerprint,
		Timings:          engine.Timings(v, at),
	}
}
