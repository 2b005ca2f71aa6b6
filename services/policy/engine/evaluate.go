package decide

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/cedar-policy/cedar-go"

	"github.com/aigov/aigov/schemas"
)

// Cedar entity types aigov builds itself; every other type (Model, Dataset,
// Tool...) comes from the trusted entity store.
const (
	TypeUser     cedar.EntityType = "User"
	TypeWorkload cedar.EntityType = "Workload"
	TypeGroup    cedar.EntityType = "Group"
	TypeAction   cedar.EntityType = "Action"
)

// Evaluator decides verified requests against one policy set. It is safe
// for concurrent use.
type Evaluator struct {
	set   *Set
	clock func() time.Time
}

// NewEvaluator decides with set; clock defaults to time.Now and exists so
// tests can fix session ages.
func NewEvaluator(set *Set, clock func() time.Time) (*Evaluator, error) {
	if set == nil {
		return nil, errors.New("decide: nil policy set")
	}
	if clock == nil {
		clock = time.Now
	}
	return &Evaluator{set: set, clock: clock}, nil
}

// Set is the policy set the evaluator decides with.
func (e *Evaluator) Set() *Set { return e.set }

// Decide turns a verified request into a decision. It never fails: input
// it cannot decide on becomes a deny with a code.
//
// PolicyIDs are the policies that determined the outcome: the permits for
// an allow, the matching forbids for a policy_denied (none when nothing
// permitted), and the policies that failed to evaluate for a policy_error.
func (e *Evaluator) Decide(v schemas.Verified) schemas.Decision {
	d := e.decide(v, e.clock())
	d.Timings = timings(v, e.clock())
	return d
}

func (e *Evaluator) decide(v schemas.Verified, now time.Time) schemas.Decision {
	p := v.Principal
	d := schemas.Decision{
		RequestID:        v.RequestID,
		Action:           v.Request.Action,
		Resource:         v.Request.Resource,
		Context:          v.Request.Context,
		Principal:        &p,
		Decision:         schemas.Deny,
		Stage:            schemas.StagePolicy,
		PolicyVersion:    e.set.version,
		SessionKey:       v.SessionKey,
		TokenFingerprint: v.TokenFingerprint,
	}
	req, entities, err := e.request(v, now)
	switch {
	case errors.Is(err, errUnknownResource):
		d.Code, d.Reason = schemas.CodeUnknownResource, err.Error()
		return d
	case err != nil:
		d.Code, d.Reason = schemas.CodeMalformedRequest, err.Error()
		return d
	}

	decision, diag := cedar.Authorize(e.set.policies, entities, req)
	switch {
	case len(diag.Errors) > 0:
		// Cedar skips a policy that errors, so an erroring forbid would not
		// deny; any error must.
		ids := make([]string, 0, len(diag.Errors))
		msgs := make([]string, 0, len(diag.Errors))
		for _, de := range diag.Errors {
			ids = append(ids, string(de.PolicyID))
			msgs = append(msgs, fmt.Sprintf("%s (%s:%d): %s", de.PolicyID, de.Position.Filename, de.Position.Line, de.Message))
		}
		slices.Sort(msgs)
		d.Code, d.PolicyIDs, d.PolicyErrors = schemas.CodePolicyError, sortedUnique(ids), msgs
		d.Reason = fmt.Sprintf("%d policy evaluation error(s); any evaluation error denies", len(msgs))
	case decision == cedar.Allow:
		d.Decision, d.PolicyIDs = schemas.Allow, reasonIDs(diag)
		d.Reason = "permitted by " + strings.Join(d.PolicyIDs, ", ")
	default:
		d.Code, d.PolicyIDs = schemas.CodePolicyDenied, reasonIDs(diag)
		if len(d.PolicyIDs) > 0 {
			d.Reason = "forbidden by " + strings.Join(d.PolicyIDs, ", ")
		} else {
			d.Reason = fmt.Sprintf("no policy permits %s on %s", v.Request.Action, v.Request.Resource)
		}
	}
	return d
}

