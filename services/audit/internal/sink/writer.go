package sink

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/column"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/services/audit/internal/migrate"
)

// Column lists of every insert. 18.16's PrepareBatch needs them, and they
// keep the writer working when a later migration adds a column.
const (
	decisionColumns = "event_id, request_id, source, event_time, event_time_us, received_at, action, " +
		"resource_type, resource_id, principal_id, principal_type, issuer, subject, email, groups, scopes, " +
		"decision, code, reason, stage, policy_ids, policy_errors, policy_version, session_key, " +
		"token_fingerprint, context, authn_us, policy_us, total_us, nats_subject, stream_seq, inserted_at, inserted_us, " +
		"signer_key_id, signature, subject_pseudonym"
	logColumns = "stream, stream_seq, prev_seq, event_id, type, source, nats_subject, event_time, event_time_us, " +
		"data, invalid_reason, row_hash, chain_hash, inserted_at, inserted_us, signer_key_id, signature"
	approvalColumns = "event_id, type, approval_id, status, request_id, action, resource_type, resource_id, approver, " +
		"requester, reason, expires_at_us, event_time, event_time_us, data, nats_subject, stream, stream_seq, inserted_at"
	changeColumns = "event_id, type, kind, version, previous, changed_by, entity_type, entity_id, summary, event_time, " +
		"event_time_us, data, nats_subject, stream, stream_seq, inserted_at"
	anomalyColumns = "event_id, kind, stream, consumer, stream_seq, subject, reason, deliveries, data, event_time, " +
		"event_time_us, dlq_seq, inserted_at"
	sessionColumns = "event_id, type, session_key, issuer, subject, principal_id, sid, reason, `by`, " +
		"request_id, token_fingerprint, auth_time, first_seen, last_seen, event_time, event_time_us, " +
		"nats_subject, stream_seq, inserted_at, subject_pseudonym"
)

// Table names, also the values of the rows metric's table label.
const (
	TableDecisions     = "decisions"
	TableEventLog      = "event_log"
	TableSessionEvents = "session_events"
	TableApprovals     = "approvals"
	TableChanges       = "policy_changes"
	TableAnomalies     = "anomalies"
)

// Writer turns batches of JetStream messages into ClickHouse rows. Its
// handlers are servicekit.BatchHandlers: they return nil only once every row
// of the batch is committed, so the runner acks nothing that is not stored.
type Writer struct {
	conn    driver.Conn
	db      string
	log     zerolog.Logger
	rows    *prometheus.CounterVec
	invalid prometheus.Counter
	// badSignatures counts events stored whose signature was missing,
	// invalid or by an untrusted key, by stream and status.
	badSignatures *prometheus.CounterVec
}

const badSignaturesHelp = "Audited events whose signature is missing (unsigned), does not verify (invalid) or is by a key the trust file does not give their publisher (untrusted), by stream."

// NewWriter writes into database db through conn and registers its
// metrics in reg.
func NewWriter(conn driver.Conn, db string, reg prometheus.Registerer, log zerolog.Logger) (*Writer, error) {
	if conn == nil {
		return nil, errors.New("audit writer: nil clickhouse conn")
	}
	if reg == nil {
		return nil, errors.New("audit writer: nil metrics registerer")
	}
	if err := migrate.ValidateDatabase(db); err != nil {
		return nil, fmt.Errorf("audit writer: %w", err)
	}
	w := &Writer{
		conn: conn,
		db:   db,
		log:  log.With().Str("component", "writer").Logger(),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aigov_audit_rows_written_total",
			Help: "Rows committed to ClickHouse, by table.",
		}, []string{"table"}),
		invalid: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "aigov_audit_invalid_messages_total",
			Help: "Messages that could not be decoded and were recorded as type invalid in the events table.",
		}),
		badSignatures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "aigov_audit_bad_signatures_total",
			Help: badSignaturesHelp,
		}, []string{"stream", "status"}),
	}
	if err := reg.Register(w.rows); err != nil {
		return nil, fmt.Errorf("audit writer: register metrics: %w", err)
	}
	if err := reg.Register(w.invalid); err != nil {
		return nil, fmt.Errorf("audit writer: register metrics: %w", err)
	}
	if err := reg.Register(w.badSignatures); err != nil {
		return nil, fmt.Errorf("audit writer: register metrics: %w", err)
	}
	return w, nil
}

