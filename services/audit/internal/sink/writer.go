package sink

import (
	"context"
	"errors"
	"fmt"
	"time"

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
		"token_fingerprint, context, authn_us, policy_us, total_us, nats_subject, stream_seq, inserted_at, inserted_us"
	logColumns = "stream, stream_seq, prev_seq, event_id, type, source, nats_subject, event_time, event_time_us, " +
		"data, invalid_reason, row_hash, chain_hash, inserted_at, inserted_us"
	approvalColumns = "event_id, type, approval_id, status, request_id, action, resource_type, resource_id, approver, " +
		"requester, reason, expires_at_us, event_time, event_time_us, data, nats_subject, stream, stream_seq, inserted_at"
	changeColumns = "event_id, type, kind, version, previous, changed_by, entity_type, entity_id, summary, event_time, " +
		"event_time_us, data, nats_subject, stream, stream_seq, inserted_at"
	anomalyColumns = "event_id, kind, stream, consumer, stream_seq, subject, reason, deliveries, data, event_time, " +
		"event_time_us, dlq_seq, inserted_at"
	sessionColumns = "event_id, type, session_key, issuer, subject, principal_id, sid, reason, `by`, " +
		"request_id, token_fingerprint, auth_time, first_seen, last_seen, event_time, event_time_us, " +
		"nats_subject, stream_seq, inserted_at"
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
// handlers are runtime.BatchHandlers: they return nil only once every row
// of the batch is committed, so the runner acks nothing that is not stored.
type Writer struct {
	conn    driver.Conn
	db      string
	log     zerolog.Logger
	rows    *prometheus.CounterVec
	invalid prometheus.Counter
}

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
	}
	if err := reg.Register(w.rows); err != nil {
		return nil, fmt.Errorf("audit writer: register metrics: %w", err)
	}
	if err := reg.Register(w.invalid); err != nil {
		return nil, fmt.Errorf("audit writer: register metrics: %w", err)
	}
	return w, nil
}

// metaOf reads a message's place in its stream. A message without
// JetStream metadata cannot come from a consumer, but if it ever does it
// is still written, with a zero sequence.
func metaOf(m jetstream.Msg) meta {
	md := meta{Subject: m.Subject()}
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

func (w *Writer) insertDecisions(ctx context.Context, rows []decisionRow) error {
	at, us := now(), nowUS()
	return w.insert(ctx, TableDecisions, decisionColumns, len(rows), func(b driver.Batch, i int) error {
		r := &rows[i]
		return b.Append(r.EventID, r.RequestID, r.Source, r.Time, r.TimeUS, r.ReceivedAt, r.Action,
			r.ResourceType, r.ResourceID, r.PrincipalID, r.PrincipalType, r.Issuer, r.Subject, r.Email, r.Groups, r.Scopes,
			r.Decision, r.Code, r.Reason, r.Stage, r.PolicyIDs, r.PolicyErrors, r.PolicyVersion, r.SessionKey,
			r.TokenFingerprint, r.Context, r.AuthnUS, r.PolicyUS, r.TotalUS, r.NATSSubject, r.Seq, at, us)
	})
}

func (w *Writer) insertLog(ctx context.Context, rows []logRow) error {
	at, us := now(), nowUS()
	return w.insert(ctx, TableEventLog, logColumns, len(rows), func(b driver.Batch, i int) error {
		r := &rows[i]
		return b.Append(r.Stream, r.Seq, r.PrevSeq, r.EventID, r.Type, r.Source, r.Subject, r.Time, r.TimeUS,
			r.Data, r.InvalidReason, r.RowHash, r.ChainHash, at, us)
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

// write inserts every row of a batch, typed tables first and event_log
// last: a reader who sees a position in event_log sees its typed row.
func (w *Writer) write(ctx context.Context, rows []decoded) error {
	var (
		ds []decisionRow
		ss []sessionRow
		as []approvalRow
		cs []changeRow
		ns []anomalyRow
		ls = make([]logRow, 0, len(rows))
	)
	for i := range rows {
		r := &rows[i]
		switch {
		case r.decision != nil:
			ds = append(ds, *r.decision)
		case r.session != nil:
			ss = append(ss, *r.session)
		case r.change != nil:
			cs = append(cs, *r.change)
		}
		as = append(as, r.approvals...)
		if r.anomaly != nil {
			ns = append(ns, *r.anomaly)
		}
		ls = append(ls, r.log)
	}
	for _, f := range []func() error{
		func() error { return w.insertDecisions(ctx, ds) },
		func() error { return w.insertSessions(ctx, ss) },
		func() error { return w.insertApprovals(ctx, as) },
		func() error { return w.insertChanges(ctx, cs) },
		func() error { return w.insertAnomalies(ctx, ns) },
		func() error { return w.insertLog(ctx, ls) },
	} {
		if err := f(); err != nil {
			return err
		}
	}
	return nil
}

func (w *Writer) insertSessions(ctx context.Context, rows []sessionRow) error {
	at := now()
	return w.insert(ctx, TableSessionEvents, sessionColumns, len(rows), func(b driver.Batch, i int) error {
		r := &rows[i]
		return b.Append(r.EventID, r.Type, r.SessionKey, r.Issuer, r.Subject, r.PrincipalID, r.SID, r.Reason, r.By,
			r.RequestID, r.TokenFingerprint, r.AuthTime, r.FirstSeen, r.LastSeen, r.Time, r.TimeUS,
			r.NATSSubject, r.Seq, at)
	})
}
