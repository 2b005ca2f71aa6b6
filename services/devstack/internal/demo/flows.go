package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devstack/internal/stack"
	"github.com/aigov/aigov/services/devstack/internal/webhook"
)

// A Flow is a governance story the demo plays with the aigov CLI, as a user
// would type it: each step is one command, run by bash exactly as printed.
type Flow struct {
	Name  string
	Steps []Step
}

// Step is one aigov command and the decision it must print.
type Step struct {
	// Persona's token is the one the command presents.
	Persona string
	// Role is the NATS role whose env file the command sources.
	Role string
	// Args follow "aigov"; {tokens}, {work} and {approval_id} (of the last
	// decision that named one) are filled in when the flow is played.
	Args []string
	// Decision and Code are what the command must print; Policy, when set,
	// must be among the determining policies.
	Decision string
	Code     schemas.Code
	Policy   string
}

// addedPolicyFile and addedPolicy are the change the policy flow pushes:
// the repository's set plus this permit.
const (
	addedPolicyFile = "ml-platform-endpoints.cedar"
	addedPolicy     = `// Added by the demo's policy change: the platform team may call the serving endpoints.
@id("ml-platform-invoke-endpoints")
permit (principal in Group::"ml-platform", action == Action::"endpoint.invoke", resource is Endpoint);
`
)

// Flows are the two governance flows that need more than one request: a
// production release, which takes a second factor and two risk reviewers'
// approval of the approval request the first deny opens, used once; and a
// policy change, which takes a policy admin's push and two risk reviewers'
// approval of the approval request it opens for exactly that set, after
// which a push of the same set has nothing left to activate.
func Flows() []Flow {
	deploy := []string{"--action", "model.deploy", "--resource", "Model:churn-predictor", "--context", `{"environment":"production"}`}
	invoke := []string{"--action", "endpoint.invoke", "--resource", "Endpoint:fraud-scoring"}
	authorize := func(persona string, args []string) []string {
		return append([]string{"authorize", "--token-file", "{tokens}/" + persona + ".jwt"}, args...)
	}
	return []Flow{
		{Name: "production release", Steps: []Step{
			{Persona: "fiona", Role: schemas.RolePlatform, Args: authorize("fiona", deploy),
				Decision: schemas.Deny, Code: schemas.CodeApprovalRequired, Policy: "production-release-needs-risk-approval"},
			{Persona: "rita", Role: schemas.RoleOperator, Args: []string{"approvals", "approve", "{approval_id}", "--token-file", "{tokens}/rita.jwt"},
				Decision: schemas.Allow, Policy: "risk-reviewers-approve-production-releases"},
			{Persona: "ravi", Role: schemas.RoleOperator, Args: []string{"approvals", "approve", "{approval_id}", "--token-file", "{tokens}/ravi.jwt"},
				Decision: schemas.Allow, Policy: "risk-reviewers-approve-production-releases"},
			{Persona: "fiona", Role: schemas.RolePlatform, Args: authorize("fiona", deploy),
				Decision: schemas.Allow, Policy: "ml-platform-release-production-with-approval"},
			{Persona: "fiona", Role: schemas.RolePlatform, Args: authorize("fiona", deploy),
				Decision: schemas.Deny, Code: schemas.CodeApprovalUsed, Policy: "production-release-needs-risk-approval"},
			{Persona: "erin", Role: schemas.RolePlatform, Args: authorize("erin", deploy),
				Decision: schemas.Deny, Code: schemas.CodePolicyDenied, Policy: "production-changes-need-mfa"},
		}},
		{Name: "policy change", Steps: []Step{
			{Persona: "erin", Role: schemas.RolePlatform, Args: authorize("erin", invoke),
				Decision: schemas.Deny, Code: schemas.CodePolicyDenied},
			{Persona: "paul", Role: schemas.RoleOperator, Args: []string{"policy", "push", "{work}/policy-change", "--token-file", "{tokens}/paul.jwt"},
				Decision: schemas.Deny, Code: schemas.CodeApprovalRequired},
			{Persona: "rita", Role: schemas.RoleOperator, Args: []string{"approvals", "approve", "{approval_id}", "--token-file", "{tokens}/rita.jwt"},
				Decision: schemas.Allow, Policy: "risk-reviewers-approve-policy-updates"},
			{Persona: "ravi", Role: schemas.RoleOperator, Args: []string{"approvals", "approve", "{approval_id}", "--token-file", "{tokens}/ravi.jwt"},
				Decision: schemas.Allow, Policy: "risk-reviewers-approve-policy-updates"},
			{Persona: "paul", Role: schemas.RoleOperator, Args: []string{"policy", "push", "{work}/policy-change", "--token-file", "{tokens}/paul.jwt"},
				Decision: schemas.Allow, Policy: "policy-admins-update-policies"},
			{Persona: "erin", Role: schemas.RolePlatform, Args: authorize("erin", invoke),
				Decision: schemas.Allow, Policy: "ml-platform-invoke-endpoints"},
			{Persona: "paul", Role: schemas.RoleOperator, Args: []string{"policy", "push", "{work}/policy-change", "--token-file", "{tokens}/paul.jwt"},
				Decision: schemas.Deny, Code: schemas.CodePolicyInvalid},
		}},
	}
}

