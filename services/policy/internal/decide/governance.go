package decide

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/cedar-policy/cedar-go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/personal"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// publishEvent stores one governance event; the id is its Nats-Msg-Id, so
// replicas and redeliveries that publish the same event store it once.
func (s *Service) publishEvent(ctx context.Context, subject, id, typ string, data any) error {
	_, err := s.pub.Publish(ctx, servicekit.Outgoing{NATSSubject: subject, ID: id, Type: typ, Time: s.clock(), Data: data})
	return err
}

// effects carries out what an allowed governance request asks for, before
// its decision is published: activating a pushed policy set, recording an
// approval, and recording that approvals were used. It may turn the
// decision into a deny (a set that does not validate). An error leaves
// the message to be redelivered, and every effect is idempotent.
func (s *Service) effects(ctx context.Context, v schemas.Verified, d *schemas.Decision, res engine.Result, snap *snapshot) error {
	spent := false
	switch v.Request.Action {
	case schemas.ActionPrivacyErase:
		return s.erase(ctx, v, d, res)
	case schemas.ActionPrivacyExport:
		// Handle wraps the key once the decision stands (exportKey).
		if why := exportRequestError(v); why != "" {
			d.Decision, d.Code, d.Reason = schemas.Deny, schemas.CodeMalformedRequest, why
			return nil
		}
	case schemas.ActionPolicyUpdate:
		// activate spends a granted approval request itself, between
		// checking the set and activating it.
		if err := s.activate(ctx, v, d, res, snap); err != nil {
			return err
		}
		spent = true
	case schemas.ActionApprovalGrant:
		review := s.grant
		if id, ok := v.Request.Context[schemas.ContextApprovalID]; ok && id != nil {
			review = s.review
		}
		if err := review(ctx, v, d); err != nil {
			return err
		}
	}
	if d.Allowed() && res.Granted && !spent {
		return s.useApproval(ctx, v, d, res)
	}
	if d.Allowed() && len(res.Approvals) > 0 {
		use := schemas.ApprovalUse{
			RequestID: v.RequestID, Digest: res.Digest, Action: d.Action, Resource: d.Resource,
			PrincipalID: v.Principal.ID, Teams: schemas.SortedTeams(res.Approvals),
			PolicyIDs: d.PolicyIDs, PolicyVersion: d.PolicyVersion, At: d.Timings.DecidedAt,
		}
		for _, a := range res.Approvals {
			use.Approvers = append(use.Approvers, a.ApproverID)
		}
		return s.publishEvent(ctx, s.topo.Subjects.Governance(schemas.KindApproval, schemas.ApprovalUsed),
			schemas.DerivedID(v.RequestID, "approval.used"), schemas.TypeApprovalUsed, use)
	}
	return nil
}

// push is a policy.update's set: the staged bundle context.policy_hash
// names, compiled; set is nil when the hash is the active set's.
type push struct {
	hash   string
	set    *engine.Set
	bundle []byte
	change schemas.PolicyChange
}

// loadPush checks a policy.update's context.policy_hash and reads and
// compiles the staged set it names. A set that cannot be activated is
// rejected: d becomes policy_invalid, policy.rejected is published, and
// ok is false.
func (s *Service) loadPush(ctx context.Context, v schemas.Verified, d *schemas.Decision, snap *snapshot) (p push, ok bool, err error) {
	p.hash, _ = v.Request.Context[schemas.ContextPolicyHash].(string)
	current := snap.eval.Set()
	p.change = schemas.PolicyChange{PolicyVersion: p.hash, PreviousVersion: current.Version(), By: v.Principal.ID, Email: v.Principal.Email, RequestID: v.RequestID, At: s.clock().UTC()}
	if !strings.HasPrefix(p.hash, "sha256:") || len(p.hash) != len("sha256:")+64 {
		return p, false, s.rejectPush(ctx, v, d, &p, "context.policy_hash must be the sha256: hash of a staged policy set")
	}
	if p.hash == current.Version() {
		return p, true, nil
	}
	entry, err := s.kv.proposals.Get(ctx, engine.HexOf(p.hash))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return p, false, s.rejectPush(ctx, v, d, &p, "no staged policy set "+p.hash+" (push it to the proposals bucket first; staged sets expire)")
	}
	if err != nil {
		return p, false, fmt.Errorf("read staged policy set %s: %w", p.hash, err)
	}
	if p.set, err = engine.CompileBundle(entry.Value()); err != nil {
		return p, false, s.rejectPush(ctx, v, d, &p, err.Error())
	}
	if p.set.Version() != p.hash {
		return p, false, s.rejectPush(ctx, v, d, &p, fmt.Sprintf("staged set hashes to %s, not %s", p.set.Version(), p.hash))
	}
	p.bundle = entry.Value()
	return p, true, nil
}

