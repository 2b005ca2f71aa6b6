package cli

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/audit/chain"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// chUnknownTable is ClickHouse's error code for a table that does not exist.
const chUnknownTable = 60

// auditCmd is `aigov audit verify`: it recomputes the hash chain of every
// audited stream from ClickHouse and checks it against the signed
// checkpoints in the JetStream checkpoint stream (and in the KV bucket
// older versions kept them in, where it is still there). Exit 0 when every chain holds, 3 when one is
// broken (the first broken link is printed), 1 when it cannot check.
func auditCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 || args[0] != "verify" {
		fmt.Fprint(stderr, "usage: aigov audit verify --public-key FILE [--stream NAME] [flags]\n")
		return ExitUsage
	}
	fs := flag.NewFlagSet("aigov audit verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	// The audit's NATS user may read the checkpoint stream; so may the
	// operator's.
	bus := addConnFlags(fs, lookup, schemas.RoleAudit)
	var (
		chAddr  = fs.String("clickhouse", env(lookup, "AIGOV_CLICKHOUSE_ADDR", "127.0.0.1:9000"), "ClickHouse native address ($AIGOV_CLICKHOUSE_ADDR)")
		db      = fs.String("database", env(lookup, "AIGOV_CLICKHOUSE_DATABASE", "aigov"), "audit database ($AIGOV_CLICKHOUSE_DATABASE)")
		chUser  = fs.String("clickhouse-user", env(lookup, "AIGOV_CLICKHOUSE_USER", "default"), "ClickHouse user ($AIGOV_CLICKHOUSE_USER)")
		chPass  = fs.String("clickhouse-password", "", "ClickHouse password (default $AIGOV_CLICKHOUSE_PASSWORD, which is never shown)")
		chTLS   = fs.Bool("clickhouse-tls", env(lookup, "AIGOV_CLICKHOUSE_SECURE", "") == "true", "connect to ClickHouse's secure native port over TLS ($AIGOV_CLICKHOUSE_SECURE)")
		chTLSCA = fs.String("clickhouse-tls-ca", env(lookup, "AIGOV_CLICKHOUSE_TLS_CA", ""), "PEM CA ClickHouse's certificate must chain to; default the system roots ($AIGOV_CLICKHOUSE_TLS_CA)")
		pubPath = fs.String("public-key", env(lookup, "AIGOV_AUDIT_PUBLIC_KEY", ""), "PEM Ed25519 public key of the audit's signing key ($AIGOV_AUDIT_PUBLIC_KEY)")
		stream  = fs.String("stream", "", "verify this stream only (default: every stream with checkpoints)")
		timeout = fs.Duration("timeout", 10*time.Minute, "how long the command may take")
		asJSON  = fs.Bool("json", false, "print JSON")
	)
	if err := parseArgs(fs, args[1:]); err != nil {
		return ExitUsage
	}
	if *pubPath == "" {
		fmt.Fprintln(stderr, "aigov audit verify: --public-key is required")
		return ExitUsage
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	pub, err := signing.LoadPublicKey(*pubPath)
	if err != nil {
		fmt.Fprintf(stderr, "aigov audit verify: %v\n", err)
		return ExitError
	}
	nc, js, err := bus.dialJS(10 * time.Second)
	if err != nil {
		fmt.Fprintf(stderr, "aigov audit verify: %v\n", err)
		return ExitError
	}
	defer nc.Close()
	// A missing checkpoint stream is not an error to stop at: every
	// stream with rows is then reported BROKEN for want of a checkpoint.
	topo := topology.New(bus.prefix)
	store, err := chain.OpenStore(ctx, js, topo, true)
	if err != nil {
		fmt.Fprintf(stderr, "aigov audit verify: %v\n", err)
		return ExitError
	}
	if !store.HasStream() {
		fmt.Fprintf(stderr, "aigov audit verify: the checkpoint stream %s does not exist; every stream with rows will fail\n", topo.StreamAuditCheckpoints())
	}
	chOpts := &ch.Options{Addr: strings.Split(*chAddr, ","), Auth: ch.Auth{Database: *db, Username: *chUser, Password: cmp.Or(*chPass, env(lookup, "AIGOV_CLICKHOUSE_PASSWORD", ""))},
		DialTimeout: 5 * time.Second, ReadTimeout: *timeout}
	if *chTLS {
		chOpts.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		if *chTLSCA != "" {
			pem, err := os.ReadFile(*chTLSCA)
			if err != nil {
				fmt.Fprintf(stderr, "aigov audit verify: %v\n", err)
				return ExitError
			}
			chOpts.TLS.RootCAs = x509.NewCertPool()
			if !chOpts.TLS.RootCAs.AppendCertsFromPEM(pem) {
				fmt.Fprintf(stderr, "aigov audit verify: %s holds no PEM certificate\n", *chTLSCA)
				return ExitError
			}
		}
	}
	conn, err := ch.Open(chOpts)
	if err != nil {
		fmt.Fprintf(stderr, "aigov audit verify: clickhouse: %v\n", err)
		return ExitError
	}
	defer conn.Close()
	streams := []string{*stream}
	if *stream == "" {
		if streams, err = store.Streams(ctx); err != nil {
			fmt.Fprintf(stderr, "aigov audit verify: %v\n", err)
			return ExitError
		}
		// Every stream with rows is verified, checkpoint or not.
		logged, err := chain.LoggedStreams(ctx, conn, *db)
		if err != nil {
			fmt.Fprintf(stderr, "aigov audit verify: %v\n", err)
			return ExitError
		}
		for _, s := range logged {
			if !slices.Contains(streams, s) {
				streams = append(streams, s)
			}
		}
		slices.Sort(streams)
		if len(streams) == 0 {
			fmt.Fprintln(stderr, "aigov audit verify: no checkpoints yet; nothing to verify against")
			return ExitError
		}
	}
	code := ExitAllow
	var reports []chain.Report
	for _, s := range streams {
		cps, err := store.Checkpoints(ctx, s)
		if err != nil {
			fmt.Fprintf(stderr, "aigov audit verify: %v\n", err)
			return ExitError
		}
		// Positions dropped by the retention policy are named by signed
		// retirements; a database from before retention has none.
		rets, err := chain.ReadRetirements(ctx, conn, *db, s)
		var ex *ch.Exception
		if errors.As(err, &ex) && ex.Code == chUnknownTable {
			rets, err = nil, nil
		}
		if err != nil {
			fmt.Fprintf(stderr, "aigov audit verify: %v\n", err)
			return ExitError
		}
		rep, err := chain.VerifyStreamRetired(ctx, conn, *db, s, cps, rets, pub)
		if err != nil {
			fmt.Fprintf(stderr, "aigov audit verify: %v\n", err)
			return ExitError
		}
		reports = append(reports, rep)
		if !rep.OK() {
			code = ExitDeny
		}
		if !*asJSON {
			if rep.OK() {
				fmt.Fprintf(stdout, "%-22s ok      rows %d (seq %d..%d), %d checkpoints matched, signed up to seq %d\n",
					s, rep.Rows, rep.Start+1, rep.LastSeq, rep.Checkpoints, rep.Signed)
			} else {
				fmt.Fprintf(stdout, "%-22s BROKEN  first broken link at seq %d: %s\n", s, rep.Broken.Seq, rep.Broken.Reason)
			}
			// Retired by policy is not missing: reported on its own line.
			for _, sp := range rep.Retired {
				fmt.Fprintf(stdout, "%-22s retired by policy: seq %d..%d (signed retirement)\n", s, sp.From, sp.To)
			}
		}
	}
	if *asJSON {
		_ = json.NewEncoder(stdout).Encode(reports)
	}
	return code
}
