package cli

import (
	"bufio"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	ch "github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/aigov/aigov/schemas"
)

// exportQueries are what aigov holds about a person, one query per kind:
// its decisions, its session events and the approvals it asked for or
// gave. Each reads FINAL, so a redelivered event is exported once, and
// selects the row as JSON fields named by the column aliases.
var exportQueries = []struct {
	kind, query string
	cols        []string
}{
	{"decision", "SELECT event_id, request_id, toString(event_time), action, resource_type, resource_id, principal_id, email, decision, code, reason, context " +
		"FROM %s.decisions FINAL WHERE issuer = ? AND subject = ? ORDER BY event_time_us, event_id",
		[]string{"event_id", "request_id", "time", "action", "resource_type", "resource_id", "principal_id", "email", "decision", "code", "reason", "context"}},
	{"session", "SELECT event_id, type, toString(event_time), session_key, principal_id, sid, reason, `by`, request_id " +
		"FROM %s.session_events FINAL WHERE issuer = ? AND subject = ? ORDER BY event_time_us, event_id",
		[]string{"event_id", "type", "time", "session_key", "principal_id", "sid", "reason", "by", "request_id"}},
	{"approval", "SELECT event_id, type, toString(event_time), approval_id, status, request_id, action, resource_type, resource_id, approver, requester, reason " +
		"FROM %s.approvals FINAL WHERE requester = ? OR approver = ? ORDER BY event_time_us, event_id",
		[]string{"event_id", "type", "time", "approval_id", "status", "request_id", "action", "resource_type", "resource_id", "approver", "requester", "reason"}},
}

// maxExportRows bounds one export per kind.
const maxExportRows = 10_000_000

// privacyCmd is `aigov privacy export --subject ISS SUB`: everything the
// audit tables hold about one data subject, as JSON Lines on stdout (one
// object per event, with "kind"), and the count on stderr as it goes.
func privacyCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) == 0 || args[0] != "export" {
		fmt.Fprint(stderr, "usage: aigov privacy export --subject ISSUER SUBJECT [flags]\n")
		return ExitUsage
	}
	fs := flag.NewFlagSet("aigov privacy export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		chAddr  = fs.String("clickhouse", env(lookup, "AIGOV_CLICKHOUSE_ADDR", "127.0.0.1:9000"), "ClickHouse native address ($AIGOV_CLICKHOUSE_ADDR)")
		db      = fs.String("database", env(lookup, "AIGOV_CLICKHOUSE_DATABASE", "aigov"), "audit database ($AIGOV_CLICKHOUSE_DATABASE)")
		chUser  = fs.String("clickhouse-user", env(lookup, "AIGOV_CLICKHOUSE_USER", "default"), "ClickHouse user ($AIGOV_CLICKHOUSE_USER)")
		chPass  = fs.String("clickhouse-password", "", "ClickHouse password (default $AIGOV_CLICKHOUSE_PASSWORD, which is never shown)")
		chTLS   = fs.Bool("clickhouse-tls", env(lookup, "AIGOV_CLICKHOUSE_SECURE", "") == "true", "connect over TLS ($AIGOV_CLICKHOUSE_SECURE)")
		chTLSCA = fs.String("clickhouse-tls-ca", env(lookup, "AIGOV_CLICKHOUSE_TLS_CA", ""), "PEM CA ClickHouse's certificate must chain to ($AIGOV_CLICKHOUSE_TLS_CA)")
		subject = fs.Bool("subject", false, "the data subject: the next two arguments are its ISSUER and SUBJECT")
		every   = fs.Int("progress-every", 10000, "print progress on stderr every this many events")
		timeout = fs.Duration("timeout", 30*time.Minute, "how long the command may take")
	)
	if err := parseArgs(fs, args[1:]); err != nil {
		return ExitUsage
	}
	if !*subject || fs.NArg() != 2 || fs.Arg(0) == "" || fs.Arg(1) == "" || *every < 1 {
		fmt.Fprintln(stderr, "aigov privacy export: --subject ISSUER SUBJECT is required")
		return ExitUsage
	}
	if !identOK(*db) {
		fmt.Fprintf(stderr, "aigov privacy export: database %q is not a plain identifier\n", *db)
		return ExitUsage
	}
	iss, sub := fs.Arg(0), fs.Arg(1)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	opts := &ch.Options{Addr: strings.Split(*chAddr, ","), Auth: ch.Auth{Database: *db, Username: *chUser, Password: cmp.Or(*chPass, env(lookup, "AIGOV_CLICKHOUSE_PASSWORD", ""))},
		DialTimeout: 5 * time.Second, ReadTimeout: *timeout}
	if *chTLS {
		opts.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
		if *chTLSCA != "" {
			pem, err := os.ReadFile(*chTLSCA)
			if err != nil {
				fmt.Fprintf(stderr, "aigov privacy export: %v\n", err)
				return ExitError
			}
			opts.TLS.RootCAs = x509.NewCertPool()
			if !opts.TLS.RootCAs.AppendCertsFromPEM(pem) {
				fmt.Fprintf(stderr, "aigov privacy export: %s holds no PEM certificate\n", *chTLSCA)
				return ExitError
			}
		}
	}
	conn, err := ch.Open(opts)
	if err != nil {
		fmt.Fprintf(stderr, "aigov privacy export: clickhouse: %v\n", err)
		return ExitError
	}
	defer conn.Close()
	out := bufio.NewWriter(stdout)
	n, err := exportSubject(ctx, conn, *db, iss, sub, out, func(n int) {
		if n%*every == 0 {
			fmt.Fprintf(stderr, "aigov privacy export: %d events…\n", n)
		}
	})
	if ferr := out.Flush(); err == nil {
		err = ferr
	}
	if err != nil {
		fmt.Fprintf(stderr, "aigov privacy export: %v\n", err)
		return ExitError
	}
	fmt.Fprintf(stderr, "aigov privacy export: %d events of %s\n", n, schemas.PrincipalID(iss, sub))
	return ExitAllow
}

func identOK(db string) bool {
	if db == "" || len(db) > 64 {
		return false
	}
	for i, c := range db {
		if !(c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || i > 0 && c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// exportSubject writes every event of issuer+subject as a JSON line and
// calls progress after each; it returns how many it wrote.
func exportSubject(ctx context.Context, conn driver.Conn, db, iss, sub string, w io.Writer, progress func(int)) (int, error) {
	enc := json.NewEncoder(w)
	n := 0
	pid := schemas.PrincipalID(iss, sub)
	for _, q := range exportQueries {
		args := []any{iss, sub}
		if q.kind == "approval" {
			args = []any{pid, pid}
		}
		rows, err := conn.Query(ctx, fmt.Sprintf(q.query+" LIMIT %d", db, maxExportRows), args...)
		if err != nil {
			return n, fmt.Errorf("export %ss: %w", q.kind, err)
		}
		vals := make([]string, len(q.cols))
		ptrs := make([]any, len(q.cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return n, fmt.Errorf("export %ss: %w", q.kind, err)
			}
			obj := map[string]any{"kind": q.kind}
			for i, c := range q.cols {
				if c == "context" && json.Valid([]byte(vals[i])) {
					obj[c] = json.RawMessage(vals[i])
					continue
				}
				obj[c] = vals[i]
			}
			if err := enc.Encode(obj); err != nil {
				rows.Close()
				return n, fmt.Errorf("export: write: %w", err)
			}
			n++
			progress(n)
		}
		err = rows.Err()
		rows.Close()
		if err != nil {
			return n, fmt.Errorf("export %ss: %w", q.kind, err)
		}
	}
	return n, nil
}
