package decide

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cedar-policy/cedar-go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// MaxApprovals bounds the approvals held in memory. Past it new approvals
// are ignored (logged): fewer approvals can only deny more.
const MaxApprovals = 100_000

// MaxEntities bounds the entity store held in memory.
const MaxEntities = 1_000_000

// state is what a replica decides with: the active policy set (and its
// revision in the policy bucket), the entity store and the approvals,
// each kept current by a KV watcher. The evaluator is rebuilt on every
// change and swapped atomically, so a decision sees one consistent set.
type state struct {
	log     zerolog.Logger
	clock   func() time.Time
	current atomic.Pointer[snapshot]

	mu        sync.Mutex
	set       *engine.Set
	setRev    uint64
	entities  map[string]cedar.Entity // by bucket key
	store     *engine.Store
	approvals map[string]map[string]schemas.Approval // digest hex → key → approval
	nApproval int
	// pending counts approvals per action and resource, so a request with
	// none skips computing its approval digest.
	pending map[string]int
	amu     sync.RWMutex

	// requests are the approval requests (approvals.go).
	requests *requestIndex

	// policySeen, approvalsSeen and requestsSeen are the revisions the
	// watches applied.
	policySeen, approvalsSeen, requestsSeen *revisions
}

// snapshot is one consistent view: the evaluator and the revision of the
// policy set it holds.
type snapshot struct {
	eval   *engine.Evaluator
	setRev uint64
}

func newState(log zerolog.Logger, clock func() time.Time) *state {
	return &state{log: log, clock: clock, entities: map[string]cedar.Entity{}, approvals: map[string]map[string]schemas.Approval{}, pending: map[string]int{},
		requests: newRequestIndex(), policySeen: newRevisions(), approvalsSeen: newRevisions(), requestsSeen: newRevisions()}
}

// snapshot returns the current view; nil until the set and store loaded.
func (s *state) snapshot() *snapshot { return s.current.Load() }

// rebuild makes a new evaluator from the current set and store; s.mu held.
func (s *state) rebuild() {
	if s.set == nil || s.store == nil {
		return
	}
	ev, err := engine.NewEvaluator(s.set, s.store, engine.Options{Approvals: s.lookupApprovals, Pending: s.hasPending, Requests: s.requests.lookup, Clock: s.clock})
	if err != nil {
		// Both inputs are non-nil here; NewEvaluator fails only without them.
		s.log.Error().Err(err).Msg("evaluator not rebuilt")
		return
	}
	s.current.Store(&snapshot{eval: ev, setRev: s.setRev})
}

func (s *state) setPolicy(set *engine.Set, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.set, s.setRev = set, rev
	s.rebuild()
}

// putEntity and deleteEntity edit the store; publish makes the edit visible.
func (s *state) putEntity(key string, e cedar.Entity) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.entities[key]; !ok && len(s.entities) >= MaxEntities {
		return false
	}
	s.entities[key] = e
	return true
}

func (s *state) deleteEntity(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.entities, key)
}

func (s *state) publishStore() {
	s.mu.Lock()
	defer s.mu.Unlock()
	m := make(cedar.EntityMap, len(s.entities))
	for _, e := range s.entities {
		m[e.UID] = e
	}
	s.store = engine.NewStore(m)
	s.rebuild()
}

func (s *state) lookupApprovals(digest string) []schemas.Approval {
	s.amu.RLock()
	defer s.amu.RUnlock()
	byKey := s.approvals[engine.HexOf(digest)]
	if len(byKey) == 0 {
		return nil
	}
	out := make([]schemas.Approval, 0, len(byKey))
	for _, a := range byKey {
		out = append(out, a)
	}
	return out
}

// pendingKey is the pending count key of an approval's action and resource.
func pendingKey(action string, r schemas.Resource) string {
	return action + "\x00" + r.Type + "\x00" + r.ID
}

// hasPending reports whether any approval is held for action on r.
func (s *state) hasPending(action string, r schemas.Resource) bool {
	s.amu.RLock()
	defer s.amu.RUnlock()
	return s.pending[pendingKey(action, r)] > 0
}

