// Package policytest runs policy case files: a request, the principal's
// claims, entities and approvals, and the decision and determining policy
// ids expected, like `opa test` or Cerbos test suites. The aigov CLI
// (`aigov policy test`) and the policy service's own tests run it.
package policytest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/cedar-policy/cedar-go"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/policy/engine"
)

// DefaultIssuer is the issuer of case principals that name none.
const DefaultIssuer = "https://idp.test"

// DefaultNow is the decision time of cases that set none: a Wednesday noon.
var defaultNow = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// Suite is one case file.
type Suite struct {
	// Policies is the policy directory (relative to the file); default "..".
	Policies string `json:"policies,omitempty"`
	// Entities is the entities file (relative to the file); default
	// <Policies>/entities.json.
	Entities string `json:"entities,omitempty"`
	// Cases are run in order.
	Cases []Case `json:"cases"`
}

// Case is one request and what the policies must decide.
type Case struct {
	Name      string          `json:"name"`
	Principal Principal       `json:"principal"`
	Request   schemas.Request `json:"request"`
	// Entities are added to (or replace) the suite's store for this case,
	// in Cedar's entity JSON.
	Entities json.RawMessage `json:"entities,omitempty"`
	// Approvals of this case's exact request, by other principals. For an
	// action an @approval policy covers they grant the approval request
	// its deny opens, counted as the policy service counts them.
	Approvals []Approver `json:"approvals,omitempty"`
	// Now is the decision time (RFC 3339); default 2026-11-25T12:00:00Z.
	Now    *time.Time `json:"now,omitempty"`
	Expect Expect     `json:"expect"`
}

// Principal is the verified claims of a case's requester.
type Principal struct {
	Subject string   `json:"sub"`
	Issuer  string   `json:"iss,omitempty"`
	Type    string   `json:"type,omitempty"`
	Email   string   `json:"email,omitempty"`
	Groups  []string `json:"groups,omitempty"`
	Scopes  []string `json:"scopes,omitempty"`
	AMR     []string `json:"amr,omitempty"`
	// SessionAgeSeconds sets auth_time that long before Now.
	SessionAgeSeconds int64             `json:"session_age_seconds,omitempty"`
	Attributes        map[string]string `json:"attributes,omitempty"`
}

// Approver is one approval of the case's request.
type Approver struct {
	Subject string   `json:"sub"`
	Teams   []string `json:"teams"`
}

// Expect is the expected outcome; PolicyIDs and Shadow are checked when set.
type Expect struct {
	Decision  string                 `json:"decision"`
	Code      schemas.Code           `json:"code,omitempty"`
	PolicyIDs []string               `json:"policy_ids,omitempty"`
	Shadow    *schemas.ShadowOutcome `json:"shadow,omitempty"`
}

// Result is one case's outcome; Diff is empty when it passed.
type Result struct {
	File string
	Case string
	Diff []string
	Got  schemas.Decision
}

// Passed reports whether the case passed.
func (r Result) Passed() bool { return len(r.Diff) == 0 }