// rejectPush denies a policy.update policy_invalid and publishes
// policy.rejected; the active set is unchanged.
func (s *Service) rejectPush(ctx context.Context, v schemas.Verified, d *schemas.Decision, p *push, errs ...string) error {
	p.change.Errors = errs
	d.Decision, d.Code, d.Lease = schemas.Deny, schemas.CodePolicyInvalid, nil
	d.Reason = "policy set rejected, the active set is unchanged: " + strings.Join(errs, "; ")
	s.log.Warn().Str("request_id", v.RequestID).Str("principal_id", v.Principal.ID).Str("policy_version", p.hash).
		Strs("errors", errs).Msg("policy set rejected")
	return s.publishEvent(ctx, s.topo.Subjects.Governance(schemas.KindPolicy, schemas.PolicyRejected),
		schemas.DerivedID(v.RequestID, "policy.rejected"), schemas.TypePolicyRejected, p.change)
}

// publishChanged announces the activation of p by v.
func (s *Service) publishChanged(ctx context.Context, v schemas.Verified, d *schemas.Decision, p push, set *engine.Set) error {
	p.change.PolicyIDs, p.change.ShadowIDs = set.PolicyIDs(), set.ShadowIDs()
	d.Reason += "; activated policy set " + p.hash
	return s.publishEvent(ctx, s.topo.Subjects.Governance(schemas.KindPolicy, schemas.PolicyChanged),
		schemas.DerivedID(v.RequestID, "policy.changed"), schemas.TypePolicyChanged, p.change)
}

// activate makes the staged set named by context.policy_hash the active
// one, only if the set that allowed the push is still the active one
// (compare-and-set on the policy bucket's revision): a push decided under
// an outdated set is retried, and so re-decided, once this replica has
// caught up.
//
// A push allowed by an approval request spends its use first, and only
// then activates: a use lost to a race (or a request rejected since)
// activates nothing. So that a use is not spent on a push bound to lose
// its compare-and-set, the active set's revision is read again first.
func (s *Service) activate(ctx context.Context, v schemas.Verified, d *schemas.Decision, res engine.Result, snap *snapshot) error {
	p, ok, err := s.loadPush(ctx, v, d, snap)
	if err != nil || !ok {
		return err
	}
	if res.Granted {
		if p.set != nil {
			e, err := s.kv.policy.Get(ctx, topology.PolicyActiveKey)
			if err != nil {
				return fmt.Errorf("read the active policy set: %w", err)
			}
			if e.Revision() != snap.setRev {
				return fmt.Errorf("push %s decided under policy revision %d, now %d: decided again once in force", v.RequestID, snap.setRev, e.Revision())
			}
		}
		if err := s.useApproval(ctx, v, d, res); err != nil || !d.Allowed() {
			return err
		}
	}
	if p.set == nil {
		// Already active: a no-op push allowed without an approval
		// request (a set with no @approval on policy.update).
		p.change.PreviousVersion = ""
		return s.publishChanged(ctx, v, d, p, snap.eval.Set())
	}
	rev, err := s.kv.policy.Update(ctx, topology.PolicyActiveKey, p.bundle, snap.setRev)
	if err != nil {
		// Someone activated another set since this replica's view: retry,
		// so that the push is decided again under the set now in force.
		return fmt.Errorf("activate policy set %s over revision %d: %w", p.hash, snap.setRev, err)
	}
	if !s.state.policySeen.wait(ctx, rev) {
		s.log.Warn().Uint64("revision", rev).Msg("activated set not yet in force on this replica; answering anyway")
	}
	s.log.Info().Str("request_id", v.RequestID).Str("principal_id", v.Principal.ID).Str("policy_version", p.hash).
		Str("previous_version", p.change.PreviousVersion).Msg("policy set activated")
	return s.publishChanged(ctx, v, d, p, p.set)
}

