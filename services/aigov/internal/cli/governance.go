package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// operatorFlags are the connection flags of the governance commands
// (policy push, entities, approve). They connect as the operator NATS user
// by default: it may stage policy sets, edit the entity store and send
// governed requests, and nothing else.
type operatorFlags struct {
	conn    *connFlags
	timeout *time.Duration
}

func addOperatorFlags(fs *flag.FlagSet, lookup func(string) (string, bool)) operatorFlags {
	return operatorFlags{
		conn:    addConnFlags(fs, lookup, schemas.RoleOperator),
		timeout: fs.Duration("timeout", 10*time.Second, "how long the command may take"),
	}
}

// connect opens the operator connection; close drains it.
func (o operatorFlags) connect() (*nats.Conn, jetstream.JetStream, error) {
	return o.conn.dialJS(*o.timeout)
}

// bucket connects and opens the KV bucket that name picks from the
// topology; the caller closes the connection.
func (o operatorFlags) bucket(ctx context.Context, name func(topology.Topology) string) (*nats.Conn, jetstream.KeyValue, error) {
	nc, js, err := o.connect()
	if err != nil {
		return nil, nil, err
	}
	bucket := name(topology.New(o.conn.prefix))
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	return nc, kv, nil
}

// governed sends one request with the caller's token on nc and waits for
// its decision.
func (o operatorFlags) governed(ctx context.Context, nc *nats.Conn, token string, req schemas.Request) (schemas.Decision, error) {
	trust, err := o.conn.trust()
	if err != nil {
		return schemas.Decision{}, err
	}
	c, err := client.New(nc, client.Options{Prefix: o.conn.prefix, Source: "aigov-cli", Timeout: *o.timeout, Trust: trust})
	if err != nil {
		return schemas.Decision{}, err
	}
	defer c.Close()
	cctx, cancel := context.WithTimeout(ctx, *o.timeout)
	defer cancel()
	return c.Authorize(cctx, client.Call{Token: token, Request: req})
}

// printDecision writes a decision as JSON or one line and maps it to the
// exit code.
func printDecision(stdout io.Writer, d schemas.Decision, asJSON bool) int {
	if asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		_ = enc.Encode(d)
	} else {
		fmt.Fprintln(stdout, Summary(d))
	}
	if d.Allowed() {
		return ExitAllow
	}
	return ExitDeny
}

// approveCmd is `aigov approve`: a reviewer's approval.grant of one exact
// request, named by the action, resource and context the requester will
// send. The digest is what the approval is bound to.
//
// Legacy (docs/approvals.md): digest approvals count only for actions no
// @approval policy names, and no action of the repository's set is such
// an action any more; they stay for sets of operators' own until those
// move to approval requests.
func approveCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	fs := flag.NewFlagSet("aigov approve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	of := addOperatorFlags(fs, lookup)
	var (
		action    = fs.String("action", "", "the action being approved, e.g. model.deploy (required)")
		resource  = fs.String("resource", "", "the resource being approved as Type:id (required)")
		rawCtx    = fs.String("context", "", `the context of the request being approved, e.g. '{"environment":"production"}'`)
		token     = fs.String("token", "", "the approver's bearer token (prefer --token-file or $AIGOV_TOKEN)")
		tokenFile = fs.String("token-file", "", "file holding the approver's bearer token")
		asJSON    = fs.Bool("json", false, "print the whole decision as JSON")
	)
	if err := parseArgs(fs, args); err != nil {
		return ExitUsage
	}
	call, err := buildCall(*action, *resource, *rawCtx, "")
	if err == nil {
		call.Token, err = readToken(*token, *tokenFile, lookup)
	}
	if err != nil {
		fmt.Fprintf(stderr, "aigov approve: %v\n", err)
		return ExitUsage
	}
	approved := call.Request
	digest, err := schemas.ApprovalDigest(approved.Action, approved.Resource, approved.Context)
	if err != nil {
		fmt.Fprintf(stderr, "aigov approve: %v\n", err)
		return ExitUsage
	}
	grantCtx := map[string]any{schemas.ContextApprovedAction: approved.Action}
	for k, v := range approved.Context {
		grantCtx[k] = v
	}
	grantCtx[schemas.ContextApprovedAction] = approved.Action
	fmt.Fprintf(stderr, "legacy digest approval (counts only for actions no @approval policy names; see docs/approvals.md): approving %s on %s, digest %s\n", approved.Action, approved.Resource, digest)
	nc, _, err := of.connect()
	if err != nil {
		fmt.Fprintf(stderr, "aigov approve: %v\n", err)
		return ExitError
	}
	defer nc.Close()
	d, err := of.governed(ctx, nc, call.Token, schemas.Request{Action: schemas.ActionApprovalGrant, Resource: approved.Resource, Context: grantCtx})
	if err != nil {
		fmt.Fprintf(stderr, "aigov approve: %v\n", err)
		return ExitError
	}
	return printDecision(stdout, d, *asJSON)
}
