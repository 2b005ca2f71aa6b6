package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/policy/engine"
	"github.com/aigov/aigov/services/policy/policytest"
	"github.com/aigov/aigov/services/servicekit/topology"
)

const policyUsage = `usage: aigov policy <test|validate|push> [flags] [args]

  test <dir|file>...  run policy case files (*.json); a diff for each failure, exit 1 if any fails
  validate [dir]      parse the *.cedar files and validate them and entities.json against the schema (default dir: policies)
  push [dir]          stage the set and request policy.update with your token; exit 0 only when it became active
`

// policyCmd is `aigov policy test|validate|push`.
func policyCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return ExitUsage
	}
	switch args[0] {
	case "test":
		return policyTest(args[1:], stdout, stderr)
	case "validate":
		return policyValidate(args[1:], stdout, stderr)
	case "push":
		return policyPush(ctx, args[1:], stdout, stderr, lookup)
	default:
		fmt.Fprintf(stderr, "aigov policy: unknown subcommand %q\n\n%s", args[0], policyUsage)
		return ExitUsage
	}
}

func policyTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("aigov policy test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	verbose := fs.Bool("v", false, "list passing cases too")
	if err := parseArgs(fs, args); err != nil {
		return ExitUsage
	}
	if fs.NArg() == 0 {
		fmt.Fprint(stderr, "aigov policy test: name case files or directories\n")
		return ExitUsage
	}
	ok, err := policytest.Report(stdout, fs.Args(), *verbose)
	if err != nil {
		fmt.Fprintf(stderr, "aigov policy test: %v\n", err)
		return ExitError
	}
	if !ok {
		return ExitError
	}
	return ExitAllow
}

// loadPolicyDir reads and compiles the set in dir, listing every error.
func loadPolicyDir(dir string) (*engine.Set, []string) {
	files, err := engine.ReadDir(dir)
	if err != nil {
		return nil, []string{err.Error()}
	}
	set, err := engine.Compile(files)
	if err != nil {
		return nil, errorLines(err)
	}
	return set, nil
}

// errorLines splits joined errors into one line each, without the common
// "load policy set: " prefix repeated.
func errorLines(err error) []string {
	var lines []string
	for _, l := range strings.Split(err.Error(), "\n") {
		if l = strings.TrimSpace(strings.TrimPrefix(l, "load policy set: ")); l != "" {
			lines = append(lines, l)
		}
	}
	return lines
}

func policyValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("aigov policy validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	entities := fs.String("entities", "", "entities file to validate too (default <dir>/entities.json when present)")
	if err := parseArgs(fs, args); err != nil {
		return ExitUsage
	}
	dir := "policies"
	if fs.NArg() > 1 {
		fmt.Fprint(stderr, "aigov policy validate: at most one directory\n")
		return ExitUsage
	}
	if fs.NArg() == 1 {
		dir = fs.Arg(0)
	}
	set, errs := loadPolicyDir(dir)
	efile := *entities
	if efile == "" {
		if _, err := os.Stat(filepath.Join(dir, "entities.json")); err == nil {
			efile = filepath.Join(dir, "entities.json")
		}
	}
	nEntities := 0
	if set != nil && efile != "" {
		data, err := engine.ReadBounded(efile)
		if err == nil {
			ents, perr := engine.ParseEntities(engine.File{Name: efile, Data: data})
			if err = perr; err == nil {
				nEntities = len(ents)
				err = set.ValidateEntities(ents)
			}
		}
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", efile, err))
		}
	}
	if len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintf(stdout, "ERROR %s\n", e)
		}
		fmt.Fprintf(stdout, "%s: invalid, %d error(s)\n", dir, len(errs))
		return ExitError
	}
	fmt.Fprintf(stdout, "%s: valid, %d policies (%d shadow), %d entities, version %s\n",
		dir, len(set.PolicyIDs()), len(set.ShadowIDs()), nEntities, set.Version())
	return ExitAllow
}

func policyPush(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	fs := flag.NewFlagSet("aigov policy push", flag.ContinueOnError)
	fs.SetOutput(stderr)
	of := addOperatorFlags(fs, lookup)
	var (
		token     = fs.String("token", "", "your bearer token (prefer --token-file or $AIGOV_TOKEN)")
		tokenFile = fs.String("token-file", "", "file holding your bearer token")
		asJSON    = fs.Bool("json", false, "print the whole decision as JSON")
	)
	if err := parseArgs(fs, args); err != nil {
		return ExitUsage
	}
	dir := "policies"
	if fs.NArg() > 1 {
		fmt.Fprint(stderr, "aigov policy push: at most one directory\n")
		return ExitUsage
	}
	if fs.NArg() == 1 {
		dir = fs.Arg(0)
	}
	tok, err := readToken(*token, *tokenFile, lookup)
	if err != nil {
		fmt.Fprintf(stderr, "aigov policy push: %v\n", err)
		return ExitUsage
	}
	// A set that does not validate here would be rejected by the service:
	// say why now instead of spending an approval on it.
	set, errs := loadPolicyDir(dir)
	if len(errs) > 0 {
		for _, e := range errs {
			fmt.Fprintf(stderr, "ERROR %s\n", e)
		}
		fmt.Fprintf(stderr, "aigov policy push: %s is invalid; nothing pushed\n", dir)
		return ExitError
	}
	bundle, hash, err := engine.EncodeBundle(set.Files())
	if err != nil {
		fmt.Fprintf(stderr, "aigov policy push: %v\n", err)
		return ExitError
	}
	nc, js, err := of.connect()
	if err != nil {
		fmt.Fprintf(stderr, "aigov policy push: %v\n", err)
		return ExitError
	}
	defer nc.Close()
	if err := stage(ctx, js, topology.New(of.conn.prefix).BucketPolicyProposals(), engine.HexOf(hash), bundle); err != nil {
		fmt.Fprintf(stderr, "aigov policy push: %v\n", err)
		return ExitError
	}
	fmt.Fprintf(stderr, "staged policy set %s (%d policies, %d shadow)\n", hash, len(set.PolicyIDs()), len(set.ShadowIDs()))
	res := schemas.Resource{Type: schemas.PolicySetType, ID: schemas.PolicySetID}
	pctx := map[string]any{schemas.ContextPolicyHash: hash}
	d, err := of.governed(ctx, nc, tok, schemas.Request{Action: schemas.ActionPolicyUpdate, Resource: res, Context: pctx})
	if err != nil {
		fmt.Fprintf(stderr, "aigov policy push: %v\n", err)
		return ExitError
	}
	code := printDecision(stdout, d, *asJSON)
	if code != ExitAllow && d.ApprovalID != "" {
		fmt.Fprintf(stderr, "not activated; approval request %s awaits the reviewers:\n  aigov approvals show %s\n  aigov approvals approve %s --token-file <reviewer token>\nthen push the same set again (you cannot review your own push).\n",
			d.ApprovalID, d.ApprovalID, d.ApprovalID)
	}
	return code
}

// stage stores the bundle in the proposals bucket under its hash.
func stage(ctx context.Context, js jetstream.JetStream, bucket, key string, bundle []byte) error {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return fmt.Errorf("open bucket %s: %w", bucket, err)
	}
	if _, err := kv.Put(ctx, key, bundle); err != nil {
		return fmt.Errorf("stage policy set in %s: %w", bucket, err)
	}
	return nil
}
