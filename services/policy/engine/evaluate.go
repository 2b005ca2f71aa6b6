package engine

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

// Approvals returns the unexpired approvals of a request digest. The
// evaluator drops those of the requester and counts each approver once.
type Approvals func(digest string) []schemas.Approval

// Requests returns the newest approval request of requester for the
// request whose RequestDigest is digest, whatever its status.
type Requests func(requester, digest string) (schemas.ApprovalRequest, bool)

// Evaluator decides verified requests against one policy set and one
// snapshot of the entity store. It is immutable and safe for concurrent
// use; a new set or store makes a new Evaluator.
type Evaluator struct {
	set       *Set
	store     *Store
	approvals Approvals
	requests  Requests
	pending   func(string, schemas.Resource) bool
	clock     func() time.Time
	reference bool
}

// Options are an evaluator's optional inputs.
type Options struct {
	// Approvals looks approvals up by digest; nil means none exist.
	Approvals Approvals
	// Pending reports whether any approval may exist for action on r; when
	// it says no, the request has no approvals and their digest is not
	// computed. nil means maybe.
	Pending func(action string, r schemas.Resource) bool
	// Requests looks approval requests up for actions an @approval
	// policy covers (Set.Gates); nil means none exist.
	Requests Requests
	// Clock defaults to time.Now; tests fix it to pin session ages.
	Clock func() time.Time
	// Reference evaluates every policy of the set with Cedar over a map of
	// the request's entities, without the per-action index and the scope
	// filter: the plain path the fast one is tested against.
	Reference bool
}

// NewEvaluator decides with set and the resources in store.
func NewEvaluator(set *Set, store *Store, opts Options) (*Evaluator, error) {
	switch {
	case set == nil:
		return nil, errors.New("engine: nil policy set")
	case store == nil:
		return nil, errors.New("engine: nil entity store")
	}
	if opts.Clock == nil {
		opts.Clock = time.Now
	}
	return &Evaluator{set: set, store: store, approvals: opts.Approvals, requests: opts.Requests, pending: opts.Pending, clock: opts.Clock, reference: opts.Reference}, nil
}

// Set is the policy set the evaluator decides with.
func (e *Evaluator) Set() *Set { return e.set }

// Store is the entity store snapshot the evaluator decides with.
func (e *Evaluator) Store() *Store { return e.store }

// Result is a decision with what the service needs to record about it.
type Result struct {
	Decision schemas.Decision
	// Digest is the request's ApprovalDigest; empty when it was not computed.
	Digest string
	// Approvals are the approvals that were counted (one per approver,
	// never the requester's), sorted by approver.
	Approvals []schemas.Approval

	// RequestDigest is schemas.RequestDigest of the request, computed for
	// actions an @approval policy covers only.
	RequestDigest string
	// Request is the requester's newest approval request for that digest,
	// whatever its status; Granted reports that it was approved, live and
	// with a use left, so its teams were in context.approvals.
	Request *schemas.ApprovalRequest
	Granted bool
	// Need, for an approval_required deny, is what the @approval policies
	// that denied require, one requirement per team (the largest quorum),
	// and MaxUses the fewest uses any of them allows.
	Need    []schemas.ApprovalRequirement
	MaxUses int
	// MaxRejections is how many reviewers' rejections end the request:
	// the fewest any of the policies states (@rejections, default 1).
	MaxRejections int
}

// Decide turns a verified request into a decision. It never fails: input
// it cannot decide on becomes a deny with a code.
//
// PolicyIDs are the policies that determined the outcome: the permits for
// an allow, the matching forbids for a policy_denied (none when nothing
// permitted), and the policies that failed to evaluate for a policy_error.
func (e *Evaluator) Decide(v schemas.Verified) schemas.Decision {
	return e.Evaluate(v).Decision
}

