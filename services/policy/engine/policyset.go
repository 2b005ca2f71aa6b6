package engine

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cedar-policy/cedar-go"
	xast "github.com/cedar-policy/cedar-go/x/exp/ast"
	"github.com/cedar-policy/cedar-go/x/exp/schema"
	"github.com/cedar-policy/cedar-go/x/exp/schema/validate"
)

// MaxFileBytes bounds one policy, schema or entities file, so that a wrong
// path (a log file, a dataset) fails instead of exhausting memory.
const MaxFileBytes = 16 << 20

// MaxBundleBytes bounds a whole policy set: what a push may store in
// JetStream and what a replica compiles.
const MaxBundleBytes = 1 << 20

// File name suffixes of a policy set's parts.
const (
	PolicySuffix = ".cedar"
	SchemaSuffix = ".cedarschema"
)

// Annotations aigov reads.
const (
	// AnnotationID names a policy; decisions report it. Required and unique.
	AnnotationID = "id"
	// AnnotationShadow marks a policy that is evaluated and reported in
	// Decision.Shadow but not enforced, so a rule can be watched on live
	// traffic before it bites.
	AnnotationShadow = "shadow"
	// AnnotationApproval names the team whose approval the policy needs:
	// on a forbid whose `unless` (or a permit whose `when`) tests
	// context.approvals.contains(team). A request denied only for want of
	// that approval opens an approval request (code approval_required).
	// It must come with AnnotationQuorum; AnnotationUses is optional.
	AnnotationApproval = "approval"
	// AnnotationQuorum is how many distinct reviewers of the team must
	// grant ("1" to "20"); stated explicitly, there is no default.
	AnnotationQuorum = "quorum"
	// AnnotationUses is how many allowed retries one approval unlocks
	// ("1" to "100"); default 1, single use.
	AnnotationUses = "uses"
	// AnnotationRejections is how many distinct reviewers' rejections end
	// the request ("1" to "20"); default 1, any reviewer's rejection.
	AnnotationRejections = "rejections"
)

// Bounds of the approval annotations.
const (
	MaxQuorum = 20
	MaxUses   = 100
)

// ApprovalRule is a policy's @approval, @quorum, @uses and @rejections.
type ApprovalRule struct {
	Team       string
	Quorum     int
	Uses       int
	Rejections int
}

// approvalRuleOf reads a policy's approval annotations; ok is false when
// it has none.
func approvalRuleOf(ann cedar.Annotations, shadow bool) (ApprovalRule, bool, error) {
	team, hasTeam := ann[AnnotationApproval]
	quorum, hasQuorum := ann[AnnotationQuorum]
	uses, hasUses := ann[AnnotationUses]
	rejections, hasRejections := ann[AnnotationRejections]
	switch {
	case !hasTeam && !hasQuorum && !hasUses && !hasRejections:
		return ApprovalRule{}, false, nil
	case !hasTeam:
		return ApprovalRule{}, false, errors.New("@quorum, @uses and @rejections need @approval(\"<team>\")")
	case strings.TrimSpace(string(team)) == "":
		return ApprovalRule{}, false, errors.New("@approval needs a team name")
	case !hasQuorum:
		return ApprovalRule{}, false, fmt.Errorf("@approval(%q) needs @quorum(\"<n>\"): how many reviewers must approve is stated, never assumed", string(team))
	case shadow:
		return ApprovalRule{}, false, errors.New("@approval on a @shadow policy: shadow policies are never enforced")
	}
	r := ApprovalRule{Team: strings.TrimSpace(string(team)), Uses: 1, Rejections: 1}
	n, err := strconv.Atoi(strings.TrimSpace(string(quorum)))
	if err != nil || n < 1 || n > MaxQuorum {
		return ApprovalRule{}, false, fmt.Errorf("@quorum(%q) must be a whole number from 1 to %d", string(quorum), MaxQuorum)
	}
	r.Quorum = n
	if hasUses {
		n, err := strconv.Atoi(strings.TrimSpace(string(uses)))
		if err != nil || n < 1 || n > MaxUses {
			return ApprovalRule{}, false, fmt.Errorf("@uses(%q) must be a whole number from 1 to %d", string(uses), MaxUses)
		}
		r.Uses = n
	}
	if hasRejections {
		n, err := strconv.Atoi(strings.TrimSpace(string(rejections)))
		if err != nil || n < 1 || n > MaxQuorum {
			return ApprovalRule{}, false, fmt.Errorf("@rejections(%q) must be a whole number from 1 to %d", string(rejections), MaxQuorum)
		}
		r.Rejections = n
	}
	return r, true, nil
}

// File is one input of a policy set: its base name and content.
type File struct {
	Name string `json:"name"`
	Data []byte `json:"data"`
}