// metaOf reads a message's place in its stream. A message without
// JetStream metadata cannot come from a consumer, but if it ever does it
// is still written, with a zero sequence.
func metaOf(m jetstream.Msg) meta {
	md := meta{Subject: m.Subject(), Header: m.Headers()}
	if x, err := m.Metadata(); err == nil {
		md.Stream, md.Seq, md.Stored = x.Stream, x.Sequence.Stream, x.Timestamp
	}
	return md
}

// insert sends one batch to table. Rows of a failed batch may be partly
// stored; the retry writes them again and the ReplacingMergeTree keeps one.
func (w *Writer) insert(ctx context.Context, table, columns string, n int, appendRow func(driver.Batch, int) error) error {
	if n == 0 {
		return nil
	}
	b, err := w.conn.PrepareBatch(ctx, "INSERT INTO "+w.db+"."+table+" ("+columns+")")
	if err != nil {
		return fmt.Errorf("prepare insert into %s: %w", table, err)
	}
	for i := range n {
		if err := appendRow(b, i); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append row %d to %s: %w", i, table, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert %d rows into %s: %w", n, table, err)
	}
	w.rows.WithLabelValues(table).Add(float64(n))
	return nil
}

func now() time.Time { return time.Now().UTC().Truncate(time.Second) }

func nowUS() uint64 { return uint64(time.Now().UnixMicro()) }

