package cli

import (
	"bufio"
	"cmp"
	"context"
	"crypto/ecdh"
	"crypto/rand"
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
	"github.com/aigov/aigov/services/servicekit/personal"
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

// privacyCmd is `aigov privacy export|erase --subject ISS SUB`.
func privacyCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	if len(args) > 0 && args[0] == "erase" {
		return eraseCmd(ctx, args[1:], stdout, stderr, lookup)
	}
	if len(args) == 0 || args[0] != "export" {
		fmt.Fprint(stderr, "usage: aigov privacy export|erase --subject ISSUER SUBJECT [flags]\n")
		return ExitUsage
	}
	return exportCmd(ctx, args[1:], stdout, stderr, lookup)
}

// exportCmd is `aigov privacy export --subject ISS SUB`: the governed
// request privacy.export (Cedar decides it, the decision is audited like
// any other: in the shipped policies, privacy officers only), answered
// with the subject's key wrapped to an ephemeral X25519 key this command
// makes and forgets; then everything the audit tables hold about the
// person, as JSON Lines on stdout (one object per event, with "kind"),
// its sealed fields opened with that key, and the count on stderr as it
// goes. Denied, it reads nothing.
func exportCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	fs := flag.NewFlagSet("aigov privacy export", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		chAddr    = fs.String("clickhouse", env(lookup, "AIGOV_CLICKHOUSE_ADDR", "127.0.0.1:9000"), "ClickHouse native address ($AIGOV_CLICKHOUSE_ADDR)")
		db        = fs.String("database", env(lookup, "AIGOV_CLICKHOUSE_DATABASE", "aigov"), "audit database ($AIGOV_CLICKHOUSE_DATABASE)")
		chUser    = fs.String("clickhouse-user", env(lookup, "AIGOV_CLICKHOUSE_USER", "default"), "ClickHouse user ($AIGOV_CLICKHOUSE_USER)")
		chPass    = fs.String("clickhouse-password", "", "ClickHouse password (default $AIGOV_CLICKHOUSE_PASSWORD, which is never shown)")
		chTLS     = fs.Bool("clickhouse-tls", env(lookup, "AIGOV_CLICKHOUSE_SECURE", "") == "true", "connect over TLS ($AIGOV_CLICKHOUSE_SECURE)")
		chTLSCA   = fs.String("clickhouse-tls-ca", env(lookup, "AIGOV_CLICKHOUSE_TLS_CA", ""), "PEM CA ClickHouse's certificate must chain to ($AIGOV_CLICKHOUSE_TLS_CA)")
		subject   = fs.Bool("subject", false, "the data subject: the next two arguments are its ISSUER and SUBJECT")
		every     = fs.Int("progress-every", 10000, "print progress on stderr every this many events")
		timeout   = fs.Duration("timeout", 30*time.Minute, "how long the command may take")
		decideIn  = fs.Duration("decision-timeout", 10*time.Second, "how long to wait for the privacy.export decision")
		token     = fs.String("token", "", "your bearer token, a privacy officer's (prefer --token-file or $AIGOV_TOKEN)")
		tokenFile = fs.String("token-file", "", "file holding your bearer token")
	)
	// The bus carries the governed request only: the operator's
	// credential cannot read any subject key.
	conn := addConnFlags(fs, lookup, schemas.RoleOperator)
	if err := parseArgs(fs, args); err != nil {
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
	tok, err := readToken(*token, *tokenFile, lookup)
	if err != nil {
		fmt.Fprintf(stderr, "aigov privacy export: %v\n", err)
		return ExitUsage
	}
	iss, sub := fs.Arg(0), fs.Arg(1)
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	key, d, err := governedExport(ctx, operatorFlags{conn: conn, timeout: decideIn}, tok, iss, sub)
	if err != nil {
		fmt.Fprintf(stderr, "aigov privacy export: %v\n", err)
		return ExitError
	}
	if !d.Allowed() {
		fmt.Fprintf(stderr, "aigov privacy export: not allowed: %s\n", Summary(d))
		return ExitDeny
	}
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
	db2, err := ch.Open(opts)
	if err != nil {
		fmt.Fprintf(stderr, "aigov privacy export: clickhouse: %v\n", err)
		return ExitError
	}
	defer db2.Close()
	out := bufio.NewWriter(stdout)
	n, err := exportSubject(ctx, db2, *db, iss, sub, key, out, func(n int) {
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
	pid := schemas.PrincipalID(iss, sub)
	fmt.Fprintf(stderr, "aigov privacy export: %d events of %s (allowed: request %s)\n", n, pid, d.RequestID)
	switch {
	case key.erased:
		fmt.Fprintf(stderr, "aigov privacy export: %s WAS ERASED: its key is destroyed, and %d sealed values are exported as stored (enc:v1:…), readable by no one\n", pid, key.unreadable)
	case key.unreadable > 0:
		fmt.Fprintf(stderr, "aigov privacy export: %d sealed values of %s do not open under its key: sealed under an earlier key, erased before this subject came back\n", key.unreadable, pid)
	}
	return ExitAllow
}

// governedExport sends privacy.export for issuer+subject with a fresh
// ephemeral X25519 public key and, allowed, unwraps the subject's key
// from the reply. The private key never leaves this function.
func governedExport(ctx context.Context, of operatorFlags, token, iss, sub string) (*subjectKey, schemas.Decision, error) {
	priv, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, schemas.Decision{}, fmt.Errorf("ephemeral key: %w", err)
	}
	keyID := personal.SubjectKeyID(iss, sub)
	nc, _, err := of.connect()
	if err != nil {
		return nil, schemas.Decision{}, err
	}
	defer nc.Close()
	req := schemas.Request{Action: schemas.ActionPrivacyExport, Resource: schemas.Resource{Type: schemas.DataSubjectsType, ID: schemas.DataSubjectsID},
		Context: map[string]any{schemas.ContextSubjectKeyID: keyID, schemas.ContextSubjectIssuer: iss, schemas.ContextSubjectSub: sub,
			schemas.ContextExportPublicKey: personal.ExportPublicKey(priv)}}
	d, err := of.governed(ctx, nc, token, req)
	if err != nil || !d.Allowed() {
		return nil, d, err
	}
	k := &subjectKey{id: keyID}
	switch d.WrappedSubjectKey {
	case "":
		// A redelivered request is answered from the stored decision,
		// which never holds the key: ask again.
		return nil, d, fmt.Errorf("request %s was allowed but its reply carries no wrapped key (a redelivery?): run the export again", d.RequestID)
	case schemas.WrappedKeyErased:
		k.erased = true
	default:
		if k.key, err = personal.UnwrapKey(priv, d.WrappedSubjectKey, keyID, d.RequestID); err != nil {
			return nil, d, err
		}
	}
	return k, d, nil
}

// subjectKey opens the sealed values of one subject's rows with the key
// the allowed privacy.export returned (nil when erased). Values that do
// not open are exported as stored, counted.
type subjectKey struct {
	id         string
	key        []byte
	erased     bool
	unreadable int
}

func (k *subjectKey) open(ctx context.Context, field, v string) (string, error) {
	if !strings.HasPrefix(v, personal.CipherPrefix) {
		return v, nil
	}
	if k.key == nil {
		k.unreadable++
		return v, nil
	}
	plain, err := personal.Decrypt(k.key, field, v)
	if err != nil {
		k.unreadable++
		return v, nil
	}
	return plain, nil
}

// openContext opens the sealed top-level values of a context column.
func (k *subjectKey) openContext(ctx context.Context, raw string) (json.RawMessage, error) {
	if !strings.Contains(raw, personal.CipherPrefix) {
		return json.RawMessage(raw), nil
	}
	var c map[string]json.RawMessage
	if err := json.Unmarshal([]byte(raw), &c); err != nil {
		return json.RawMessage(raw), nil
	}
	for f, v := range c {
		var s string
		if json.Unmarshal(v, &s) != nil || !strings.HasPrefix(s, personal.CipherPrefix) {
			continue
		}
		plain, err := k.open(ctx, personal.FieldContextPrefix+f, s)
		if err != nil {
			return nil, err
		}
		if plain != s && json.Valid([]byte(plain)) {
			c[f] = json.RawMessage(plain)
		}
	}
	b, err := json.Marshal(c)
	if err != nil {
		return nil, fmt.Errorf("export: context: %w", err)
	}
	return b, nil
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
func exportSubject(ctx context.Context, conn driver.Conn, db, iss, sub string, key *subjectKey, w io.Writer, progress func(int)) (int, error) {
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
				v := vals[i]
				switch {
				case c == "context" && json.Valid([]byte(v)):
					raw, err := key.openContext(ctx, v)
					if err != nil {
						rows.Close()
						return n, err
					}
					obj[c] = raw
					continue
				case c == "email":
					var err error
					if v, err = key.open(ctx, personal.FieldEmail, v); err != nil {
						rows.Close()
						return n, err
					}
				}
				obj[c] = v
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

// eraseCmd is `aigov privacy erase --subject ISS SUB`: the governed
// request privacy.erase for that subject's key id. Cedar decides it (in
// the shipped policies: asked by a policy admin, approved by two risk
// reviewers); once allowed, the policy service destroys the key and
// publishes the subject_erased governance event. The operator's
// credential cannot touch the key itself.
func eraseCmd(ctx context.Context, args []string, stdout, stderr io.Writer, lookup func(string) (string, bool)) int {
	fs := flag.NewFlagSet("aigov privacy erase", flag.ContinueOnError)
	fs.SetOutput(stderr)
	of := addOperatorFlags(fs, lookup)
	var (
		subject   = fs.Bool("subject", false, "the data subject: the next two arguments are its ISSUER and SUBJECT")
		token     = fs.String("token", "", "your bearer token (prefer --token-file or $AIGOV_TOKEN)")
		tokenFile = fs.String("token-file", "", "file holding your bearer token")
		asJSON    = fs.Bool("json", false, "print the decision as JSON")
	)
	if err := parseArgs(fs, args); err != nil {
		return ExitUsage
	}
	if !*subject || fs.NArg() != 2 || fs.Arg(0) == "" || fs.Arg(1) == "" {
		fmt.Fprintln(stderr, "aigov privacy erase: --subject ISSUER SUBJECT is required")
		return ExitUsage
	}
	tok, err := readToken(*token, *tokenFile, lookup)
	if err != nil {
		fmt.Fprintf(stderr, "aigov privacy erase: %v\n", err)
		return ExitUsage
	}
	keyID := personal.SubjectKeyID(fs.Arg(0), fs.Arg(1))
	nc, _, err := of.connect()
	if err != nil {
		fmt.Fprintf(stderr, "aigov privacy erase: %v\n", err)
		return ExitError
	}
	defer nc.Close()
	req := schemas.Request{Action: schemas.ActionPrivacyErase, Resource: schemas.Resource{Type: schemas.DataSubjectsType, ID: schemas.DataSubjectsID},
		Context: map[string]any{schemas.ContextSubjectKeyID: keyID, schemas.ContextSubjectIssuer: fs.Arg(0), schemas.ContextSubjectSub: fs.Arg(1)}}
	d, err := of.governed(ctx, nc, tok, req)
	if err != nil {
		fmt.Fprintf(stderr, "aigov privacy erase: %v\n", err)
		return ExitError
	}
	code := printDecision(stdout, d, *asJSON)
	switch {
	case d.Allowed():
		fmt.Fprintf(stderr, "erased %s (subject key %s): every stored value sealed under its key is unreadable from now on; see docs/privacy.md for external backups\n",
			schemas.PrincipalID(fs.Arg(0), fs.Arg(1)), keyID)
	case d.ApprovalID != "":
		fmt.Fprintf(stderr, "not erased: approval request %s needs its reviewers (aigov approvals show %s; each reviewer runs aigov approvals approve %s), then run this command again\n",
			d.ApprovalID, d.ApprovalID, d.ApprovalID)
	}
	return code
}
