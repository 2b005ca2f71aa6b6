package engine

import (
	"iter"

	"github.com/cedar-policy/cedar-go"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
)

// scoped is one policy of a set with the parts of its scope the evaluator
// checks before Cedar runs. A policy whose scope is false cannot match and
// cannot error (scopes evaluate no attribute), so leaving it out changes
// neither the decision nor its diagnostics: it only saves its evaluation.
type scoped struct {
	id        cedar.PolicyID
	policy    *cedar.Policy
	shadow    bool
	principal xast.IsPrincipalScopeNode
	resource  xast.IsResourceScopeNode
}

// index splits a set's policies by the actions their action scope can
// match, computed once at load, so a request evaluates only the policies of
// its own action (plus those whose scope is any action).
type index struct {
	// byAction holds, per action named in some policy's action scope, the
	// policies naming it and every any-action policy, in set order.
	byAction map[cedar.EntityUID][]scoped
	// anyAction holds the any-action policies: what an action no policy
	// names is decided with.
	anyAction []scoped
	// all holds every policy, for an action the entity store puts in an
	// action group: `action in Action::"group"` then depends on the store.
	all []scoped
	// hasShadow reports whether any policy is a shadow one.
	hasShadow bool
}

func newIndex(all []scoped) index {
	ix := index{byAction: map[cedar.EntityUID][]scoped{}, all: all}
	var named []cedar.EntityUID
	for _, s := range all {
		ix.hasShadow = ix.hasShadow || s.shadow
		switch a := s.policy.AST().Action.(type) {
		case xast.ScopeTypeEq:
			named = append(named, a.Entity)
		case xast.ScopeTypeIn:
			named = append(named, a.Entity)
		case xast.ScopeTypeInSet:
			named = append(named, a.Entities...)
		}
	}
	for _, uid := range named {
		ix.byAction[uid] = nil
	}
	for _, s := range all {
		var names []cedar.EntityUID
		switch a := s.policy.AST().Action.(type) {
		case xast.ScopeTypeEq:
			names = []cedar.EntityUID{a.Entity}
		case xast.ScopeTypeIn:
			names = []cedar.EntityUID{a.Entity}
		case xast.ScopeTypeInSet:
			names = a.Entities
		default: // any action, or a scope this version does not know: every list
			ix.anyAction = append(ix.anyAction, s)
			for uid := range ix.byAction {
				ix.byAction[uid] = append(ix.byAction[uid], s)
			}
			continue
		}
		for _, uid := range names {
			if l := ix.byAction[uid]; len(l) == 0 || l[len(l)-1].id != s.id { // a name listed twice adds the policy once
				ix.byAction[uid] = append(l, s)
			}
		}
	}
	return ix
}

// candidates returns the policies that may apply to action. Without stored
// parents the action is `in` only itself, so `action in [A, B]` matches
// exactly A and B; with stored parents every policy is a candidate.
func (ix index) candidates(action cedar.EntityUID, grouped bool) []scoped {
	if grouped {
		return ix.all
	}
	if l, ok := ix.byAction[action]; ok {
		return l
	}
	return ix.anyAction
}

// scopeFilter rules policies out by their principal and resource scopes,
// given the request's principal and resource and all their ancestors.
type scopeFilter struct {
	principal, resource cedar.EntityUID
	principalAncestors  []cedar.EntityUID
	resourceAncestors   []cedar.EntityUID
}

func (f *scopeFilter) mayMatch(s scoped) bool {
	return scopeMayMatch(s.principal, f.principal, f.principalAncestors) &&
		scopeMayMatch(s.resource, f.resource, f.resourceAncestors)
}

// scopeMayMatch is false only when the scope is certainly false for uid;
// any scope form it does not know is kept for Cedar to decide.
func scopeMayMatch(scope any, uid cedar.EntityUID, ancestors []cedar.EntityUID) bool {
	in := func(target cedar.EntityUID) bool {
		if uid == target {
			return true
		}
		for _, a := range ancestors {
			if a == target {
				return true
			}
		}
		return false
	}
	switch sc := scope.(type) {
	case xast.ScopeTypeAll:
		return true
	case xast.ScopeTypeEq:
		return uid == sc.Entity
	case xast.ScopeTypeIn:
		return in(sc.Entity)
	case xast.ScopeTypeIs:
		return uid.Type == sc.Type
	case xast.ScopeTypeIsIn:
		return uid.Type == sc.Type && in(sc.Entity)
	default:
		return true
	}
}

