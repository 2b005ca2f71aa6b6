// Package cli implements the aigov command line. Run takes its IO and
// environment as arguments so tests drive it like a user would.
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
)

// Exit codes.
const (
	ExitAllow = 0
	ExitError = 1
	ExitUsage = 2
	ExitDeny  = 3
)

const usage = `usage: aigov <command> [flags]

commands:
  authorize   send one request and print the decision (exit 0 allow, 3 deny)
  sessions    list live sessions, or revoke by --session, --subject or --issuer (kill switch)
  leases      list live job leases
  audit       audit verify: recompute the audit hash chain against its signed checkpoints
  privacy     privacy export --subject ISS SUB --token-file F: everything the audit holds about a person, decrypted, as
              JSON Lines (governed by privacy.export: privacy officers; the key comes wrapped to a one-time key);
              privacy erase --subject ISS SUB: destroy the person's key (governed by privacy.erase)
  policy      policy test|validate|push: run case files, validate a set, push it (governed by policy.update)
  entities    entities put|get|list|delete: edit the trusted entity store (as the operator user)
  approvals   approvals list|show|approve|reject: review the approval requests that approval_required denies open
  approve     legacy: approve one exact request by digest (approval.grant), for actions no @approval policy covers
  bus         bus provision: create or update the streams, buckets and consumers (as the provisioner)
  keys        keys gen|add|remove|list: event signing keys and the trust file (key rotation)
  dev-certs   make a dev CA and a server certificate (compose, k8s demos; not a production PKI)

Run 'aigov <command> -h' for the command's flags.
`

// Run executes one command and returns the process exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	switch args[0] {
	case "authorize":
		return authorize(ctx, args[1:], stdout, stderr, lookup)
	case "sessions":
		return sessionsCmd(ctx, args[1:], stdout, stderr, lookup)
	case "leases":
		return leasesCmd(ctx, args[1:], stdout, stderr, lookup)
	case "privacy":
		return privacyCmd(ctx, args[1:], stdout, stderr, lookup)
	case "audit":
		return auditCmd(ctx, args[1:], stdout, stderr, lookup)
	case "policy":
		return policyCmd(ctx, args[1:], stdout, stderr, lookup)
	case "entities":
		return entitiesCmd(ctx, args[1:], stdout, stderr, lookup)
	case "approve":
		return approveCmd(ctx, args[1:], stdout, stderr, lookup)
	case "approvals":
		return approvalsCmd(ctx, args[1:], stdout, stderr, lookup)
	case "bus":
		return busCmd(ctx, args[1:], stdout, stderr, lookup)
	case "dev-certs":
		return devCertsCmd(args[1:], stdout, stderr)
	case "keys":
		return keysCmd(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return ExitAllow
	default:
		fmt.Fprintf(stderr, "aigov: unknown command %q\n\n%s", args[0], usage)
		return ExitUsage
	}
}

func env(lookup func(string) (string, bool), key, def string) string {
	if v, ok := lookup(key); ok && v != "" {
		return v
	}
	return def
}

