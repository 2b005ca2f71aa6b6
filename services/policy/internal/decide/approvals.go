package decide

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/policy/engine"
)

// MaxApprovalRequests bounds the approval requests held in memory. Past it
// new ones are not held (logged): their requester's retry finds none and is
// denied, which only denies more.
const MaxApprovalRequests = 100_000

// Notifier is told of every approval request lifecycle event this replica
// publishes (a webhook per team, notify.Webhooks). Notify must not block.
type Notifier interface {
	Notify(ev schemas.ApprovalEvent)
}

// requestIndex holds the approval requests of the bucket: by id, and the
// newest one per requester and digest, which is what a decision looks up.
type requestIndex struct {
	mu     sync.RWMutex
	byID   map[string]schemas.ApprovalRequest
	newest map[string]string // requester \x00 digest → id
}

func newRequestIndex() *requestIndex {
	return &requestIndex{byID: map[string]schemas.ApprovalRequest{}, newest: map[string]string{}}
}

func requestKey(requester, digest string) string { return requester + "\x00" + digest }

func (x *requestIndex) lookup(requester, digest string) (schemas.ApprovalRequest, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	a, ok := x.byID[x.newest[requestKey(requester, digest)]]
	return a, ok
}

func (x *requestIndex) put(a schemas.ApprovalRequest) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	if _, ok := x.byID[a.ID]; !ok && len(x.byID) >= MaxApprovalRequests {
		return false
	}
	x.byID[a.ID] = a
	k := requestKey(a.RequesterID, a.Digest)
	if cur, ok := x.byID[x.newest[k]]; !ok || cur.ID == a.ID || !a.CreatedAt.Before(cur.CreatedAt) {
		x.newest[k] = a.ID
	}
	return true
}

func (x *requestIndex) remove(id string) {
	x.mu.Lock()
	defer x.mu.Unlock()
	a, ok := x.byID[id]
	if !ok {
		return
	}
	delete(x.byID, id)
	k := requestKey(a.RequesterID, a.Digest)
	if x.newest[k] != id {
		return
	}
	delete(x.newest, k)
	// Bounded by the entries held; a removal is rare (the bucket's max age).
	var best *schemas.ApprovalRequest
	for _, o := range x.byID {
		if o.RequesterID == a.RequesterID && o.Digest == a.Digest && (best == nil || o.CreatedAt.After(best.CreatedAt)) {
			best = &o
		}
	}
	if best != nil {
		x.newest[k] = best.ID
	}
}

// usedBy returns requester's approval request that request requestID
// used. It scans every request held (at most MaxApprovalRequests): only a
// push of the set already active asks, which is rare.
func (x *requestIndex) usedBy(requester, requestID string, verifiedAt time.Time) (schemas.ApprovalRequest, bool) {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, a := range x.byID {
		if a.RequesterID == requester && a.UsedByDelivery(requestID, verifiedAt) {
			return a, true
		}
	}
	return schemas.ApprovalRequest{}, false
}

// expiredLive returns the ids of requests still pending or approved whose
// ExpiresAt passed, at most limit of them.
func (x *requestIndex) expiredLive(now time.Time, limit int) []string {
	x.mu.RLock()
	defer x.mu.RUnlock()
	var ids []string
	for id, a := range x.byID {
		if len(ids) >= limit {
			break
		}
		if (a.Status == schemas.StatusPending || a.Status == schemas.StatusApproved) && !now.Before(a.ExpiresAt) {
			ids = append(ids, id)
		}
	}
	return ids
}

// DefaultExpirySweep is how often a replica marks lapsed approval requests
// expired (and announces it), when nobody retried or reviewed them.
const DefaultExpirySweep = time.Minute

// maxExpiredPerSweep bounds the work of one sweep.
const maxExpiredPerSweep = 1000