// insertColumns sends one batch to table built column by column: one
// typed slice per column, appended in one call, instead of one boxed value
// per cell. cols holds, in the order of columns, a slice per column, or an
// arrayColumn for Array(String). The hot tables (decisions, event_log) use
// it: per-row Append boxes every cell, and that was a third of the insert
// CPU.
func (w *Writer) insertColumns(ctx context.Context, table, columns string, n int, cols []any) error {
	if n == 0 {
		return nil
	}
	if want := strings.Count(columns, ",") + 1; len(cols) != want {
		return fmt.Errorf("insert into %s: %d column slices for %d columns", table, len(cols), want)
	}
	b, err := w.conn.PrepareBatch(ctx, "INSERT INTO "+w.db+"."+table+" ("+columns+")")
	if err != nil {
		return fmt.Errorf("prepare insert into %s: %w", table, err)
	}
	for i, c := range cols {
		col := b.Column(i)
		if a, ok := c.(arrayColumn); ok {
			for _, v := range a {
				if err = col.AppendRow(v); err != nil {
					break
				}
			}
		} else {
			if ss, ok := c.([]string); ok {
				reserve(b.Columns()[i], ss)
			}
			err = col.Append(c)
		}
		if err != nil {
			_ = b.Abort()
			return fmt.Errorf("append column %d of %s: %w", i, table, err)
		}
	}
	for i, c := range b.Columns() {
		if c.Rows() != n {
			_ = b.Abort()
			return fmt.Errorf("insert into %s: column %d holds %d rows, want %d", table, i, c.Rows(), n)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert %d rows into %s: %w", n, table, err)
	}
	w.rows.WithLabelValues(table).Add(float64(n))
	return nil
}

// reserve grows a String column's buffer once to hold every value of ss.
// Appending ten thousand 1 KB events to an empty buffer otherwise regrows
// it dozens of times (Go grows large slices by a quarter), copying the
// batch about four times over; that was a sixth of the writer's CPU. The
// driver has no reserve call, but its String column's Reset keeps the
// buffer's capacity (documented by ch-go's ColStr.Reset), so one value of
// the total length is appended and reset. If a driver version ever stops
// doing so, this costs one allocation and saves nothing; a column left
// non-empty would be a bug, so that is checked.
func reserve(c column.Interface, ss []string) {
	if _, ok := c.(*column.String); !ok || c.Rows() != 0 {
		return
	}
	total := 0
	for _, s := range ss {
		total += len(s)
	}
	if total < minReserve {
		return
	}
	if c.AppendRow(strings.Repeat("\x00", total)) == nil {
		c.Reset()
	}
}

// minReserve is the smallest column worth reserving: below it the regrowth
// copies less than reserve itself allocates.
const minReserve = 256 << 10

// arrayColumn is the values of an Array(String) column, appended row by
// row: the driver's slice Append for arrays goes through reflection.
type arrayColumn [][]string

// columnOf is one column of rows, as the slice the driver appends at once.
// The rows are pointers into the decoded batch: copying the row structs
// themselves cost more than a third of the writer's allocations.
func columnOf[R, T any](rows []*R, get func(*R) T) []T {
	out := make([]T, len(rows))
	for i, r := range rows {
		out[i] = get(r)
	}
	return out
}

// repeat is a column whose every row holds v.
func repeat[T any](n int, v T) []T {
	out := make([]T, n)
	for i := range out {
		out[i] = v
	}
	return out
}

func (w *Writer) insertDecisions(ctx context.Context, rows []*decisionRow) error {
	at, us := now(), nowUS()
	type r = decisionRow
	return w.insertColumns(ctx, TableDecisions, decisionColumns, len(rows), []any{
		columnOf(rows, func(r *r) string { return r.EventID }),
		columnOf(rows, func(r *r) string { return r.RequestID }),
		columnOf(rows, func(r *r) string { return r.Source }),
		columnOf(rows, func(r *r) time.Time { return r.Time }),
		columnOf(rows, func(r *r) uint64 { return r.TimeUS }),
		columnOf(rows, func(r *r) time.Time { return r.ReceivedAt }),
		columnOf(rows, func(r *r) string { return r.Action }),
		columnOf(rows, func(r *r) string { return r.ResourceType }),
		columnOf(rows, func(r *r) string { return r.ResourceID }),
		columnOf(rows, func(r *r) string { return r.PrincipalID }),
		columnOf(rows, func(r *r) string { return r.PrincipalType }),
		columnOf(rows, func(r *r) string { return r.Issuer }),
		columnOf(rows, func(r *r) string { return r.Subject }),
		columnOf(rows, func(r *r) string { return r.Email }),
		arrayColumn(columnOf(rows, func(r *r) []string { return r.Groups })),
		arrayColumn(columnOf(rows, func(r *r) []string { return r.Scopes })),
		columnOf(rows, func(r *r) string { return r.Decision }),
		columnOf(rows, func(r *r) string { return r.Code }),
		columnOf(rows, func(r *r) string { return r.Reason }),
		columnOf(rows, func(r *r) string { return r.Stage }),
		arrayColumn(columnOf(rows, func(r *r) []string { return r.PolicyIDs })),
		arrayColumn(columnOf(rows, func(r *r) []string { return r.PolicyErrors })),
		columnOf(rows, func(r *r) string { return r.PolicyVersion }),
		columnOf(rows, func(r *r) string { return r.SessionKey }),
		columnOf(rows, func(r *r) string { return r.TokenFingerprint }),
		columnOf(rows, func(r *r) string { return r.Context }),
		columnOf(rows, func(r *r) uint64 { return r.AuthnUS }),
		columnOf(rows, func(r *r) uint64 { return r.PolicyUS }),
		columnOf(rows, func(r *r) uint64 { return r.TotalUS }),
		columnOf(rows, func(r *r) string { return r.NATSSubject }),
		columnOf(rows, func(r *r) uint64 { return r.Seq }),
		repeat(len(rows), at),
		repeat(len(rows), us),
		columnOf(rows, func(r *r) string { return r.SignerKeyID }),
		columnOf(rows, func(r *r) string { return r.Signature }),
		columnOf(rows, func(r *r) string { return r.SubjectPseudonym }),
	})
}

func (w *Writer) insertLog(ctx context.Context, rows []*logRow) error {
	at, us := now(), nowUS()
	type r = logRow
	return w.insertColumns(ctx, TableEventLog, logColumns, len(rows), []any{
		columnOf(rows, func(r *r) string { return r.Stream }),
		columnOf(rows, func(r *r) uint64 { return r.Seq }),
		columnOf(rows, func(r *r) uint64 { return r.PrevSeq }),
		columnOf(rows, func(r *r) string { return r.EventID }),
		columnOf(rows, func(r *r) string { return r.Type }),
		columnOf(rows, func(r *r) string { return r.Source }),
		columnOf(rows, func(r *r) string { return r.Subject }),
		columnOf(rows, func(r *r) time.Time { return r.Time }),
		columnOf(rows, func(r *r) uint64 { return r.TimeUS }),
		columnOf(rows, func(r *r) string { return r.Data }),
		columnOf(rows, func(r *r) string { return r.InvalidReason }),
		columnOf(rows, func(r *r) string { return r.RowHash }),
		columnOf(rows, func(r *r) string { return r.ChainHash }),
		repeat(len(rows), at),
		repeat(len(rows), us),
		columnOf(rows, func(r *r) string { return r.SignerKeyID }),
		columnOf(rows, func(r *r) string { return r.Signature }),
	})
}

func (w *Writer) insertApprovals(ctx context.Context, rows []approvalRow) error {
	at := now()
	return w.insert(ctx, TableApprovals, approvalColumns, len(rows), func(b driver.Batch, i int) error {
		r := &rows[i]
		return b.Append(r.EventID, r.Type, r.ApprovalID, r.Status, r.RequestID, r.Action, r.ResourceType, r.ResourceID,
			r.Approver, r.Requester, r.Reason, r.ExpiresUS, r.Time, r.TimeUS, r.Data, r.Subject, r.Stream, r.Seq, at)
	})
}

func (w *Writer) insertChanges(ctx context.Context, rows []changeRow) error {
	at := now()
	return w.insert(ctx, TableChanges, changeColumns, len(rows), func(b driver.Batch, i int) error {
		r := &rows[i]
		return b.Append(r.EventID, r.Type, r.Kind, r.Version, r.Previous, r.ChangedBy, r.EntityType, r.EntityID,
			r.Summary, r.Time, r.TimeUS, r.Data, r.Subject, r.Stream, r.Seq, at)
	})
}

func (w *Writer) insertAnomalies(ctx context.Context, rows []anomalyRow) error {
	at := now()
	return w.insert(ctx, TableAnomalies, anomalyColumns, len(rows), func(b driver.Batch, i int) error {
		r := &rows[i]
		return b.Append(r.EventID, r.Kind, r.Stream, r.Consumer, r.Seq, r.Subject, r.Reason, r.Deliveries, r.Data,
			r.Time, r.TimeUS, r.DLQSeq, at)
	})
}

// write inserts every row of a batch: the typed tables one after the
// other, and event_log at the same time on a second connection, so the
// client's encoding and the server's insert of one table overlap the
// other's. A reader may see an event_log row a moment before its typed row
// (or the reverse); the batch is acked only after both are committed, and a
// failed half is written again whole, collapsing into the same rows. A
// position whose log row is written already (decoded.logged) has only its
// typed rows written.
func (w *Writer) write(ctx context.Context, rows []decoded) error {
	var (
		ds = make([]*decisionRow, 0, len(rows))
		ss []sessionRow
		as []approvalRow
		cs []changeRow
		ns []anomalyRow
		ls = make([]*logRow, 0, len(rows))
	)
	for i := range rows {
		r := &rows[i]
		switch {
		case r.decision != nil:
			ds = append(ds, r.decision)
		case r.session != nil:
			ss = append(ss, *r.session)
		case r.change != nil:
			cs = append(cs, *r.change)
		}
		as = append(as, r.approvals...)
		if r.anomaly != nil {
			ns = append(ns, *r.anomaly)
		}
		if !r.logged {
			ls = append(ls, &r.log)
		}
	}
	// When one half fails the batch is retried whole: the other half
	// need not finish.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	logDone := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				cancel()
				logDone <- fmt.Errorf("insert into %s: panic: %v\n%s", TableEventLog, p, debug.Stack())
			}
		}()
		err := w.insertLog(ctx, ls)
		if err != nil {
			cancel()
		}
		logDone <- err
	}()
	var typedErr error
	for _, f := range []func() error{
		func() error { return w.insertDecisions(ctx, ds) },
		func() error { return w.insertSessions(ctx, ss) },
		func() error { return w.insertApprovals(ctx, as) },
		func() error { return w.insertChanges(ctx, cs) },
		func() error { return w.insertAnomalies(ctx, ns) },
	} {
		if typedErr = f(); typedErr != nil {
			cancel()
			break
		}
	}
	return errors.Join(typedErr, <-logDone)
}

func (w *Writer) insertSessions(ctx context.Context, rows []sessionRow) error {
	at := now()
	return w.insert(ctx, TableSessionEvents, sessionColumns, len(rows), func(b driver.Batch, i int) error {
		r := &rows[i]
		return b.Append(r.EventID, r.Type, r.SessionKey, r.Issuer, r.Subject, r.PrincipalID, r.SID, r.Reason, r.By,
			r.RequestID, r.TokenFingerprint, r.AuthTime, r.FirstSeen, r.LastSeen, r.Time, r.TimeUS,
			r.NATSSubject, r.Seq, at, r.SubjectPseudonym)
	})
}