// Evaluate is Decide with the approvals that were counted.
func (e *Evaluator) Evaluate(v schemas.Verified) Result {
	now := e.clock()
	r := e.decide(v, now)
	r.Decision.Timings = timings(v, e.clock())
	if r.Decision.Allowed() { // an allowed job.start grants a lease, which the reaper enforces (issue 6)
		r.Decision.Lease = schemas.LeaseFor(r.Decision.Action, r.Decision.RequestID, now, schemas.DefaultLeaseTTL)
	}
	return r
}

func (e *Evaluator) decide(v schemas.Verified, now time.Time) Result {
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
	req, entities, res, err := e.request(v, now)
	switch {
	case errors.Is(err, errUnknownResource):
		d.Code, d.Reason = schemas.CodeUnknownResource, err.Error()
		res.Decision = d
		return res
	case err != nil:
		d.Code, d.Reason = schemas.CodeMalformedRequest, err.Error()
		res.Decision = d
		return res
	case !e.set.DeclaresAction(v.Request.Action):
		d.Code, d.Reason = schemas.CodeUnknownAction, fmt.Sprintf("action %q is not declared in the policy set's schema", v.Request.Action)
		res.Decision = d
		return res
	}
	d.Approvals = schemas.SortedTeams(res.Approvals)
	if res.Granted {
		d.Approvals, d.ApprovalID = res.Request.Teams(), res.Request.ID
	}
	if e.reference {
		m := entities.toMap()
		outcome(&d, e.set.enforced, m, req, v.Request)
		e.needApproval(&d, &res, e.set.enforced, m, req, v, now)
		if e.set.withShadow != nil {
			d.Shadow = e.shadow(e.set.withShadow, m, req, v.Request)
		}
		res.Decision = d
		return res
	}
	// Only the policies whose scope can match are evaluated: those of the
	// request's action (unless the store puts it in an action group), and
	// of those only the ones whose principal and resource scopes hold.
	act, _ := entities.Get(req.Action)
	list := policyList{
		list: e.set.index.candidates(req.Action, act.Parents.Len() > 0),
		filter: &scopeFilter{
			principal: req.Principal, principalAncestors: entities.ancestors(req.Principal),
			resource: req.Resource, resourceAncestors: entities.ancestors(req.Resource),
		},
	}
	outcome(&d, list, entities, req, v.Request)
	e.needApproval(&d, &res, list, entities, req, v, now)
	if e.set.index.hasShadow {
		if list.anyShadow() {
			list.withShadow = true
			d.Shadow = e.shadow(list, entities, req, v.Request)
		} else {
			// No shadow policy can match: with them enforced the outcome
			// is the enforced one, so it is not evaluated twice.
			d.Shadow = &schemas.ShadowOutcome{Decision: d.Decision, PolicyIDs: slices.Clone(d.PolicyIDs), Errors: slices.Clone(d.PolicyErrors)}
		}
	}
	res.Decision = d
	return res
}

// shadow evaluates ps, the set with its @shadow policies enforced.
func (e *Evaluator) shadow(ps cedar.PolicyIterator, entities cedar.EntityGetter, req cedar.Request, r schemas.Request) *schemas.ShadowOutcome {
	var sd schemas.Decision
	outcome(&sd, ps, entities, req, r)
	out := &schemas.ShadowOutcome{Decision: sd.Decision, PolicyIDs: sd.PolicyIDs, Errors: sd.PolicyErrors}
	if sd.Decision == "" {
		out.Decision = schemas.Deny
	}
	for _, id := range sd.PolicyIDs {
		if slices.Contains(e.set.shadowIDs, id) {
			out.Matched = append(out.Matched, id)
		}
	}
	slices.Sort(out.Matched)
	return out
}

// outcome evaluates ps and fills the decision's outcome fields.
func outcome(d *schemas.Decision, ps cedar.PolicyIterator, entities cedar.EntityGetter, req cedar.Request, r schemas.Request) {
	d.Decision = schemas.Deny
	decision, diag := cedar.Authorize(ps, entities, req)
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
			d.Reason = fmt.Sprintf("no policy permits %s on %s", r.Action, r.Resource)
		}
	}
}

var errUnknownResource = errors.New("resource is not in the trusted entity store")