// sweepExpired marks lapsed live requests expired until ctx ends. Replicas
// all sweep: the compare-and-set lets one of them win each request, and
// the event id makes its expired event one.
func (s *Service) sweepExpired(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for _, id := range s.state.requests.expiredLive(s.clock(), maxExpiredPerSweep) {
			a, rev, found, err := s.getRequest(ctx, id)
			if err != nil || !found || a.Status != schemas.StatusPending && a.Status != schemas.StatusApproved || s.clock().Before(a.ExpiresAt) {
				continue
			}
			if _, err := s.expire(ctx, a, rev, ""); err != nil && ctx.Err() == nil {
				s.log.Debug().Err(err).Str("approval_id", id).Msg("approval request not expired by this replica")
			}
		}
	}
}

// watchRequests keeps the in-memory approval requests equal to the bucket.
func (s *Service) watchRequests(ctx context.Context) error {
	w, err := s.kv.requests.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch approval requests: %w", err)
	}
	return follow(ctx, w, "approval request", func() {}, func(e jetstream.KeyValueEntry, _ bool) {
		defer s.state.requestsSeen.advance(e.Revision())
		if e.Operation() != jetstream.KeyValuePut {
			s.state.requests.remove(e.Key())
			return
		}
		var a schemas.ApprovalRequest
		if err := json.Unmarshal(e.Value(), &a); err != nil || a.ID != e.Key() || !s.state.requests.put(a) {
			s.log.Error().Err(err).Str("key", e.Key()).Msg("approval request ignored")
		}
	})
}

// getRequest reads an approval request and its revision from the bucket:
// every change is a compare-and-set on that revision.
func (s *Service) getRequest(ctx context.Context, id string) (schemas.ApprovalRequest, uint64, bool, error) {
	e, err := s.kv.requests.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return schemas.ApprovalRequest{}, 0, false, nil
	}
	if err != nil {
		return schemas.ApprovalRequest{}, 0, false, fmt.Errorf("read approval request %s: %w", id, err)
	}
	var a schemas.ApprovalRequest
	if err := json.Unmarshal(e.Value(), &a); err != nil {
		return schemas.ApprovalRequest{}, 0, false, runtimePermanent(fmt.Errorf("decode approval request %s: %w", id, err))
	}
	return a, e.Revision(), true, nil
}

// putRequest writes a over revision rev (0: create) and waits until this
// replica's watch applied it. A conflict is returned: the message is
// redelivered and decided again against the newer value.
func (s *Service) putRequest(ctx context.Context, a schemas.ApprovalRequest, rev uint64) error {
	b, err := json.Marshal(a)
	if err != nil {
		return runtimePermanent(err)
	}
	var n uint64
	if rev == 0 {
		n, err = s.kv.requests.Create(ctx, a.ID, b)
	} else {
		n, err = s.kv.requests.Update(ctx, a.ID, b, rev)
	}
	if err != nil {
		return fmt.Errorf("write approval request %s over revision %d: %w", a.ID, rev, err)
	}
	if !s.state.requestsSeen.wait(ctx, n) {
		s.log.Warn().Str("approval_id", a.ID).Uint64("revision", n).Msg("approval request written, not yet seen by this replica; answering anyway")
	}
	return nil
}

// approvalEvent publishes one lifecycle event of a and hands it to the
// notifier. Its id derives from the request id and the event (and the
// reviewer, for a grant), so a redelivery publishes it once; a re-publish
// (the change was already in the bucket) is not notified again.
func (s *Service) approvalEvent(ctx context.Context, a schemas.ApprovalRequest, event, requestID, reviewer string, teams []string) error {
	return s.approvalEventNotify(ctx, a, event, requestID, reviewer, teams, true)
}

func (s *Service) approvalEventNotify(ctx context.Context, a schemas.ApprovalRequest, event, requestID, reviewer string, teams []string, notify bool) error {
	ev := a.EventOf(event, requestID, reviewer, teams, s.clock())
	base := a.ID
	if event == schemas.ApprovalGranted || event == schemas.ApprovalRejected {
		base += "/" + reviewer // one per reviewer: @rejections may need several
	}
	if err := s.publishEvent(ctx, s.topo.Subjects.Governance(schemas.KindApproval, event),
		schemas.DerivedID(base, "approval."+event), schemas.TypeOfApprovalEvent(event), ev); err != nil {
		return fmt.Errorf("approval %s event of %s: %w", event, a.ID, err)
	}
	s.log.Info().Str("approval_id", a.ID).Str("event", event).Str("status", a.Status).Str("requester_id", a.RequesterID).
		Str("reviewer_id", reviewer).Str("request_id", requestID).Msg("approval request " + event)
	if notify && s.notify != nil {
		s.notify.Notify(ev)
	}
	return nil
}