// CaseFiles expands paths (files or directories, searched for *.json
// recursively) into case files, sorted.
func CaseFiles(paths []string) ([]string, error) {
	var out []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("case files: %w", err)
		}
		if !st.IsDir() {
			out = append(out, p)
			continue
		}
		err = filepath.WalkDir(p, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && strings.HasSuffix(path, ".json") {
				out = append(out, path)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("case files in %s: %w", p, err)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Options adjust how cases are decided.
type Options struct {
	// Reference decides on the evaluator's plain path (engine.Options.Reference).
	Reference bool
}

// RunFile runs every case of one file against the policies it names; an
// error means the file or its policies could not be loaded.
func RunFile(path string) ([]Result, error) { return RunFileWith(path, Options{}) }

// RunFileWith is RunFile with options.
func RunFileWith(path string, opts Options) ([]Result, error) {
	data, err := engine.ReadBounded(path)
	if err != nil {
		return nil, err
	}
	var s Suite
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if len(s.Cases) == 0 {
		return nil, fmt.Errorf("%s: no cases", path)
	}
	base := filepath.Dir(path)
	pdir := cmpOr(s.Policies, "..")
	if !filepath.IsAbs(pdir) {
		pdir = filepath.Join(base, pdir)
	}
	efile := filepath.Join(pdir, "entities.json")
	if s.Entities != "" {
		efile = s.Entities
		if !filepath.IsAbs(efile) {
			efile = filepath.Join(base, efile)
		}
	}
	set, err := engine.LoadDir(pdir)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	edata, err := engine.ReadBounded(efile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	ents, err := engine.ParseEntities(engine.File{Name: efile, Data: edata})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := set.ValidateEntities(ents); err != nil {
		return nil, fmt.Errorf("%s: %s: %w", path, efile, err)
	}
	out := make([]Result, 0, len(s.Cases))
	for i, c := range s.Cases {
		name := cmpOr(c.Name, fmt.Sprintf("case #%d", i+1))
		r := Result{File: path, Case: name}
		got, err := run(set, ents, c, opts)
		if err != nil {
			r.Diff = []string{"cannot run: " + err.Error()}
		} else {
			r.Got = got
			r.Diff = diff(c.Expect, got)
		}
		out = append(out, r)
	}
	return out, nil
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func run(set *engine.Set, base cedar.EntityMap, c Case, opts Options) (schemas.Decision, error) {
	ents := base
	if len(c.Entities) > 0 {
		extra, err := engine.ParseEntities(engine.File{Name: "case entities", Data: c.Entities})
		if err != nil {
			return schemas.Decision{}, err
		}
		if err := set.ValidateEntities(extra); err != nil {
			return schemas.Decision{}, err
		}
		ents = make(cedar.EntityMap, len(base)+len(extra))
		for k, v := range base {
			ents[k] = v
		}
		for k, v := range extra {
			ents[k] = v
		}
	}
	now := defaultNow
	if c.Now != nil {
		now = c.Now.UTC()
	}
	p := c.Principal
	if p.Subject == "" {
		return schemas.Decision{}, errors.New("principal.sub is required")
	}
	iss := cmpOr(p.Issuer, DefaultIssuer)
	authTime := now.Add(-time.Duration(p.SessionAgeSeconds) * time.Second)
	v := schemas.Verified{
		RequestID: "case",
		Source:    "policytest",
		Request:   c.Request,
		Principal: schemas.Principal{
			ID: schemas.PrincipalID(iss, p.Subject), Type: cmpOr(p.Type, schemas.PrincipalUser),
			Issuer: iss, Subject: p.Subject, Email: p.Email, Groups: p.Groups, Scopes: p.Scopes, AMR: p.AMR,
			AuthTime: &authTime, IssuedAt: authTime, ExpiresAt: now.Add(time.Hour), Attributes: p.Attributes,
		},
		ReceivedAt: now,
		VerifiedAt: now,
	}
	digest, err := schemas.ApprovalDigest(c.Request.Action, c.Request.Resource, c.Request.Context)
	if err != nil {
		return schemas.Decision{}, err
	}
	approvals := make([]schemas.Approval, 0, len(c.Approvals))
	for _, a := range c.Approvals {
		approvals = append(approvals, schemas.Approval{
			Digest: digest, Action: c.Request.Action, Resource: c.Request.Resource,
			ApproverID: schemas.PrincipalID(iss, a.Subject), Teams: a.Teams,
			GrantedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour),
		})
	}
	ev, err := engine.NewEvaluator(set, engine.NewStore(ents), engine.Options{
		Clock:     func() time.Time { return now },
		Approvals: func(string) []schemas.Approval { return approvals },
		Reference: opts.Reference,
	})
	if err != nil {
		return schemas.Decision{}, err
	}
	res := ev.Evaluate(v)
	if len(res.Need) == 0 || len(c.Approvals) == 0 {
		return res.Decision, nil
	}
	// An action an @approval policy covers: the case's approvers grant
	// the approval request its deny opened, as the policy service counts
	// them (distinct, never the requester, each from a required team); a
	// quorate request is then used by the same request.
	ar := schemas.ApprovalRequest{
		ID: "case-approval", Status: schemas.StatusPending, RequesterID: v.Principal.ID, Digest: res.RequestDigest,
		Action: c.Request.Action, Resource: c.Request.Resource, PolicyVersion: set.Version(),
		Requirements: res.Need, MaxUses: res.MaxUses, ExpiresAt: now.Add(time.Hour),
	}
	for _, a := range c.Approvals {
		id := schemas.PrincipalID(iss, a.Subject)
		if id == v.Principal.ID || slices.ContainsFunc(ar.Grants, func(g schemas.ApprovalGrant) bool { return g.ReviewerID == id }) {
			continue
		}
		var teams []string
		for _, r := range res.Need {
			if slices.Contains(a.Teams, r.Team) {
				teams = append(teams, r.Team)
			}
		}
		if len(teams) > 0 {
			ar.Grants = append(ar.Grants, schemas.ApprovalGrant{ReviewerID: id, Teams: teams, At: now})
		}
	}
	if !ar.Quorate() {
		return res.Decision, nil
	}
	ar.Status = schemas.StatusApproved
	ev, err = engine.NewEvaluator(set, engine.NewStore(ents), engine.Options{
		Clock:     func() time.Time { return now },
		Requests:  func(string, string) (schemas.ApprovalRequest, bool) { return ar, true },
		Reference: opts.Reference,
	})
	if err != nil {
		return schemas.Decision{}, err
	}
	return ev.Decide(v), nil
}

func diff(want Expect, got schemas.Decision) []string {
	var d []string
	if want.Decision != got.Decision || want.Code != got.Code {
		d = append(d, fmt.Sprintf("decision: want %s, got %s", outcomeText(want.Decision, want.Code), outcomeText(got.Decision, got.Code)))
	}
	if want.PolicyIDs != nil && !slices.Equal(sorted(want.PolicyIDs), got.PolicyIDs) {
		d = append(d, fmt.Sprintf("policy_ids: want %q, got %q", sorted(want.PolicyIDs), got.PolicyIDs))
	}
	if want.Shadow != nil {
		switch {
		case got.Shadow == nil:
			d = append(d, "shadow: want an outcome, got none (no @shadow policy in the set?)")
		case want.Shadow.Decision != got.Shadow.Decision:
			d = append(d, fmt.Sprintf("shadow.decision: want %s, got %s", want.Shadow.Decision, got.Shadow.Decision))
		case want.Shadow.Matched != nil && !slices.Equal(sorted(want.Shadow.Matched), got.Shadow.Matched):
			d = append(d, fmt.Sprintf("shadow.matched: want %q, got %q", sorted(want.Shadow.Matched), got.Shadow.Matched))
		}
	}
	if len(d) > 0 && got.Reason != "" {
		d = append(d, "reason: "+got.Reason)
	}
	return d
}

func outcomeText(decision string, code schemas.Code) string {
	if code == "" {
		return decision
	}
	return decision + "/" + string(code)
}

func sorted(s []string) []string {
	out := slices.Clone(s)
	slices.Sort(out)
	return out
}

// Report runs every case file under paths, writes one line per failed
// case (with its diff) and a summary to w, and reports whether all passed.
// verbose also lists passing cases.
func Report(w io.Writer, paths []string, verbose bool) (bool, error) {
	files, err := CaseFiles(paths)
	if err != nil {
		return false, err
	}
	if len(files) == 0 {
		return false, fmt.Errorf("no case files in %s", strings.Join(paths, ", "))
	}
	pass, fail := 0, 0
	var loadErrs []error
	for _, f := range files {
		results, err := RunFile(f)
		if err != nil {
			loadErrs = append(loadErrs, err)
			fmt.Fprintf(w, "ERROR %s: %v\n", f, err)
			continue
		}
		for _, r := range results {
			if r.Passed() {
				pass++
				if verbose {
					fmt.Fprintf(w, "PASS  %s: %s\n", r.File, r.Case)
				}
				continue
			}
			fail++
			fmt.Fprintf(w, "FAIL  %s: %s\n", r.File, r.Case)
			for _, l := range r.Diff {
				fmt.Fprintf(w, "        %s\n", l)
			}
		}
	}
	fmt.Fprintf(w, "%d passed, %d failed, %d file errors, %d files\n", pass, fail, len(loadErrs), len(files))
	return fail == 0 && len(loadErrs) == 0, nil
}