var errUnknownResource = errors.New("resource is not in the trusted entity store")

// request builds the Cedar request and the entities it needs: the
// principal (from the verified token, never the store), its groups, the
// action and the resource with their stored ancestors.
func (e *Evaluator) request(v schemas.Verified, now time.Time) (cedar.Request, cedar.EntityMap, error) {
	r, p := v.Request, v.Principal
	if err := r.Validate(); err != nil {
		return cedar.Request{}, nil, fmt.Errorf("request: %w", err)
	}
	ptype := TypeUser
	switch p.Type {
	case "", schemas.PrincipalUser:
	case schemas.PrincipalWorkload:
		ptype = TypeWorkload
	default:
		return cedar.Request{}, nil, fmt.Errorf("principal type %q is neither %s nor %s", p.Type, schemas.PrincipalUser, schemas.PrincipalWorkload)
	}
	if p.ID == "" {
		return cedar.Request{}, nil, errors.New("principal has no id")
	}

	resource := cedar.NewEntityUID(cedar.EntityType(r.Resource.Type), cedar.String(r.Resource.ID))
	if _, ok := e.set.entities[resource]; !ok {
		return cedar.Request{}, nil, fmt.Errorf("%s: %w", r.Resource, errUnknownResource)
	}
	action := cedar.NewEntityUID(TypeAction, cedar.String(r.Action))
	principal := cedar.NewEntityUID(ptype, cedar.String(p.ID))

	entities := make(cedar.EntityMap, 4+len(p.Groups))
	e.set.addStored(entities, resource)
	e.set.addStored(entities, action)
	groups := make([]cedar.EntityUID, 0, len(p.Groups))
	for _, g := range p.Groups {
		uid := cedar.NewEntityUID(TypeGroup, cedar.String(g))
		groups = append(groups, uid)
		if !e.set.addStored(entities, uid) {
			if _, ok := entities[uid]; !ok {
				entities[uid] = cedar.Entity{UID: uid}
			}
		}
	}
	// The principal goes in last: its identity and groups come from the
	// token, whatever the store may say about the same uid.
	entities[principal] = cedar.Entity{
		UID:     principal,
		Parents: cedar.NewEntityUIDSet(groups...),
		Attributes: cedar.NewRecord(cedar.RecordMap{
			"email":   cedar.String(p.Email),
			"subject": cedar.String(p.Subject),
			"issuer":  cedar.String(p.Issuer),
			"name":    cedar.String(p.Name),
		}),
	}
	return cedar.Request{
		Principal: principal,
		Action:    action,
		Resource:  resource,
		Context:   contextRecord(r.Context, p, now),
	}, entities, nil
}

func reasonIDs(diag cedar.Diagnostic) []string {
	ids := make([]string, 0, len(diag.Reasons))
	for _, r := range diag.Reasons {
		ids = append(ids, string(r.PolicyID))
	}
	return sortedUnique(ids)
}

func sortedUnique(s []string) []string {
	slices.Sort(s)
	return slices.Compact(s)
}

// timings derives the micros from the timestamps, clamped at zero so that
// clock skew between hosts cannot produce negative durations.
func timings(v schemas.Verified, decidedAt time.Time) schemas.Timings {
	verifiedAt := v.VerifiedAt
	micros := func(from, to time.Time) int64 {
		if from.IsZero() {
			return 0
		}
		return max(to.Sub(from).Microseconds(), 0)
	}
	return schemas.Timings{
		ReceivedAt:   v.ReceivedAt,
		VerifiedAt:   &verifiedAt,
		DecidedAt:    decidedAt.UTC(),
		AuthnMicros:  micros(v.ReceivedAt, verifiedAt),
		PolicyMicros: micros(verifiedAt, decidedAt),
		TotalMicros:  micros(v.ReceivedAt, decidedAt),
	}
}