// StepResult is what one step printed.
type StepResult struct {
	Flow, Command string
	Step          Step
	Decision      string
	Code          string
	Policies      []string
	// ApprovalID is the approval request the decision named, if any.
	ApprovalID string
	Err        error
}

// OK reports whether the step printed the decision it must.
func (r StepResult) OK() bool {
	return r.Err == nil && r.Decision == r.Step.Decision && r.Code == string(r.Step.Code) &&
		(r.Step.Policy == "" || slices.Contains(r.Policies, r.Step.Policy))
}

// Paths locate what the flows' commands use: the repository root they run
// in, the work directory (.run under make run) holding env/, tokens/ and
// the pushed set, and the directory of the aigov binary.
type Paths struct {
	Root, Work, Bin string
}

// rel shows a path as the user would type it from the repository root.
func (p Paths) rel(path string) string {
	if r, err := filepath.Rel(p.Root, path); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return path
}

// stepWait bounds how long a step waits for what the previous one
// changed: an approval or an activation reaches the policy service through
// its KV watch, a few milliseconds after the command that made it returned.
const stepWait = 10 * time.Second

var (
	summaryCode     = regexp.MustCompile(`\bcode=(\S+)`)
	summaryPolicies = regexp.MustCompile(`\bpolicies=(\S+)`)
	approvalID      = regexp.MustCompile(`\bapproval=(apr-[0-9a-f]+)`)
)

