package cli

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/killswitch"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// busFlags are the connection flags of the kill switch commands. They
// connect as the reaper's NATS user by default: it may write the
// revocation bucket and publish session events.
type busFlags struct {
	conn    *connFlags
	timeout *time.Duration
	asJSON  *bool
}

func addBusFlags(fs *flag.FlagSet, lookup func(string) (string, bool)) busFlags {
	return busFlags{
		conn:    addConnFlags(fs, lookup, schemas.RoleReaper),
		timeout: fs.Duration("timeout", 10*time.Second, "how long the command may take"),
		asJSON:  fs.Bool("json", false, "print JSON"),
	}
}

// open connects and builds the kill switch; close releases the connection.
func (b busFlags) open(ctx context.Context) (*killswitch.Switch, func(), error) {
	nc, js, err := b.conn.dialJS(*b.timeout)
	if err != nil {
		return nil, nil, err
	}
	signer, err := b.conn.signer()
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	sw, err := killswitch.New(ctx, js, topology.New(b.conn.prefix), signer, time.Now)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	return sw, func() { _ = nc.Drain() }, nil
}

// sessionsCmd is `aigov sessions list|revoke`.
func sessionsCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 || (args[0] != "list" && args[0] != "revoke") {
		fmt.Fprint(stderr, "usage: aigov sessions list [flags] | aigov sessions revoke (--session KEY | --subject SUB [--issuer ISS] | --issuer ISS) --reason TEXT [flags]\n")
		return ExitUsage
	}
	fs := flag.NewFlagSet("aigov sessions "+args[0], flag.ContinueOnError)
	fs.SetOutput(stderr)
	bus := addBusFlags(fs, lookup)
	var (
		session = fs.String("session", "", "revoke: the session key")
		subject = fs.String("subject", "", "revoke: every live session of this subject (at --issuer when given)")
		issuer  = fs.String("issuer", "", "revoke: every live session of this issuer (or scopes --subject)")
		reason  = fs.String("reason", "", "revoke: why (required; audited)")
		by      = fs.String("by", env(lookup, "USER", "operator"), "revoke: who (audited)")
		limit   = fs.Int("limit", 1000, "list: at most this many")
	)
	if err := parseArgs(fs, args[1:]); err != nil {
		return ExitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, *bus.timeout)
	defer cancel()
	sw, closeFn, err := bus.open(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "aigov: %v\n", err)
		return ExitError
	}
	defer closeFn()
	if args[0] == "list" {
		list, err := sw.Sessions(ctx, *limit)
		if err != nil {
			fmt.Fprintf(stderr, "aigov: %v\n", err)
			return ExitError
		}
		if *bus.asJSON {
			return printJSON(stdout, stderr, list)
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SESSION\tPRINCIPAL\tSID\tFIRST SEEN\tLAST SEEN\tREQUESTS")
		for _, s := range list {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", s.SessionKey, s.PrincipalID, s.SessionID,
				s.FirstSeen.Format(time.RFC3339), s.LastSeen.Format(time.RFC3339), s.TokenCount)
		}
		_ = tw.Flush()
		return ExitAllow
	}
	if *reason == "" || (*session == "" && *subject == "" && *issuer == "") {
		fmt.Fprint(stderr, "aigov sessions revoke: give --session, --subject or --issuer, and --reason\n")
		return ExitUsage
	}
	res, err := sw.Revoke(ctx, killswitch.Selector{SessionKey: *session, Subject: *subject, Issuer: *issuer}, *by, *reason)
	if err != nil {
		fmt.Fprintf(stderr, "aigov: %v\n", err)
		return ExitError
	}
	if *bus.asJSON {
		return printJSON(stdout, stderr, res)
	}
	fmt.Fprintf(stdout, "revoked %d session(s), %d already ended, %d job lease(s) ended\n", len(res.Revoked), len(res.AlreadyEnded), len(res.Leases))
	for _, k := range res.Revoked {
		fmt.Fprintf(stdout, "  %s\n", k)
	}
	return ExitAllow
}

// leasesCmd is `aigov leases list`.
func leasesCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 || args[0] != "list" {
		fmt.Fprint(stderr, "usage: aigov leases list [flags]\n")
		return ExitUsage
	}
	fs := flag.NewFlagSet("aigov leases list", flag.ContinueOnError)
	fs.SetOutput(stderr)
	bus := addBusFlags(fs, lookup)
	limit := fs.Int("limit", 1000, "at most this many")
	if err := parseArgs(fs, args[1:]); err != nil {
		return ExitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, *bus.timeout)
	defer cancel()
	sw, closeFn, err := bus.open(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "aigov: %v\n", err)
		return ExitError
	}
	defer closeFn()
	list, err := sw.Leases(ctx, *limit)
	if err != nil {
		fmt.Fprintf(stderr, "aigov: %v\n", err)
		return ExitError
	}
	if *bus.asJSON {
		return printJSON(stdout, stderr, list)
	}
	tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LEASE\tPRINCIPAL\tRESOURCE\tDEADLINE\tMAX\tHEARTBEATS")
	for _, l := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\n", l.LeaseID, l.PrincipalID, l.Resource, l.Deadline.Format(time.RFC3339),
			l.MaxDeadline.Format(time.RFC3339), l.Heartbeats)
	}
	_ = tw.Flush()
	return ExitAllow
}

func printJSON(stdout, stderr io.Writer, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "aigov: %v\n", err)
		return ExitError
	}
	return ExitAllow
}
