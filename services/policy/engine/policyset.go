package decide

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cedar-policy/cedar-go"
)

// MaxFileBytes bounds one policy or entities file, so that a wrong path (a
// log file, a dataset) fails start-up instead of exhausting memory.
const MaxFileBytes = 16 << 20

// File is one input of a policy set: its base name and content.
type File struct {
	Name string
	Data []byte
}

// Set is a loaded policy set with its trusted entity store. It is immutable
// after Compile and safe for concurrent use.
type Set struct {
	policies *cedar.PolicySet
	ids      []string
	entities cedar.EntityMap
	// ancestors holds, per stored entity, every stored entity reachable
	// through its parents, computed once so that a request copies only the
	// few entities it needs instead of the whole store.
	ancestors map[cedar.EntityUID][]cedar.EntityUID
	version   string
}

// LoadDir reads every *.cedar file in dir (sorted by name) and the entities
// file, and compiles them.
func LoadDir(dir, entitiesFile string) (*Set, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.cedar"))
	if err != nil {
		return nil, fmt.Errorf("list policies in %s: %w", dir, err)
	}
	var files []File
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("stat policy file: %w", err)
		}
		if st.IsDir() {
			continue
		}
		data, err := readBounded(p)
		if err != nil {
			return nil, err
		}
		files = append(files, File{Name: filepath.Base(p), Data: data})
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("load policy set: no *.cedar files in %s", dir)
	}
	data, err := readBounded(entitiesFile)
	if err != nil {
		return nil, err
	}
	return Compile(files, File{Name: filepath.Base(entitiesFile), Data: data})
}

func readBounded(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if len(data) > MaxFileBytes {
		return nil, fmt.Errorf("read %s: larger than %d bytes", path, MaxFileBytes)
	}
	return data, nil
}

// Compile parses the policy files and the entity store. It rejects, naming
// file and policy, a file that does not parse, a policy without @id and an
// @id used twice; every violation is reported at once.
func Compile(policyFiles []File, entities File) (*Set, error) {
	files := slices.Clone(policyFiles)
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	if len(files) == 0 {
		return nil, errors.New("load policy set: no policy files")
	}

	ps := cedar.NewPolicySet()
	firstSeen := map[string]string{} // @id → file:line, for duplicate reports
	var errs []error
	for _, f := range files {
		list, err := cedar.NewPolicyListFromBytes(f.Name, f.Data)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.Name, err))
			continue
		}
		for i, p := range list {
			loc := fmt.Sprintf("%s:%d", f.Name, p.Position().Line)
			id := strings.TrimSpace(string(p.Annotations()["id"]))
			switch prev, dup := firstSeen[id]; {
			case id == "":
				errs = append(errs, fmt.Errorf("%s: policy #%d has no @id annotation", loc, i+1))
			case dup:
				errs = append(errs, fmt.Errorf("%s: duplicate @id %q, first used at %s", loc, id, prev))
			default:
				firstSeen[id] = loc
				ps.Add(cedar.PolicyID(id), p)
			}
		}
	}

	var store cedar.EntityMap
	if err := json.Unmarshal(entities.Data, &store); err != nil {
		errs = append(errs, fmt.Errorf("%s: entities: %w", entities.Name, err))
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("load policy set: %w", errors.Join(errs...))
	}

	ids := make([]string, 0, len(firstSeen))
	for id := range firstSeen {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return &Set{
		policies:  ps,
		ids:       ids,
		entities:  store,
		ancestors: ancestorsOf(store),
		version:   versionOf(files, entities),
	}, nil
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

// versionOf hashes the (name, content) pairs: the policy files sorted by
// name, then the entities file. Lengths are written before each part so that
// moving bytes between a name and a content changes the hash.
func versionOf(sortedPolicies []File, entities File) string {
	h := sha256.New()
	var n [8]byte
	write := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for _, f := range append(slices.Clone(sortedPolicies), entities) {
		write([]byte(f.Name))
		write(f.Data)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// Version is "sha256:" and the hex hash of the set's files; it changes
// whenever a policy or the entity store does.
func (s *Set) Version() string { return s.version }

// PolicyIDs lists the @id of every policy, sorted.
func (s *Set) PolicyIDs() []string { return slices.Clone(s.ids) }

// EntityCount is the number of entities in the trusted store.
func (s *Set) EntityCount() int { return len(s.entities) }

// addStored copies a stored entity and its stored ancestors into m.
func (s *Set) addStored(m cedar.EntityMap, uid cedar.EntityUID) bool {
	e, ok := s.entities[uid]
	if !ok {
		return false
	}
	m[uid] = e
	for _, a := range s.ancestors[uid] {
		m[a] = s.entities[a]
	}
	return true
}
