package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/topology"
)

const approvalsUsage = `usage: aigov approvals <list|show|approve|reject> [flags]

  list                 approval requests (newest first); --status pending|approved|rejected|expired|used|all
  show <id>            one approval request: what it approves, who must approve, grants, uses
  approve <id>         grant it with your token (approval.grant naming it)
  reject <id>          reject it with your token; a rejection by any reviewer ends it

An approval request is opened when a request is denied approval_required;
the deny names it (approval_id). Run 'aigov approvals <subcommand> -h' for flags.
`

// maxListedApprovals bounds what approvals list reads.
const maxListedApprovals = 10_000

// approvalsCmd is `aigov approvals list|show|approve|reject`.
func approvalsCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stderr, approvalsUsage)
		return ExitUsage
	}
	sub := args[0]
	fs := flag.NewFlagSet("aigov approvals "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	of := addOperatorFlags(fs, lookup)
	var (
		status    = fs.String("status", "live", "list: pending, approved, rejected, expired, used, live (pending or approved) or all")
		asJSON    = fs.Bool("json", false, "print JSON")
		token     = fs.String("token", "", "approve/reject: the reviewer's bearer token (prefer --token-file or $AIGOV_TOKEN)")
		tokenFile = fs.String("token-file", "", "approve/reject: file holding the reviewer's bearer token")
	)
	switch sub {
	case "list", "show", "approve", "reject":
	default:
		fmt.Fprintf(stderr, "aigov approvals: unknown subcommand %q\n\n%s", sub, approvalsUsage)
		return ExitUsage
	}
	if err := parseArgs(fs, args[1:]); err != nil {
		return ExitUsage
	}
	fail := func(code int, err error) int {
		fmt.Fprintf(stderr, "aigov approvals %s: %v\n", sub, err)
		return code
	}
	if sub != "list" && fs.NArg() != 1 {
		return fail(ExitUsage, errors.New("name one approval request id (apr-...)"))
	}
	cctx, cancel := context.WithTimeout(ctx, *of.timeout)
	defer cancel()
	nc, kv, err := of.bucket(cctx, topology.Topology.BucketApprovalRequests)
	if err != nil {
		return fail(ExitError, err)
	}
	defer nc.Close()
	if sub == "list" {
		list, err := listApprovals(cctx, kv, *status)
		if err != nil {
			return fail(ExitError, err)
		}
		if *asJSON {
			return printJSON(stdout, stderr, list)
		}
		printApprovalTable(stdout, list, time.Now())
		return ExitAllow
	}
	a, err := getApproval(cctx, kv, fs.Arg(0))
	if err != nil {
		return fail(ExitError, err)
	}
	if sub == "show" {
		if *asJSON {
			return printJSON(stdout, stderr, a)
		}
		printApproval(stdout, a, time.Now())
		return ExitAllow
	}
	tok, err := readToken(*token, *tokenFile, lookup)
	if err != nil {
		return fail(ExitUsage, err)
	}
	// The grant carries exactly the request's context, so the reviewer's
	// policies (approval.grant) see what is being approved, and the
	// policy service checks it is the same.
	grantCtx := maps.Clone(a.Context)
	if grantCtx == nil {
		grantCtx = map[string]any{}
	}
	grantCtx[schemas.ContextApprovedAction] = a.Action
	grantCtx[schemas.ContextApprovalID] = a.ID
	grantCtx[schemas.ContextApprovalVerdict] = map[string]string{"approve": schemas.VerdictApprove, "reject": schemas.VerdictReject}[sub]
	fmt.Fprintf(stderr, "%s %s: %s on %s requested by %s (needs %s)\n", sub, a.ID, a.Action, a.Resource, a.RequesterID, a.Progress())
	d, err := of.governed(ctx, nc, tok, schemas.Request{Action: schemas.ActionApprovalGrant, Resource: a.Resource, Context: grantCtx})
	if err != nil {
		return fail(ExitError, err)
	}
	return printDecision(stdout, d, *asJSON)
}

func getApproval(ctx context.Context, kv jetstream.KeyValue, id string) (schemas.ApprovalRequest, error) {
	e, err := kv.Get(ctx, id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return schemas.ApprovalRequest{}, fmt.Errorf("no approval request %q (expired from the bucket, or a typo)", id)
	}
	if err != nil {
		return schemas.ApprovalRequest{}, fmt.Errorf("read approval request %s: %w", id, err)
	}
	var a schemas.ApprovalRequest
	if err := json.Unmarshal(e.Value(), &a); err != nil {
		return schemas.ApprovalRequest{}, fmt.Errorf("decode approval request %s: %w", id, err)
	}
	return a, nil
}