// Set is a compiled, validated policy set. It is immutable and safe for
// concurrent use.
type Set struct {
	// enforced decides; withShadow adds the shadow policies and is nil when
	// there are none.
	enforced   *cedar.PolicySet
	withShadow *cedar.PolicySet
	ids        []string
	shadowIDs  []string
	// index splits the policies by action for the evaluator's fast path;
	// enforced and withShadow are the reference it is tested against.
	index     index
	validator *validate.Validator
	// actions are the action names the schema declares; nil without one.
	actions map[string]bool
	files   []File
	version string
	// rules are the @approval policies' rules, by @id; gated are the
	// actions one of them names (gatedAll: one names any action or an
	// action group). A gated action's approvals come from approval
	// requests only, bound to requester and RequestDigest.
	rules    map[string]ApprovalRule
	gated    map[cedar.EntityUID]bool
	gatedAll bool
}

// LoadDir reads a policy set from dir: every *.cedar file and exactly one
// *.cedarschema file, sorted by name. Other files are not part of the set.
func LoadDir(dir string) (*Set, error) {
	files, err := ReadDir(dir)
	if err != nil {
		return nil, err
	}
	return Compile(files)
}

// ReadDir reads the files of the policy set in dir without compiling them.
func ReadDir(dir string) ([]File, error) {
	var files []File
	for _, pattern := range []string{"*" + PolicySuffix, "*" + SchemaSuffix} {
		paths, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			return nil, fmt.Errorf("list %s in %s: %w", pattern, dir, err)
		}
		for _, p := range paths {
			st, err := os.Stat(p)
			if err != nil {
				return nil, fmt.Errorf("stat policy file: %w", err)
			}
			if st.IsDir() {
				continue
			}
			data, err := ReadBounded(p)
			if err != nil {
				return nil, err
			}
			files = append(files, File{Name: filepath.Base(p), Data: data})
		}
	}
	if !slices.ContainsFunc(files, func(f File) bool { return strings.HasSuffix(f.Name, PolicySuffix) }) {
		return nil, fmt.Errorf("load policy set: no *%s files in %s", PolicySuffix, dir)
	}
	if !slices.ContainsFunc(files, func(f File) bool { return strings.HasSuffix(f.Name, SchemaSuffix) }) {
		return nil, fmt.Errorf("load policy set: no *%s file in %s: every set is validated against a schema", SchemaSuffix, dir)
	}
	return files, nil
}

// ReadBounded reads a file of at most MaxFileBytes.
func ReadBounded(path string) ([]byte, error) {
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

// Compile parses and validates a policy set. It rejects, naming file and
// policy, a file that does not parse, a policy without @id, an @id used
// twice, a schema that does not resolve and a policy the schema rejects;
// every violation is reported at once and nothing of a rejected set is
// usable. With no *.cedarschema file the policies are not validated: only
// tests compile such sets, and the service refuses them (Validated).
func Compile(files []File) (*Set, error) {
	files = slices.Clone(files)
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	var errs []error
	var policyFiles, schemaFiles []File
	size := 0
	for _, f := range files {
		size += len(f.Name) + len(f.Data)
		switch {
		case strings.HasSuffix(f.Name, PolicySuffix):
			policyFiles = append(policyFiles, f)
		case strings.HasSuffix(f.Name, SchemaSuffix):
			schemaFiles = append(schemaFiles, f)
		default:
			errs = append(errs, fmt.Errorf("%s: neither *%s nor *%s", f.Name, PolicySuffix, SchemaSuffix))
		}
	}
	if size > MaxBundleBytes {
		errs = append(errs, fmt.Errorf("policy set is %d bytes, more than %d", size, MaxBundleBytes))
	}
	if len(policyFiles) == 0 {
		errs = append(errs, errors.New("no policy files"))
	}
	if len(schemaFiles) > 1 {
		errs = append(errs, fmt.Errorf("%d schema files, want one", len(schemaFiles)))
	}

	var (
		validator *validate.Validator
		actions   map[string]bool
	)
	if len(schemaFiles) == 1 {
		v, acts, err := compileSchema(schemaFiles[0])
		if err != nil {
			errs = append(errs, err)
		}
		validator, actions = v, acts
	}

	enforced, all := cedar.NewPolicySet(), cedar.NewPolicySet()
	firstSeen := map[string]string{} // @id → file:line, for duplicate reports
	var ids, shadowIDs []string
	var entries []scoped
	var (
		rules    map[string]ApprovalRule
		gated    map[cedar.EntityUID]bool
		gatedAll bool
	)
	for _, f := range policyFiles {
		list, err := cedar.NewPolicyListFromBytes(f.Name, f.Data)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.Name, err))
			continue
		}
		for i, p := range list {
			loc := fmt.Sprintf("%s:%d", f.Name, p.Position().Line)
			ann := p.Annotations()
			id := strings.TrimSpace(string(ann[AnnotationID]))
			switch prev, dup := firstSeen[id]; {
			case id == "":
				errs = append(errs, fmt.Errorf("%s: policy #%d has no @id annotation", loc, i+1))
				continue
			case dup:
				errs = append(errs, fmt.Errorf("%s: duplicate @id %q, first used at %s", loc, id, prev))
				continue
			}
			firstSeen[id] = loc
			if validator != nil {
				if err := validator.Policy(id, (*xast.Policy)(p.AST())); err != nil {
					errs = append(errs, fmt.Errorf("%s: policy %q does not validate against the schema: %w", loc, id, err))
				}
			}
			all.Add(cedar.PolicyID(id), p)
			_, shadow := ann[AnnotationShadow]
			if rule, ok, err := approvalRuleOf(ann, shadow); err != nil {
				errs = append(errs, fmt.Errorf("%s: policy %q: %w", loc, id, err))
			} else if ok {
				if rules == nil {
					rules, gated = map[string]ApprovalRule{}, map[cedar.EntityUID]bool{}
				}
				rules[id] = rule
				switch a := p.AST().Action.(type) {
				case xast.ScopeTypeEq:
					gated[a.Entity] = true
				case xast.ScopeTypeInSet:
					for _, uid := range a.Entities {
						gated[uid] = true
					}
				default: // any action, or an action group the store defines
					gatedAll = true
				}
			}
			ast := p.AST()
			entries = append(entries, scoped{id: cedar.PolicyID(id), policy: p, shadow: shadow, principal: ast.Principal, resource: ast.Resource})
			if shadow {
				shadowIDs = append(shadowIDs, id)
				continue
			}
			enforced.Add(cedar.PolicyID(id), p)
			ids = append(ids, id)
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("load policy set: %w", errors.Join(errs...))
	}
	slices.Sort(ids)
	slices.Sort(shadowIDs)
	s := &Set{
		enforced:  enforced,
		ids:       ids,
		shadowIDs: shadowIDs,
		index:     newIndex(entries),
		validator: validator,
		actions:   actions,
		files:     files,
		version:   Version(files),
		rules:     rules,
		gated:     gated,
		gatedAll:  gatedAll,
	}
	if len(shadowIDs) > 0 {
		s.withShadow = all
	}
	return s, nil
}

