package engine

import (
	"encoding/json"
	"fmt"

	"github.com/cedar-policy/cedar-go"
)

// Store is a snapshot of the trusted entity store: the resources (and any
// stored groups and actions) with their attributes. It is immutable and
// safe for concurrent use; a change builds a new Store.
type Store struct {
	entities cedar.EntityMap
	// ancestors holds, per stored entity, every stored entity reachable
	// through its parents, computed once so that a request copies only the
	// few entities it needs instead of the whole store.
	ancestors map[cedar.EntityUID][]cedar.EntityUID
}

// NewStore snapshots m; m must not be modified afterwards.
func NewStore(m cedar.EntityMap) *Store {
	if m == nil {
		m = cedar.EntityMap{}
	}
	return &Store{entities: m, ancestors: ancestorsOf(m)}
}

// ParseEntities decodes Cedar's entity JSON (an array of entities).
func ParseEntities(f File) (cedar.EntityMap, error) {
	var m cedar.EntityMap
	if err := json.Unmarshal(f.Data, &m); err != nil {
		return nil, fmt.Errorf("%s: entities: %w", f.Name, err)
	}
	return m, nil
}

// LoadStore reads an entities file into a Store.
func LoadStore(path string) (*Store, error) {
	data, err := ReadBounded(path)
	if err != nil {
		return nil, err
	}
	m, err := ParseEntities(File{Name: path, Data: data})
	if err != nil {
		return nil, err
	}
	return NewStore(m), nil
}

// Len is the number of stored entities.
func (s *Store) Len() int { return len(s.entities) }

// Entities returns the stored entities; the map must not be modified.
func (s *Store) Entities() cedar.EntityMap { return s.entities }

// Has reports whether uid is stored.
func (s *Store) Has(uid cedar.EntityUID) bool {
	_, ok := s.entities[uid]
	return ok
}

// addStored copies a stored entity and its stored ancestors into m.
func (s *Store) addStored(m *smallEntities, uid cedar.EntityUID) bool {
	e, ok := s.entities[uid]
	if !ok {
		return false
	}
	m.put(e)
	for _, a := range s.ancestors[uid] {
		m.put(s.entities[a])
	}
	return true
}

// ancestorsOf walks each entity's parents through the store. The visited
// set bounds the walk by the store's size and makes cycles harmless.
func ancestorsOf(store cedar.EntityMap) map[cedar.EntityUID][]cedar.EntityUID {
	out := make(map[cedar.EntityUID][]cedar.EntityUID, len(store))
	for uid, e := range store {
		seen := map[cedar.EntityUID]bool{uid: true}
		queue := e.Parents.Slice()
		var found []cedar.EntityUID
		for len(queue) > 0 {
			p := queue[0]
			queue = queue[1:]
			if seen[p] {
				continue
			}
			seen[p] = true
			pe, ok := store[p]
			if !ok {
				// A parent outside the store still counts for `in` through
				// the child's own parent list; there is nothing to copy.
				continue
			}
			found = append(found, p)
			queue = append(queue, pe.Parents.Slice()...)
		}
		if len(found) > 0 {
			out[uid] = found
		}
	}
	return out
}