// PlayFlows writes the policy change the second flow pushes (policies/ plus
// one permit, into Work/policy-change), then runs every step with bash from
// the repository root and prints each command and its outcome. The stack's
// env files must be in Work/env.
func PlayFlows(ctx context.Context, st *stack.Stack, p Paths, out io.Writer) ([]StepResult, error) {
	if err := writePolicyChange(st.Root, filepath.Join(p.Work, "policy-change")); err != nil {
		return nil, err
	}
	var results []StepResult
	approval := ""
	var seen uint64 // the webhook notes printed so far
	for _, f := range Flows() {
		fmt.Fprintf(out, "\n-- %s\n", f.Name)
		for _, s := range f.Steps {
			cmd := p.command(s, approval)
			fmt.Fprintf(out, "[%s] $ %s\n", s.Persona, cmd)
			r := StepResult{Flow: f.Name, Command: cmd, Step: s}
			deadline := time.Now().Add(stepWait)
			for {
				// A fresh login per command: the demo's sessions end after
				// seconds, and a step may wait for a watch.
				if err := st.WriteTokens(ctx, filepath.Join(p.Work, "tokens")); err != nil {
					return results, err
				}
				stdout, stderr, err := runBash(ctx, st.Root, cmd)
				r.Decision, r.Code, r.Policies, r.Err = parseSummary(stdout, err)
				r.ApprovalID = ""
				if m := approvalID.FindStringSubmatch(stdout); m != nil {
					approval, r.ApprovalID = m[1], m[1]
				}
				if r.OK() || time.Now().After(deadline) || ctx.Err() != nil {
					if r.Err != nil {
						r.Err = fmt.Errorf("%w: %s", r.Err, strings.TrimSpace(stderr))
					}
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			fmt.Fprintf(out, "    %s %s %s\n", r.Decision, dash(r.Code), dash(strings.Join(r.Policies, ",")))
			seen = printNotes(ctx, st, s, r, approval, seen, out)
			results = append(results, r)
		}
	}
	return results, nil
}

// noteWait bounds how long a step waits for the webhook delivery it
// causes: the policy service sends it right after the decision.
const noteWait = 5 * time.Second

// printNotes prints the webhook deliveries that arrived since note seen,
// after waiting for the one step r must cause, if any: the "requested" of
// the approval request a deny opened, or the "granted" of a review. It
// returns the last note printed. Without a receiver it prints nothing.
func printNotes(ctx context.Context, st *stack.Stack, s Step, r StepResult, approval string, seen uint64, out io.Writer) uint64 {
	if st.Webhooks == nil {
		return seen
	}
	want := ""
	switch {
	case r.Code == string(schemas.CodeApprovalRequired) || r.Code == string(schemas.CodeApprovalUsed):
		want = schemas.ApprovalRequested
	case len(s.Args) > 1 && s.Args[0] == "approvals" && s.Args[1] == "approve" && r.Decision == schemas.Allow:
		want = schemas.ApprovalGranted
	}
	if want != "" && approval != "" {
		wctx, cancel := context.WithTimeout(ctx, noteWait)
		_, err := st.Webhooks.Wait(wctx, func(n webhook.Note) bool { return n.Seq > seen && n.ApprovalID == approval && n.Event == want })
		cancel()
		if err != nil {
			fmt.Fprintf(out, "    (no webhook delivery of %s %s within %s)\n", approval, want, noteWait)
		}
	}
	for _, n := range st.Webhooks.Since(seen) {
		fmt.Fprintf(out, "    %s\n", n)
		seen = n.Seq
	}
	return seen
}

// command is the shell line of a step: source the role's env file, run the
// aigov binary.
func (p Paths) command(s Step, approval string) string {
	fill := strings.NewReplacer("{tokens}", p.rel(filepath.Join(p.Work, "tokens")), "{work}", p.rel(p.Work), "{approval_id}", approval)
	args := make([]string, len(s.Args))
	for i, a := range s.Args {
		args[i] = shellQuote(fill.Replace(a))
	}
	return fmt.Sprintf("(set -a; . %s; %s %s)", p.rel(filepath.Join(p.Work, "env", s.Role+".env")),
		p.rel(filepath.Join(p.Bin, "aigov")), strings.Join(args, " "))
}

// shellQuote single-quotes what bash would otherwise split or expand.
func shellQuote(s string) string {
	if s != "" && !strings.ContainsAny(s, " \t\n'\"{}$*?[]|&;<>()\\`!#~") {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func runBash(ctx context.Context, dir, line string) (string, string, error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(cctx, "bash", "-c", line)
	cmd.Dir = dir
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// parseSummary reads the CLI's one-line decision (cli.Summary) and its exit
// status: 0 allow, 3 deny, anything else no decision.
func parseSummary(stdout string, runErr error) (decision, code string, policies []string, err error) {
	var ee *exec.ExitError
	switch {
	case runErr == nil:
	case errors.As(runErr, &ee) && ee.ExitCode() == 3:
	default:
		return "error", "", nil, fmt.Errorf("aigov: %w", runErr)
	}
	fields := strings.Fields(stdout)
	if len(fields) == 0 {
		return "error", "", nil, errors.New("aigov printed no decision")
	}
	decision = fields[0]
	if m := summaryCode.FindStringSubmatch(stdout); m != nil {
		code = m[1]
	}
	if m := summaryPolicies.FindStringSubmatch(stdout); m != nil {
		policies = strings.Split(m[1], ",")
	}
	return decision, code, policies, nil
}

// writePolicyChange copies the repository's policy set and adds one permit.
func writePolicyChange(root, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("policy change: %w", err)
	}
	src := filepath.Join(root, "policies")
	entries, err := os.ReadDir(src)
	if err != nil {
		return fmt.Errorf("policy change: %w", err)
	}
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			return fmt.Errorf("policy change: %w", err)
		}
		if err := os.WriteFile(filepath.Join(dir, e.Name()), b, 0o644); err != nil {
			return fmt.Errorf("policy change: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, addedPolicyFile), []byte(addedPolicy), 0o644); err != nil {
		return fmt.Errorf("policy change: %w", err)
	}
	return nil
}

// PrintFlows writes the flows' table.
func PrintFlows(w io.Writer, results []StepResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "FLOW\tWHO\tCOMMAND\tDECISION\tCODE\tPOLICY\tOK")
	for _, r := range results {
		ok := "yes"
		if !r.OK() {
			ok = fmt.Sprintf("NO (want %s %s %s)", r.Step.Decision, dash(string(r.Step.Code)), dash(r.Step.Policy))
			if r.Err != nil {
				ok += ": " + r.Err.Error()
			}
		}
		what := strings.Join(r.Step.Args[:min(2, len(r.Step.Args))], " ")
		if r.Step.Args[0] == "authorize" || r.Step.Args[0] == "approve" {
			what = r.Step.Args[0] + " " + argAfter(r.Step.Args, "--action")
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Flow, r.Step.Persona, what, r.Decision, dash(r.Code),
			dash(strings.Join(r.Policies, ",")), ok)
	}
	tw.Flush()
}

func argAfter(args []string, flag string) string {
	if i := slices.Index(args, flag); i >= 0 && i+1 < len(args) {
		return args[i+1]
	}
	return ""
}