// reject records a reviewer's rejection of a. The request ends, rejected,
// once MaxRejections distinct reviewers rejected it (the first, by
// default); until then it stays open, the rejection is an event of its
// own, and a grant the reviewer gave earlier no longer counts.
func (s *Service) reject(ctx context.Context, d *schemas.Decision, a schemas.ApprovalRequest, rev uint64, v schemas.Verified, teams []string, now time.Time) error {
	reviewer := v.Principal.ID
	need := max(a.MaxRejections, 1)
	if slices.ContainsFunc(a.Rejections, func(g schemas.ApprovalGrant) bool { return g.ReviewerID == reviewer }) {
		// Its own redelivery, or the same reviewer again: counted once.
		d.Reason += fmt.Sprintf("; %s already rejected approval request %s (%d of %d rejections)", reviewer, a.ID, len(a.Rejections), need)
		return s.approvalEventNotify(ctx, a, schemas.ApprovalRejected, v.RequestID, reviewer, teams, false)
	}
	a.Rejections = append(a.Rejections, schemas.ApprovalGrant{ReviewerID: reviewer, Teams: teams, RequestID: v.RequestID, At: now})
	a.Grants = slices.DeleteFunc(a.Grants, func(g schemas.ApprovalGrant) bool { return g.ReviewerID == reviewer })
	a.UpdatedAt = now
	if len(a.Rejections) >= need {
		a.Status, a.RejectedBy = schemas.StatusRejected, reviewer
		a.Reason = "rejected by " + reviewer
		d.Reason += "; rejected approval request " + a.ID
	} else {
		if a.Status == schemas.StatusApproved && !a.Quorate() {
			a.Status = schemas.StatusPending // the withdrawn grant was part of the quorum
		}
		d.Reason += fmt.Sprintf("; rejection %d of the %d that end approval request %s", len(a.Rejections), need, a.ID)
	}
	if err := s.putRequest(ctx, a, rev); err != nil {
		return err
	}
	return s.approvalEvent(ctx, a, schemas.ApprovalRejected, v.RequestID, reviewer, teams)
}

// expire marks a live request whose ExpiresAt passed as expired.
func (s *Service) expire(ctx context.Context, a schemas.ApprovalRequest, rev uint64, requestID string) (schemas.ApprovalRequest, error) {
	a.Status, a.UpdatedAt = schemas.StatusExpired, s.clock().UTC()
	a.Reason = "expired at " + a.ExpiresAt.UTC().Format(time.RFC3339) + " before it was " + map[bool]string{true: "used", false: "approved"}[a.Quorate()]
	if err := s.putRequest(ctx, a, rev); err != nil {
		return a, err
	}
	return a, s.approvalEvent(ctx, a, schemas.ApprovalExpired, requestID, "", nil)
}