// request builds the Cedar request and the entities it needs: the
// principal (from the verified token, never the store), its groups, the
// action and the resource with their stored ancestors.
func (e *Evaluator) request(v schemas.Verified, now time.Time) (cedar.Request, *smallEntities, Result, error) {
	var res Result
	r, p := v.Request, v.Principal
	if err := r.Validate(); err != nil {
		return cedar.Request{}, nil, res, fmt.Errorf("request: %w", err)
	}
	ptype := TypeUser
	switch p.Type {
	case "", schemas.PrincipalUser:
	case schemas.PrincipalWorkload:
		ptype = TypeWorkload
	default:
		return cedar.Request{}, nil, res, fmt.Errorf("principal type %q is neither %s nor %s", p.Type, schemas.PrincipalUser, schemas.PrincipalWorkload)
	}
	if p.ID == "" {
		return cedar.Request{}, nil, res, errors.New("principal has no id")
	}

	resource := cedar.NewEntityUID(cedar.EntityType(r.Resource.Type), cedar.String(r.Resource.ID))
	if !e.store.Has(resource) {
		return cedar.Request{}, nil, res, fmt.Errorf("%s: %w", r.Resource, errUnknownResource)
	}
	action := cedar.NewEntityUID(TypeAction, cedar.String(r.Action))
	principal := cedar.NewEntityUID(ptype, cedar.String(p.ID))

	entities := &smallEntities{list: make([]cedar.Entity, 0, 4+len(p.Groups))}
	e.store.addStored(entities, resource)
	e.store.addStored(entities, action)
	groups := make([]cedar.EntityUID, 0, len(p.Groups))
	for _, g := range p.Groups {
		uid := cedar.NewEntityUID(TypeGroup, cedar.String(g))
		groups = append(groups, uid)
		if !e.store.addStored(entities, uid) && !entities.has(uid) {
			entities.put(cedar.Entity{UID: uid})
		}
	}
	// The principal goes in last: its identity and groups come from the
	// token, whatever the store may say about the same uid. The identity
	// provider's extra attributes become tags (principal.hasTag("x")),
	// since their names are not known to the schema.
	var tags cedar.Record
	if len(p.Attributes) > 0 {
		tm := make(cedar.RecordMap, len(p.Attributes))
		for k, val := range p.Attributes {
			tm[cedar.String(k)] = cedar.String(val)
		}
		tags = cedar.NewRecord(tm)
	}
	entities.put(cedar.Entity{
		UID:     principal,
		Parents: cedar.NewEntityUIDSet(groups...),
		Attributes: cedar.NewRecord(cedar.RecordMap{
			"email":   cedar.String(p.Email),
			"subject": cedar.String(p.Subject),
			"issuer":  cedar.String(p.Issuer),
			"name":    cedar.String(p.Name),
		}),
		Tags: tags,
	})

	var teams []string
	if e.set.Gates(r.Action) {
		// Approvals of an action an @approval policy covers come from the
		// requester's own approval request for this exact request only.
		digest, err := schemas.RequestDigest(r.Action, r.Resource, r.Context, e.set.version)
		if err != nil {
			return cedar.Request{}, nil, res, err
		}
		res.RequestDigest = digest
		if e.requests != nil {
			if ar, ok := e.requests(p.ID, digest); ok && ar.RequesterID == p.ID && ar.Digest == digest {
				res.Request = &ar
				// A redelivery of the request that used it is decided as
				// the first delivery was.
				if ar.Status == schemas.StatusApproved && ar.Uses < ar.MaxUses && now.Before(ar.ExpiresAt) || ar.UsedByDelivery(v.RequestID, v.VerifiedAt) {
					res.Granted, teams = true, ar.Teams()
				}
			}
		}
	} else if e.approvals != nil && (e.pending == nil || e.pending(r.Action, r.Resource)) {
		digest, err := schemas.ApprovalDigest(r.Action, r.Resource, r.Context)
		if err != nil {
			return cedar.Request{}, nil, res, err
		}
		res.Digest = digest
		res.Approvals = countable(e.approvals(digest), digest, p.ID, now)
		teams = schemas.SortedTeams(res.Approvals)
	}
	return cedar.Request{
		Principal: principal,
		Action:    action,
		Resource:  resource,
		Context:   contextRecord(r.Context, p, now, teams),
	}, entities, res, nil
}