// pushNeedsApproval completes a policy.update denied approval_required.
// It reports handled when the push must not open an approval request:
// reviewers are never asked about a set that cannot be activated (not
// staged, invalid: policy_invalid), nor about the set already active. A
// push of the active set that itself activated it, with an approval
// request, is that push redelivered and decided under the set it
// activated: it is answered as the first delivery was.
func (s *Service) pushNeedsApproval(ctx context.Context, v schemas.Verified, d *schemas.Decision, snap *snapshot) (bool, error) {
	p, ok, err := s.loadPush(ctx, v, d, snap)
	if err != nil || !ok {
		return true, err
	}
	if p.set != nil {
		return false, nil
	}
	a, used := s.state.requests.usedBy(v.Principal.ID, v.RequestID, v.VerifiedAt)
	if !used || a.Action != schemas.ActionPolicyUpdate || a.Context[schemas.ContextPolicyHash] != p.hash {
		return true, s.rejectPush(ctx, v, d, &p, "policy set "+p.hash+" is already the active set; there is nothing to activate")
	}
	ids := make([]string, 0, len(a.Requirements))
	for _, r := range a.Requirements {
		ids = append(ids, r.PolicyID)
	}
	slices.Sort(ids)
	d.Decision, d.Code, d.PolicyIDs, d.Approvals = schemas.Allow, "", slices.Compact(ids), a.Teams()
	d.Reason = "permitted by " + strings.Join(d.PolicyIDs, ", ") + " (this push, redelivered)"
	if err := s.publishUse(ctx, v, d, a); err != nil {
		return true, err
	}
	p.change.PreviousVersion = a.PolicyVersion
	return true, s.publishChanged(ctx, v, d, p, snap.eval.Set())
}

// grant records an approval.grant: the approval of the request made of
// context.approved_action on the same resource with the same digest fields,
// by this principal, for the approval TTL. Create fails when this approver
// already approved that digest: an approval counts once per approver.
func (s *Service) grant(ctx context.Context, v schemas.Verified, d *schemas.Decision) error {
	action, _ := v.Request.Context[schemas.ContextApprovedAction].(string)
	if err := (schemas.Request{Action: action, Resource: v.Request.Resource}).Validate(); err != nil {
		d.Decision, d.Code = schemas.Deny, schemas.CodeMalformedRequest
		d.Reason = "approval.grant needs context.approved_action naming a valid action: " + err.Error()
		return nil
	}
	digest, err := schemas.ApprovalDigest(action, v.Request.Resource, v.Request.Context)
	if err != nil {
		return runtimePermanent(err)
	}
	var teams []string
	for _, g := range v.Principal.Groups {
		if slices.Contains(s.teams, g) {
			teams = append(teams, g)
		}
	}
	slices.Sort(teams)
	teams = slices.Compact(teams)
	if teams == nil {
		teams = []string{}
	}
	now := s.clock().UTC()
	a := schemas.Approval{
		Digest: digest, Action: action, Resource: v.Request.Resource, ApproverID: v.Principal.ID,
		Teams: teams, RequestID: v.RequestID, GrantedAt: now, ExpiresAt: now.Add(s.ttl),
	}
	b, err := json.Marshal(a)
	if err != nil {
		return runtimePermanent(err)
	}
	key := schemas.ApprovalKey(digest, v.Principal.ID)
	rev, err := s.kv.approvals.Create(ctx, key, b, jetstream.KeyTTL(s.ttl))
	switch {
	case errors.Is(err, jetstream.ErrKeyExists):
	case err != nil:
		return fmt.Errorf("record approval %s: %w", key, err)
	case !s.state.approvalsSeen.wait(ctx, rev):
		s.log.Warn().Str("key", key).Uint64("revision", rev).Msg("approval recorded, not yet seen by this replica; answering anyway")
	}
	d.Reason += fmt.Sprintf("; approval of %s on %s recorded as %s for teams [%s] until %s",
		action, v.Request.Resource, digest, strings.Join(teams, ","), a.ExpiresAt.Format("2006-01-02T15:04:05Z"))
	return nil
}