// requireApproval completes an approval_required deny: it names the
// requester's pending approval request for this exact request, or opens a
// new one, and says why an earlier one does not count (used, rejected,
// expired). A deny for want of a use left becomes approval_used.
func (s *Service) requireApproval(ctx context.Context, v schemas.Verified, d *schemas.Decision, res engine.Result) error {
	now := s.clock().UTC()
	var why string
	if res.Request != nil {
		prev, rev, found, err := s.getRequest(ctx, res.Request.ID)
		if err != nil {
			return err
		}
		if found {
			if prev.Live(now) && prev.Status == schemas.StatusPending {
				d.ApprovalID = prev.ID
				d.Reason += fmt.Sprintf("; approval request %s awaits approval (%s) until %s", prev.ID, prev.Progress(), prev.ExpiresAt.Format(time.RFC3339))
				return nil
			}
			if (prev.Status == schemas.StatusPending || prev.Status == schemas.StatusApproved) && !now.Before(prev.ExpiresAt) {
				if prev, err = s.expire(ctx, prev, rev, v.RequestID); err != nil {
					return err
				}
			}
			switch {
			case prev.Status == schemas.StatusUsed || prev.Status == schemas.StatusApproved && prev.Uses >= prev.MaxUses:
				d.Code = schemas.CodeApprovalUsed
				why = fmt.Sprintf("approval request %s was already used (%d of %d uses)", prev.ID, prev.Uses, prev.MaxUses)
			case prev.Status == schemas.StatusRejected:
				why = fmt.Sprintf("approval request %s was rejected by %s", prev.ID, prev.RejectedBy)
			case prev.Status == schemas.StatusExpired:
				why = fmt.Sprintf("approval request %s %s", prev.ID, prev.Reason)
			}
		}
	}
	id := schemas.ApprovalRequestID(v.Principal.ID, v.RequestID, res.RequestDigest)
	a, _, found, err := s.getRequest(ctx, id)
	if err != nil {
		return err
	}
	created := !found
	if !found {
		reqCtx, err := schemas.CanonicalContext(v.Request.Context)
		if err != nil {
			return runtimePermanent(err)
		}
		a = schemas.ApprovalRequest{
			ID: id, Status: schemas.StatusPending, RequesterID: v.Principal.ID, Digest: res.RequestDigest,
			Action: v.Request.Action, Resource: v.Request.Resource, Context: reqCtx, PolicyVersion: d.PolicyVersion,
			Requirements: res.Need, MaxUses: max(res.MaxUses, 1), MaxRejections: max(res.MaxRejections, 1), RequestID: v.RequestID,
			CreatedAt: now, UpdatedAt: now, ExpiresAt: now.Add(s.ttl),
		}
		if err := s.putRequest(ctx, a, 0); errors.Is(err, jetstream.ErrKeyExists) {
			created = false
		} else if err != nil {
			return err
		}
	}
	// Published on a redelivery too: its id makes it a duplicate.
	if err := s.approvalEventNotify(ctx, a, schemas.ApprovalRequested, v.RequestID, "", nil, created); err != nil {
		return err
	}
	d.ApprovalID = id
	if why != "" {
		d.Reason = why + "; " + d.Reason
	}
	d.Reason += fmt.Sprintf("; approval request %s opened (%s) until %s: reviewers run `aigov approvals approve %s`, then retry the same request",
		id, a.Progress(), a.ExpiresAt.Format(time.RFC3339), id)
	return nil
}

// useApproval spends one use of the approved request that allowed d, with
// compare-and-set on its revision, so across replicas an approval of N
// uses allows N requests. A request that lost the race to the last use is
// denied approval_used. A redelivery of a request that already used it is
// allowed again without spending another use.
func (s *Service) useApproval(ctx context.Context, v schemas.Verified, d *schemas.Decision, res engine.Result) error {
	a, rev, found, err := s.getRequest(ctx, res.Request.ID)
	if err != nil {
		return err
	}
	now := s.clock().UTC()
	if !found || a.RequesterID != v.Principal.ID || a.Digest != res.RequestDigest {
		d.Decision, d.Code, d.Lease = schemas.Deny, schemas.CodeApprovalRequired, nil
		d.Reason = "approval request " + res.Request.ID + " is gone; retry the request to open a new one"
		return nil
	}
	if !a.UsedByDelivery(v.RequestID, v.VerifiedAt) {
		if a.Status == schemas.StatusApproved && !now.Before(a.ExpiresAt) {
			if _, err := s.expire(ctx, a, rev, v.RequestID); err != nil {
				return err
			}
			d.Decision, d.Code, d.Lease = schemas.Deny, schemas.CodeApprovalRequired, nil
			d.Reason = fmt.Sprintf("approval request %s expired at %s; retry the request to open a new one", a.ID, a.ExpiresAt.Format(time.RFC3339))
			return nil
		}
		if a.Status != schemas.StatusApproved || a.Uses >= a.MaxUses {
			d.Decision, d.Code, d.Lease = schemas.Deny, schemas.CodeApprovalUsed, nil
			d.Reason = fmt.Sprintf("approval request %s was already used (%d of %d uses); retry the request to open a new one", a.ID, a.Uses, a.MaxUses)
			return nil
		}
		a.Uses++
		a.UsedBy, a.UsedAt = append(a.UsedBy, v.RequestID), append(a.UsedAt, v.VerifiedAt)
		a.UpdatedAt = now
		if a.Uses >= a.MaxUses {
			a.Status = schemas.StatusUsed
		}
		if err := s.putRequest(ctx, a, rev); err != nil {
			return err
		}
	}
	return s.publishUse(ctx, v, d, a)
}