func authorize(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	fs := flag.NewFlagSet("aigov authorize", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bus := addConnFlags(fs, lookup, schemas.RolePlatform)
	var (
		token     = fs.String("token", "", "bearer token (prefer --token-file or $AIGOV_TOKEN: flags show in ps)")
		tokenFile = fs.String("token-file", "", "file holding the bearer token")
		action    = fs.String("action", "", "action, e.g. model.retrain (required)")
		resource  = fs.String("resource", "", "resource as Type:id, e.g. Model:fraud-detector (required)")
		rawCtx    = fs.String("context", "", `request context as a JSON object, e.g. '{"environment":"staging"}'`)
		id        = fs.String("id", "", "request id (idempotency key); default a new UUID")
		source    = fs.String("source", "aigov-cli", "CloudEvents source of the request")
		timeout   = fs.Duration("timeout", 5*time.Second, "how long to wait for the decision")
		asJSON    = fs.Bool("json", false, "print the whole decision as JSON")
	)
	if err := parseArgs(fs, args); err != nil {
		return ExitUsage
	}
	call, err := buildCall(*action, *resource, *rawCtx, *id)
	if err == nil {
		call.Token, err = readToken(*token, *tokenFile, lookup)
	}
	if err != nil {
		fmt.Fprintf(stderr, "aigov authorize: %v\n", err)
		return ExitUsage
	}
	trust, err := bus.trust()
	if err != nil {
		fmt.Fprintf(stderr, "aigov authorize: %v\n", err)
		return ExitUsage
	}

	nc, err := bus.dial(*timeout)
	if err != nil {
		fmt.Fprintf(stderr, "aigov authorize: %v\n", err)
		return ExitError
	}
	defer nc.Close()
	c, err := client.New(nc, client.Options{Prefix: bus.prefix, Source: *source, Timeout: *timeout, Trust: trust})
	if err != nil {
		fmt.Fprintf(stderr, "aigov authorize: %v\n", err)
		return ExitError
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	d, err := c.Authorize(cctx, call)
	if err != nil {
		fmt.Fprintf(stderr, "aigov authorize: %v\n", err)
		return ExitError
	}
	return printDecision(stdout, d, *asJSON)
}

func buildCall(action, resource, rawCtx, id string) (client.Call, error) {
	if action == "" || resource == "" {
		return client.Call{}, errors.New("--action and --resource Type:id are required")
	}
	res, err := parseResource(resource)
	if err != nil {
		return client.Call{}, err
	}
	req := schemas.Request{Action: action, Resource: res}
	if rawCtx != "" {
		if err := json.Unmarshal([]byte(rawCtx), &req.Context); err != nil {
			return client.Call{}, fmt.Errorf("--context must be a JSON object: %w", err)
		}
	}
	if err := req.Validate(); err != nil {
		return client.Call{}, err
	}
	return client.Call{ID: id, Request: req}, nil
}

// parseResource reads a resource as Type:id, or as Cedar writes it,
// Type::"id" — and Type::id, which is what a shell leaves of an unquoted
// Type::"id".
func parseResource(s string) (schemas.Resource, error) {
	typ, id, ok := strings.Cut(s, "::")
	if ok {
		if unq, err := strconv.Unquote(id); err == nil {
			id = unq
		}
	} else {
		typ, id, ok = strings.Cut(s, ":")
	}
	if !ok || typ == "" || id == "" {
		return schemas.Resource{}, fmt.Errorf("--resource %q is malformed: want --resource Type:id, e.g. Model:fraud-detector (or Cedar's Model::\"fraud-detector\")", s)
	}
	return schemas.Resource{Type: typ, ID: id}, nil
}

func readToken(flagToken, file string, lookup func(string) (string, bool)) (string, error) {
	switch {
	case flagToken != "":
		return flagToken, nil
	case file != "":
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("read token: %w", err)
		}
		return strings.TrimSpace(string(b)), nil
	default:
		// No token is allowed: the request is then denied with missing_token,
		// which is how a user sees what aigov does without one.
		return env(lookup, "AIGOV_TOKEN", ""), nil
	}
}

// Summary renders a decision on one line.
func Summary(d schemas.Decision) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-5s %-24s %s", d.Decision, d.Action, d.Resource)
	if d.Code != "" {
		fmt.Fprintf(&b, "  code=%s", d.Code)
	}
	if d.Principal != nil {
		fmt.Fprintf(&b, "  principal=%s", d.Principal.Subject)
	}
	if len(d.PolicyIDs) > 0 {
		fmt.Fprintf(&b, "  policies=%s", strings.Join(d.PolicyIDs, ","))
	}
	if d.ApprovalID != "" {
		fmt.Fprintf(&b, "  approval=%s", d.ApprovalID)
	}
	if d.Reason != "" {
		fmt.Fprintf(&b, "  reason=%q", d.Reason)
	}
	fmt.Fprintf(&b, "  request=%s  %dµs", d.RequestID, d.Timings.TotalMicros)
	return b.String()
}