// policyList is the PolicyIterator of one evaluation: the candidates that
// pass the scope filter, with or without the shadow policies.
type policyList struct {
	list       []scoped
	filter     *scopeFilter
	withShadow bool
}

// All yields the policies to evaluate.
func (l policyList) All() iter.Seq2[cedar.PolicyID, *cedar.Policy] {
	return func(yield func(cedar.PolicyID, *cedar.Policy) bool) {
		for _, s := range l.list {
			if s.shadow && !l.withShadow || !l.filter.mayMatch(s) {
				continue
			}
			if !yield(s.id, s.policy) {
				return
			}
		}
	}
}

// anyShadow reports whether a shadow policy passes the filter.
func (l policyList) anyShadow() bool {
	for _, s := range l.list {
		if s.shadow && l.filter.mayMatch(s) {
			return true
		}
	}
	return false
}

// smallEntities is the EntityGetter of one request: the few entities it
// needs, found by a linear scan, cheaper than hashing uids into a map at
// this size. Put keeps the last value of a uid, as a map would.
type smallEntities struct {
	list []cedar.Entity
	m    cedar.EntityMap // used instead of list past smallEntitiesMax
}

// smallEntitiesMax is the size past which a map is faster than the scan.
const smallEntitiesMax = 16

func (s *smallEntities) put(e cedar.Entity) {
	if s.m != nil {
		s.m[e.UID] = e
		return
	}
	for i := range s.list {
		if s.list[i].UID == e.UID {
			s.list[i] = e
			return
		}
	}
	if len(s.list) < smallEntitiesMax {
		s.list = append(s.list, e)
		return
	}
	s.m = make(cedar.EntityMap, 2*smallEntitiesMax)
	for _, x := range s.list {
		s.m[x.UID] = x
	}
	s.m[e.UID] = e
	s.list = nil
}

func (s *smallEntities) has(uid cedar.EntityUID) bool {
	_, ok := s.Get(uid)
	return ok
}

// Get implements cedar's EntityGetter.
func (s *smallEntities) Get(uid cedar.EntityUID) (cedar.Entity, bool) {
	if s.m != nil {
		e, ok := s.m[uid]
		return e, ok
	}
	for i := range s.list {
		if s.list[i].UID == uid {
			return s.list[i], true
		}
	}
	return cedar.Entity{}, false
}

// toMap copies the entities into a map (the reference path and tests).
func (s *smallEntities) toMap() cedar.EntityMap {
	if s.m != nil {
		return s.m
	}
	m := make(cedar.EntityMap, len(s.list))
	for _, e := range s.list {
		m[e.UID] = e
	}
	return m
}

// ancestors walks uid's parents through the request's entities, as Cedar's
// `in` does: a parent that is not among them still counts, but has no
// parents of its own. Bounded by the entities held.
func (s *smallEntities) ancestors(uid cedar.EntityUID) []cedar.EntityUID {
	e, ok := s.Get(uid)
	if !ok || e.Parents.Len() == 0 {
		return nil
	}
	var out []cedar.EntityUID
	queue := []cedar.EntityUID{uid}
	for len(queue) > 0 {
		cur := queue[len(queue)-1]
		queue = queue[:len(queue)-1]
		ce, ok := s.Get(cur)
		if !ok {
			continue
		}
		for p := range ce.Parents.All() {
			if p == uid || containsUID(out, p) {
				continue
			}
			out = append(out, p)
			queue = append(queue, p)
		}
	}
	return out
}

func containsUID(l []cedar.EntityUID, uid cedar.EntityUID) bool {
	for _, x := range l {
		if x == uid {
			return true
		}
	}
	return false
}