// listApprovals reads the requests whose status matches, newest first.
func listApprovals(ctx context.Context, kv jetstream.KeyValue, status string) ([]schemas.ApprovalRequest, error) {
	switch status {
	case "live", "all", schemas.StatusPending, schemas.StatusApproved, schemas.StatusRejected, schemas.StatusExpired, schemas.StatusUsed:
	default:
		return nil, fmt.Errorf("--status %q: want pending, approved, rejected, expired, used, live or all", status)
	}
	lister, err := kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list approval requests: %w", err)
	}
	defer func() { _ = lister.Stop() }()
	now := time.Now()
	var out []schemas.ApprovalRequest
	n := 0
	for key := range lister.Keys() {
		if n++; n > maxListedApprovals {
			break
		}
		a, err := getApproval(ctx, kv, key)
		if err != nil {
			continue // deleted meanwhile
		}
		st := shownStatus(a, now)
		if status == "all" || st == status || status == "live" && (st == schemas.StatusPending || st == schemas.StatusApproved) {
			out = append(out, a)
		}
	}
	slices.SortFunc(out, func(a, b schemas.ApprovalRequest) int { return b.CreatedAt.Compare(a.CreatedAt) })
	return out, nil
}

// shownStatus is the status a reader should see: a live request past its
// expiry is expired even before policy marks it so.
func shownStatus(a schemas.ApprovalRequest, now time.Time) string {
	if (a.Status == schemas.StatusPending || a.Status == schemas.StatusApproved) && !now.Before(a.ExpiresAt) {
		return schemas.StatusExpired
	}
	return a.Status
}

func printApprovalTable(w io.Writer, list []schemas.ApprovalRequest, now time.Time) {
	if len(list) == 0 {
		fmt.Fprintln(w, "no approval requests")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATUS\tACTION\tRESOURCE\tREQUESTER\tAPPROVALS\tUSES\tEXPIRES")
	for _, a := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\n", a.ID, shownStatus(a, now), a.Action, a.Resource,
			shortPrincipal(a.RequesterID), a.Progress(), a.Uses, a.MaxUses, until(a.ExpiresAt, now))
	}
	tw.Flush()
}

func printApproval(w io.Writer, a schemas.ApprovalRequest, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	ctx, _ := json.Marshal(a.Context)
	rows := [][2]string{
		{"id", a.ID},
		{"status", shownStatus(a, now)},
		{"requested by", a.RequesterID},
		{"action", a.Action},
		{"resource", a.Resource.String()},
		{"context", string(ctx)},
		{"digest", a.Digest},
		{"policy set", a.PolicyVersion},
		{"approvals", a.Progress()},
		{"uses", fmt.Sprintf("%d of %d", a.Uses, a.MaxUses)},
		{"opened", a.CreatedAt.UTC().Format(time.RFC3339) + " by request " + a.RequestID},
		{"expires", a.ExpiresAt.UTC().Format(time.RFC3339) + " (" + until(a.ExpiresAt, now) + ")"},
	}
	if a.RejectedBy != "" || a.Reason != "" {
		rows = append(rows, [2]string{"reason", a.Reason})
	}
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", r[0], r[1])
	}
	tw.Flush()
	if len(a.Requirements) > 0 {
		fmt.Fprintln(w, "\nREQUIRED\tQUORUM\tPOLICY")
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, r := range a.Requirements {
			fmt.Fprintf(tw, "%s\t%d\t%s\n", r.Team, r.Quorum, r.PolicyID)
		}
		tw.Flush()
	}
	if len(a.Grants) > 0 {
		fmt.Fprintln(w)
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "GRANTED BY\tTEAMS\tAT\tREQUEST")
		for _, g := range a.Grants {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.ReviewerID, strings.Join(g.Teams, ","), g.At.UTC().Format(time.RFC3339), g.RequestID)
		}
		tw.Flush()
	}
	if len(a.Rejections) > 0 {
		fmt.Fprintf(w, "\nrejections: %d of the %d that end it\n", len(a.Rejections), max(a.MaxRejections, 1))
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "REJECTED BY\tTEAMS\tAT\tREQUEST")
		for _, g := range a.Rejections {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", g.ReviewerID, strings.Join(g.Teams, ","), g.At.UTC().Format(time.RFC3339), g.RequestID)
		}
		tw.Flush()
	}
	if len(a.UsedBy) > 0 {
		fmt.Fprintf(w, "\nused by requests: %s\n", strings.Join(a.UsedBy, ", "))
	}
}

// shortPrincipal drops the issuer of a principal id (issuer#subject).
func shortPrincipal(id string) string {
	if i := strings.LastIndexByte(id, '#'); i >= 0 && i+1 < len(id) {
		return id[i+1:]
	}
	return id
}

func until(t, now time.Time) string {
	d := t.Sub(now).Round(time.Second)
	if d <= 0 {
		return "expired"
	}
	return "in " + d.String()
}