// publishUse records that v used approval request a (already written to
// the bucket): d names it, and aigov.approval.used is published under an
// id derived from the request, so a redelivery publishes it once.
func (s *Service) publishUse(ctx context.Context, v schemas.Verified, d *schemas.Decision, a schemas.ApprovalRequest) error {
	use := schemas.ApprovalUse{
		ApprovalID: a.ID, RequestID: v.RequestID, Digest: a.Digest, Action: d.Action, Resource: d.Resource,
		PrincipalID: v.Principal.ID, Teams: a.Teams(), PolicyIDs: d.PolicyIDs, PolicyVersion: d.PolicyVersion,
		Uses: a.Uses, MaxUses: a.MaxUses, At: d.Timings.DecidedAt,
	}
	for _, g := range a.Grants {
		use.Approvers = append(use.Approvers, g.ReviewerID)
	}
	slices.Sort(use.Approvers)
	d.ApprovalID = a.ID
	d.Reason += fmt.Sprintf("; used approval request %s (use %d of %d)", a.ID, slices.Index(a.UsedBy, v.RequestID)+1, a.MaxUses)
	if err := s.publishEvent(ctx, s.topo.Subjects.Governance(schemas.KindApproval, schemas.ApprovalUsed),
		schemas.DerivedID(v.RequestID, "approval.used"), schemas.TypeApprovalUsed, use); err != nil {
		return err
	}
	s.log.Info().Str("approval_id", a.ID).Str("request_id", v.RequestID).Str("requester_id", a.RequesterID).
		Int("uses", a.Uses).Int("max_uses", a.MaxUses).Msg("approval request used")
	return nil
}