// needApproval turns a policy_denied of a gated action into an
// approval_required when the request is denied only for want of approvals:
// evaluated again with every @approval team in context.approvals, it is
// allowed. What it needs is the rules of the @approval policies among the
// forbids that denied and the permits that would allow.
func (e *Evaluator) needApproval(d *schemas.Decision, res *Result, ps cedar.PolicyIterator, entities cedar.EntityGetter, req cedar.Request, v schemas.Verified, now time.Time) {
	if d.Code != schemas.CodePolicyDenied || res.RequestDigest == "" || len(e.set.rules) == 0 {
		return
	}
	teams := slices.Clone(d.Approvals)
	for _, r := range e.set.rules {
		teams = append(teams, r.Team)
	}
	slices.Sort(teams)
	hyp := req
	hyp.Context = contextRecord(v.Request.Context, v.Principal, now, slices.Compact(teams))
	var hd schemas.Decision
	outcome(&hd, ps, entities, hyp, v.Request)
	if !hd.Allowed() {
		return
	}
	byTeam := map[string]schemas.ApprovalRequirement{}
	uses, rejections := 0, 0
	for _, id := range append(slices.Clone(d.PolicyIDs), hd.PolicyIDs...) {
		r, ok := e.set.rules[id]
		if !ok {
			continue
		}
		if cur, ok := byTeam[r.Team]; !ok || r.Quorum > cur.Quorum {
			byTeam[r.Team] = schemas.ApprovalRequirement{Team: r.Team, Quorum: r.Quorum, PolicyID: id}
		}
		if uses == 0 || r.Uses < uses {
			uses = r.Uses
		}
		if rejections == 0 || r.Rejections < rejections {
			rejections = r.Rejections
		}
	}
	if len(byTeam) == 0 {
		return // approvals change the outcome, but no @approval policy says whose
	}
	need := make([]schemas.ApprovalRequirement, 0, len(byTeam))
	parts := make([]string, 0, len(byTeam))
	for _, r := range byTeam {
		need = append(need, r)
	}
	slices.SortFunc(need, func(a, b schemas.ApprovalRequirement) int { return strings.Compare(a.Team, b.Team) })
	for _, r := range need {
		parts = append(parts, fmt.Sprintf("%d of %s (%s)", r.Quorum, r.Team, r.PolicyID))
	}
	res.Need, res.MaxUses, res.MaxRejections = need, uses, rejections
	d.Code = schemas.CodeApprovalRequired
	d.Reason = "approval required from " + strings.Join(parts, ", ") + " for this exact request by this requester"
}

// countable keeps the approvals that count: of this digest, unexpired, not
// by the requester, one per approver (the earliest grant).
func countable(all []schemas.Approval, digest, requester string, now time.Time) []schemas.Approval {
	out := make([]schemas.Approval, 0, len(all))
	for _, a := range all {
		if a.Digest != digest || a.ApproverID == "" || a.ApproverID == requester || !now.Before(a.ExpiresAt) {
			continue
		}
		if i := slices.IndexFunc(out, func(b schemas.Approval) bool { return b.ApproverID == a.ApproverID }); i >= 0 {
			if a.GrantedAt.Before(out[i].GrantedAt) {
				out[i] = a
			}
			continue
		}
		out = append(out, a)
	}
	slices.SortFunc(out, func(a, b schemas.Approval) int { return strings.Compare(a.ApproverID, b.ApproverID) })
	return out
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

// Timings are the timings of a decision on v made at decidedAt, as every
// decision of the policy stage records them; for a deny the service makes
// before evaluating (a recheck).
func Timings(v schemas.Verified, decidedAt time.Time) schemas.Timings { return timings(v, decidedAt) }

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