func (s *state) putApproval(key string, a schemas.Approval) bool {
	s.amu.Lock()
	defer s.amu.Unlock()
	h := engine.HexOf(a.Digest)
	if schemas.ApprovalKeyPrefix(a.Digest) != key[:min(len(key), len(h)+1)] {
		return false // a value that does not match its key is not believed
	}
	byKey := s.approvals[h]
	if prev, ok := byKey[key]; !ok {
		if s.nApproval >= MaxApprovals {
			return false
		}
		s.nApproval++
	} else {
		s.unpend(prev)
	}
	s.pending[pendingKey(a.Action, a.Resource)]++
	if byKey == nil {
		byKey = map[string]schemas.Approval{}
		s.approvals[h] = byKey
	}
	byKey[key] = a
	return true
}

func (s *state) deleteApproval(key string) {
	s.amu.Lock()
	defer s.amu.Unlock()
	for h, byKey := range s.approvals {
		if prev, ok := byKey[key]; ok {
			delete(byKey, key)
			s.nApproval--
			s.unpend(prev)
			if len(byKey) == 0 {
				delete(s.approvals, h)
			}
			return
		}
	}
}

// unpend drops one approval from the pending counts; s.amu held.
func (s *state) unpend(a schemas.Approval) {
	k := pendingKey(a.Action, a.Resource)
	if s.pending[k] <= 1 {
		delete(s.pending, k)
		return
	}
	s.pending[k]--
}

// buckets are the KV buckets the service works with.
type buckets struct {
	policy, proposals, entities, approvals, requests, subjectKeys jetstream.KeyValue
}

func openBuckets(ctx context.Context, js jetstream.JetStream, t topology.Topology) (buckets, error) {
	var b buckets
	for _, x := range []struct {
		name string
		kv   *jetstream.KeyValue
	}{
		{t.BucketPolicy(), &b.policy}, {t.BucketPolicyProposals(), &b.proposals},
		{t.BucketEntities(), &b.entities}, {t.BucketApprovals(), &b.approvals},
		{t.BucketApprovalRequests(), &b.requests}, {t.BucketSubjectKeys(), &b.subjectKeys},
	} {
		kv, err := js.KeyValue(ctx, x.name)
		if err != nil {
			return b, fmt.Errorf("open bucket %s: %w", x.name, err)
		}
		*x.kv = kv
	}
	return b, nil
}

// seedPolicy stores the seed set as the active one if there is none yet.
// Create fails when another replica seeded first, which is fine.
func seedPolicy(ctx context.Context, kv jetstream.KeyValue, seed *engine.Set) (bool, error) {
	if seed == nil {
		return false, nil
	}
	b, _, err := engine.EncodeBundle(seed.Files())
	if err != nil {
		return false, err
	}
	_, err = kv.Create(ctx, topology.PolicyActiveKey, b)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, jetstream.ErrKeyExists):
		return false, nil
	default:
		return false, fmt.Errorf("seed policy set: %w", err)
	}
}

// seedEntities stores the seed entities if the bucket holds none.
func seedEntities(ctx context.Context, kv jetstream.KeyValue, seed cedar.EntityMap) (int, error) {
	if len(seed) == 0 {
		return 0, nil
	}
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return 0, fmt.Errorf("list entities: %w", err)
	}
	any := false
	for range lister.Keys() {
		any = true
	}
	if any {
		return 0, nil
	}
	n := 0
	for uid, e := range seed {
		b, err := json.Marshal(e)
		if err != nil {
			return n, fmt.Errorf("encode entity %s: %w", uid, err)
		}
		if _, err := kv.Create(ctx, engine.EntityKey(uid), b); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			return n, fmt.Errorf("seed entity %s: %w", uid, err)
		}
		n++
	}
	return n, nil
}

func sha256Hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// runtimePermanent marks an error retrying cannot fix.
func runtimePermanent(err error) error { return servicekit.Permanent(err) }