func compileSchema(f File) (*validate.Validator, map[string]bool, error) {
	var s schema.Schema
	s.SetFilename(f.Name)
	if err := s.UnmarshalCedar(f.Data); err != nil {
		return nil, nil, fmt.Errorf("%s: schema: %w", f.Name, err)
	}
	r, err := s.Resolve()
	if err != nil {
		return nil, nil, fmt.Errorf("%s: schema: %w", f.Name, err)
	}
	actions := make(map[string]bool, len(r.Actions))
	for uid := range r.Actions {
		if uid.Type == TypeAction {
			actions[string(uid.ID)] = true
		}
	}
	return validate.New(r, validate.WithStrict()), actions, nil
}

// DeclaresAction reports whether the set's schema declares the action; a
// set without a schema declares every action.
func (s *Set) DeclaresAction(action string) bool {
	return s.actions == nil || s.actions[action]
}

// Version hashes the (name, content) pairs of a set's files sorted by name:
// "sha256:" and the hex digest. Lengths are written before each part so
// that moving bytes between a name and a content changes the hash.
func Version(files []File) string {
	files = slices.Clone(files)
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	h := sha256.New()
	var n [8]byte
	write := func(b []byte) {
		binary.BigEndian.PutUint64(n[:], uint64(len(b)))
		h.Write(n[:])
		h.Write(b)
	}
	for _, f := range files {
		write([]byte(f.Name))
		write(f.Data)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// Version is "sha256:" and the hex hash of the set's files (policies and
// schema); it changes whenever a policy or the schema does.
func (s *Set) Version() string { return s.version }

// PolicyIDs lists the @id of every enforced policy, sorted.
func (s *Set) PolicyIDs() []string { return slices.Clone(s.ids) }

// Gates reports whether an @approval policy covers action: its approvals
// are approval requests, never digest-keyed approvals.
func (s *Set) Gates(action string) bool {
	return s.gatedAll || s.gated[cedar.NewEntityUID(TypeAction, cedar.String(action))]
}

// ApprovalRules returns the @approval rules by policy id.
func (s *Set) ApprovalRules() map[string]ApprovalRule { return maps.Clone(s.rules) }

// ShadowIDs lists the @id of every shadow policy, sorted.
func (s *Set) ShadowIDs() []string { return slices.Clone(s.shadowIDs) }

// Files returns the set's files, sorted by name: what a push stores.
func (s *Set) Files() []File { return slices.Clone(s.files) }

// Validated reports whether the set was validated against a schema. The
// service activates only validated sets.
func (s *Set) Validated() bool { return s.validator != nil }

// ValidateEntities checks entities against the set's schema; a set without
// a schema accepts any.
func (s *Set) ValidateEntities(m cedar.EntityMap) error {
	if s.validator == nil {
		return nil
	}
	var msgs []string
	for uid, e := range m {
		if err := s.validator.Entity(e); err != nil {
			msgs = append(msgs, fmt.Sprintf("%s: %v", uid, err))
		}
	}
	if len(msgs) == 0 {
		return nil
	}
	slices.Sort(msgs)
	return fmt.Errorf("entities do not conform to the schema: %s", strings.Join(msgs, "; "))
}