// follow applies every entry of a KV watch until ctx ends. loaded runs
// once, after the initial values; apply is told whether an entry is one of
// them. The three watches of a replica (policy set, entities, approvals)
// share this loop.
func follow(ctx context.Context, w jetstream.KeyWatcher, what string, loaded func(), apply func(e jetstream.KeyValueEntry, initial bool)) error {
	defer killswitch.StopWatcher(w)
	initial := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case e, ok := <-w.Updates():
			if !ok {
				return fmt.Errorf("%s watcher closed", what)
			}
			if e == nil {
				if initial {
					initial = false
					loaded()
				}
				continue
			}
			apply(e, initial)
		}
	}
}

// watchPolicy keeps the replica's policy set equal to the bucket's active
// set. A stored set that does not compile is rejected (logged and
// audited) and the previous set stays in force.
func (s *Service) watchPolicy(ctx context.Context, ready chan<- struct{}) error {
	w, err := s.kv.policy.Watch(ctx, topology.PolicyActiveKey)
	if err != nil {
		return fmt.Errorf("watch policy set: %w", err)
	}
	return follow(ctx, w, "policy", func() { close(ready) }, func(e jetstream.KeyValueEntry, _ bool) {
		defer s.state.policySeen.advance(e.Revision())
		if e.Operation() != jetstream.KeyValuePut {
			s.log.Error().Uint64("revision", e.Revision()).Msg("active policy set deleted; the previous set stays in force")
			return
		}
		set, err := engine.CompileBundle(e.Value())
		if err != nil {
			s.log.Error().Err(err).Uint64("revision", e.Revision()).Msg("stored policy set rejected; the previous set stays in force")
			ch := schemas.PolicyChange{PolicyVersion: "revision-" + strconv.FormatUint(e.Revision(), 10), By: EventSource, Errors: []string{err.Error()}, At: s.clock().UTC()}
			if snap := s.state.snapshot(); snap != nil {
				ch.PreviousVersion = snap.eval.Set().Version()
			}
			if err := s.publishEvent(ctx, s.topo.Subjects.Governance(schemas.KindPolicy, schemas.PolicyRejected),
				schemas.DerivedID("policy-rev-"+strconv.FormatUint(e.Revision(), 10), "policy.rejected"), schemas.TypePolicyRejected, ch); err != nil {
				s.log.Warn().Err(err).Msg("rejection event not published")
			}
			return
		}
		s.state.setPolicy(set, e.Revision())
		s.log.Info().Str("policy_version", set.Version()).Uint64("revision", e.Revision()).
			Int("policies", len(set.PolicyIDs())).Int("shadow_policies", len(set.ShadowIDs())).Msg("policy set in force")
	})
}

// watchEntities keeps the replica's entity store equal to the bucket, and
// publishes an entity.changed event for every change after the initial
// load (its id is derived from the revision, so replicas store it once).
func (s *Service) watchEntities(ctx context.Context, ready chan<- struct{}) error {
	w, err := s.kv.entities.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch entities: %w", err)
	}
	loaded := func() {
		s.state.publishStore()
		close(ready)
	}
	return follow(ctx, w, "entity", loaded, func(e jetstream.KeyValueEntry, initial bool) {
		// A delete carries only the key, whose id part is base64: the
		// change is recorded under the entity's own id.
		typ, id, _ := strings.Cut(e.Key(), ".")
		if uid, ok := engine.ParseEntityKey(e.Key()); ok {
			typ, id = string(uid.Type), string(uid.ID)
		}
		ch := schemas.EntityChange{Op: "delete", Entity: schemas.Resource{Type: typ, ID: id}, Revision: int64(e.Revision()), At: s.clock().UTC()}
		if e.Operation() == jetstream.KeyValuePut {
			var ent cedar.Entity
			if err := json.Unmarshal(e.Value(), &ent); err != nil || engine.EntityKey(ent.UID) != e.Key() {
				s.log.Error().Err(err).Str("key", e.Key()).Msg("stored entity ignored: not a Cedar entity under its own key")
				s.state.deleteEntity(e.Key())
			} else if !s.state.putEntity(e.Key(), ent) {
				s.log.Error().Str("key", e.Key()).Int("max", MaxEntities).Msg("entity ignored: store full")
			}
			ch.Op, ch.ValueSHA256 = "put", sha256Hex(e.Value())
			ch.Entity = schemas.Resource{Type: string(ent.UID.Type), ID: string(ent.UID.ID)}
		} else {
			s.state.deleteEntity(e.Key())
		}
		if initial {
			return
		}
		s.state.publishStore()
		s.log.Info().Str("op", ch.Op).Str("entity", ch.Entity.String()).Uint64("revision", e.Revision()).Msg("entity store changed")
		if err := s.publishEvent(ctx, s.topo.Subjects.Governance(schemas.KindEntity, schemas.EntityChanged),
			schemas.DerivedID("entity-rev-"+strconv.FormatUint(e.Revision(), 10), "entity.changed"), schemas.TypeEntityChanged, ch); err != nil {
			s.log.Warn().Err(err).Msg("entity change event not published")
		}
	})
}