// review carries out an allowed approval.grant naming an approval request
// in context.approval_id: Cedar allowed this reviewer to approve this
// action on this resource; review checks the rest. The grant must review
// exactly the request's action, resource and context; the reviewer must not
// be the requester and must belong to a required team; the request must be
// pending (or approved: a further grant adds nothing) and unexpired. A
// reject (context.approval_verdict) by such a reviewer ends it, or counts
// towards the @rejections the policy states.
func (s *Service) review(ctx context.Context, v schemas.Verified, d *schemas.Decision) error {
	deny := func(code schemas.Code, reason string) error {
		d.Decision, d.Code, d.Reason, d.Lease = schemas.Deny, code, reason, nil
		return nil
	}
	id, _ := v.Request.Context[schemas.ContextApprovalID].(string)
	verdict, _ := v.Request.Context[schemas.ContextApprovalVerdict].(string)
	if verdict == "" {
		verdict = schemas.VerdictApprove
	}
	if verdict != schemas.VerdictApprove && verdict != schemas.VerdictReject {
		return deny(schemas.CodeMalformedRequest, fmt.Sprintf("context.approval_verdict must be %q or %q", schemas.VerdictApprove, schemas.VerdictReject))
	}
	a, rev, found, err := s.getRequest(ctx, id)
	if err != nil {
		return err
	}
	if !found {
		return deny(schemas.CodeMalformedRequest, "no approval request "+id)
	}
	d.ApprovalID = id
	action, _ := v.Request.Context[schemas.ContextApprovedAction].(string)
	if action != a.Action || v.Request.Resource != a.Resource {
		return deny(schemas.CodeMalformedRequest, fmt.Sprintf("approval request %s is for %s on %s, not %s on %s", id, a.Action, a.Resource, action, v.Request.Resource))
	}
	if same, err := a.SameReview(v.Request.Context); err != nil || !same {
		return deny(schemas.CodeMalformedRequest, fmt.Sprintf("the grant's context is not approval request %s's context: a reviewer approves exactly what was asked (aigov approvals approve sends it)", id))
	}
	reviewer := v.Principal.ID
	if reviewer == a.RequesterID {
		return deny(schemas.CodePolicyDenied, fmt.Sprintf("self-approval refused: %s opened approval request %s", reviewer, id))
	}
	now := s.clock().UTC()
	if (a.Status == schemas.StatusPending || a.Status == schemas.StatusApproved) && !now.Before(a.ExpiresAt) {
		if _, err := s.expire(ctx, a, rev, v.RequestID); err != nil {
			return err
		}
		return deny(schemas.CodePolicyDenied, fmt.Sprintf("approval request %s expired at %s", id, a.ExpiresAt.Format(time.RFC3339)))
	}
	if a.Status != schemas.StatusPending && a.Status != schemas.StatusApproved {
		return deny(schemas.CodePolicyDenied, fmt.Sprintf("approval request %s is %s; there is nothing left to review", id, a.Status))
	}
	var teams []string
	for _, t := range a.Teams() {
		if slices.Contains(v.Principal.Groups, t) {
			teams = append(teams, t)
		}
	}
	if len(teams) == 0 {
		return deny(schemas.CodePolicyDenied, fmt.Sprintf("%s is in none of the teams that may approve %s (%s)", reviewer, id, strings.Join(a.Teams(), ", ")))
	}
	if verdict == schemas.VerdictReject {
		return s.reject(ctx, d, a, rev, v, teams, now)
	}
	if slices.ContainsFunc(a.Rejections, func(g schemas.ApprovalGrant) bool { return g.ReviewerID == reviewer }) {
		return deny(schemas.CodePolicyDenied, fmt.Sprintf("%s rejected approval request %s; a reviewer's rejection stands", reviewer, id))
	}
	if slices.ContainsFunc(a.Grants, func(g schemas.ApprovalGrant) bool { return g.ReviewerID == reviewer }) {
		// Its own redelivery, or a second grant by the same reviewer:
		// counted once. The events are re-published (de-duplicated).
		d.Reason += fmt.Sprintf("; %s already granted approval request %s (%s)", reviewer, id, a.Progress())
		if err := s.approvalEventNotify(ctx, a, schemas.ApprovalGranted, v.RequestID, reviewer, teams, false); err != nil {
			return err
		}
		if a.Quorate() {
			return s.approvalEventNotify(ctx, a, schemas.ApprovalApproved, v.RequestID, reviewer, teams, false)
		}
		return nil
	}
	if a.Status == schemas.StatusApproved {
		d.Reason += fmt.Sprintf("; approval request %s is already approved (%s)", id, a.Progress())
		return nil
	}
	a.Grants = append(a.Grants, schemas.ApprovalGrant{ReviewerID: reviewer, Teams: teams, RequestID: v.RequestID, At: now})
	a.UpdatedAt = now
	approved := a.Quorate()
	if approved {
		a.Status = schemas.StatusApproved
	}
	if err := s.putRequest(ctx, a, rev); err != nil {
		return err
	}
	d.Reason += fmt.Sprintf("; granted approval request %s (%s)", id, a.Progress())
	if err := s.approvalEvent(ctx, a, schemas.ApprovalGranted, v.RequestID, reviewer, teams); err != nil {
		return err
	}
	if !approved {
		return nil
	}
	d.Reason += fmt.Sprintf(": approved, %s's retry of the same request is allowed %d time(s) until %s", a.RequesterID, a.MaxUses, a.ExpiresAt.Format(time.RFC3339))
	return s.approvalEvent(ctx, a, schemas.ApprovalApproved, v.RequestID, reviewer, teams)
}