// watchApprovals keeps the in-memory approvals equal to the bucket; a key
// whose TTL lapsed arrives as a purge and is dropped.
func (s *Service) watchApprovals(ctx context.Context) error {
	w, err := s.kv.approvals.WatchAll(ctx)
	if err != nil {
		return fmt.Errorf("watch approvals: %w", err)
	}
	return follow(ctx, w, "approval", func() {}, func(e jetstream.KeyValueEntry, _ bool) {
		defer s.state.approvalsSeen.advance(e.Revision())
		if e.Operation() != jetstream.KeyValuePut {
			s.state.deleteApproval(e.Key())
			return
		}
		var a schemas.Approval
		if err := json.Unmarshal(e.Value(), &a); err != nil || !s.state.putApproval(e.Key(), a) {
			s.log.Error().Err(err).Str("key", e.Key()).Msg("approval ignored")
		}
	})
}

// erase carries out an allowed privacy.erase: it spends the approval that
// unlocked it (so an approval erases once), destroys the key named by
// context.subject_key_id (a purge: no revision left, in every replica of
// the bucket), and publishes the signed subject_erased governance event.
// A redelivery purges again and re-publishes the same (de-duplicated)
// event: both are idempotent.
func (s *Service) erase(ctx context.Context, v schemas.Verified, d *schemas.Decision, res engine.Result) error {
	keyID, _ := v.Request.Context[schemas.ContextSubjectKeyID].(string)
	if why := eraseRequestError(v); why != "" {
		d.Decision, d.Code, d.Reason = schemas.Deny, schemas.CodeMalformedRequest, why
		return nil
	}
	if res.Granted {
		if err := s.useApproval(ctx, v, d, res); err != nil || !d.Allowed() {
			return err
		}
	}
	if s.keys == nil {
		return errors.New("subject keys not open yet")
	}
	if err := s.keys.Store().EraseID(ctx, keyID); err != nil {
		return err
	}
	ev := schemas.SubjectErasure{
		SubjectKeyID: keyID, RequestID: v.RequestID, By: v.Principal.ID, ApprovalID: d.ApprovalID,
		Approvals: d.Approvals, PolicyIDs: d.PolicyIDs, PolicyVersion: d.PolicyVersion, At: s.clock().UTC(),
	}
	if err := s.publishEvent(ctx, s.topo.Subjects.Governance(schemas.KindPrivacy, schemas.SubjectErasedEvent),
		schemas.DerivedID(v.RequestID, "privacy.subject_erased"), schemas.TypeSubjectErased, ev); err != nil {
		return err
	}
	s.log.Info().Str("request_id", v.RequestID).Str("subject_key_id", keyID).Str("principal_id", v.Principal.ID).
		Str("approval_id", d.ApprovalID).Msg("data subject erased")
	return nil
}

// eraseRequestError says what is wrong with a privacy.erase request, or
// is empty: its key id must be the key id of the person its context
// names, so that what reviewers approve is that person's erasure.
func eraseRequestError(v schemas.Verified) string {
	keyID, _ := v.Request.Context[schemas.ContextSubjectKeyID].(string)
	iss, _ := v.Request.Context[schemas.ContextSubjectIssuer].(string)
	sub, _ := v.Request.Context[schemas.ContextSubjectSub].(string)
	switch {
	case !personal.ValidKeyID(keyID):
		return "context.subject_key_id must be a subject key id (64 lower-case hex digits: aigov privacy erase and export compute it from the issuer and subject)"
	case iss == "" || sub == "":
		return "context.subject_issuer and context.subject_sub must name the person whose key is erased (aigov privacy erase and export send them): reviewers approve a person, not a hash"
	case personal.SubjectKeyID(iss, sub) != keyID:
		return "context.subject_key_id is not the key id of " + schemas.PrincipalID(iss, sub) + ": refused, nothing opened for review"
	}
	return ""
}
