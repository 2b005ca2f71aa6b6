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
		"token_fingerprint, context, authn_us, policy_us, total_us, nats_subject, stream_seq, inserted_at"
	eventColumns = "event_id, type, source, nats_subject, stream, stream_seq, event_time, event_time_us, " +
		"data, invalid_reason, inserted_at"
	sessionColumns = "event_id, type, session_key, issuer, subject, principal_id, sid, reason, `by`, " +
		"request_id, token_fingerprint, auth_time, first_seen, last_seen, event_time, event_time_us, " +
		"nats_subject, stream_seq, inserted_at"
)

// Table names, also the values of the rows metric's table label.
const (
	TableDecisions     = "decisions"
	TableEvents        = "events"
	TableSessionEvents = "session_events"
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

// Decisions is the batch handler of the decisions stream.
func (w *Writer) Decisions(ctx context.Context, msgs []jetstream.Msg) error {
	decisions := make([]decisionRow, 0, len(msgs))
	events := make([]eventRow, 0, len(msgs))
	var bad []rejected
	for _, m := range msgs {
		md := metaOf(m)
		d, ev, err := decodeDecision(m.Data(), md)
		if err != nil {
			bad = append(bad, rejected{md: md, err: err, bytes: len(m.Data())})
			events = append(events, invalidEvent(m.Data(), md, err))
			continue
		}
		decisions = append(decisions, d)
		events = append(events, ev)
	}
	if err := w.insertDecisions(ctx, decisions); err != nil {
		return err
	}
	if err := w.insertEvents(ctx, events); err != nil {
		return err
	}
	w.report(bad)
	w.log.Debug().Int("decisions", len(decisions)).Int("events", len(events)).Int("invalid", len(bad)).Msg("batch written")
	return nil
}

// Sessions is the batch handler of the sessions stream.
func (w *Writer) Sessions(ctx context.Context, msgs []jetstream.Msg) error {
	sessions := make([]sessionRow, 0, len(msgs))
	events := make([]eventRow, 0, len(msgs))
	var bad []rejected
	for _, m := range msgs {
		md := metaOf(m)
		s, ev, err := decodeSession(m.Data(), md)
		if err != nil {
			bad = append(bad, rejected{md: md, err: err, bytes: len(m.Data())})
			events = append(events, invalidEvent(m.Data(), md, err))
			continue
		}
		sessions = append(sessions, s)
		events = append(events, ev)
	}
	if err := w.insertSessions(ctx, sessions); err != nil {
		return err
	}
	if err := w.insertEvents(ctx, events); err != nil {
		return err
	}
	w.report(bad)
	w.log.Debug().Int("session_events", len(sessions)).Int("events", len(events)).Int("invalid", len(bad)).Msg("batch written")
	return nil
}

// rejected is a message kept as an invalid event instead of its rows:
// blocking the consumer on it would stop the audit log, dropping it would
// lose it.
type rejected struct {
	md    meta
	err   error
	bytes int
}

// report logs and counts invalid messages once they are stored, so a batch
// retried through an outage reports each of them once.
func (w *Writer) report(bad []rejected) {
	for _, r := range bad {
		w.invalid.Inc()
		w.log.Warn().Err(r.err).Str("subject", r.md.Subject).Str("stream", r.md.Stream).Uint64("stream_seq", r.md.Seq).
			Int("bytes", r.bytes).Msg("undecodable message recorded as invalid event")
	}
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

func (w *Writer) insertDecisions(ctx context.Context, rows []decisionRow) error {
	at := now()
	return w.insert(ctx, TableDecisions, decisionColumns, len(rows), func(b driver.Batch, i int) error {
		r := &rows[i]
		return b.Append(r.EventID, r.RequestID, r.Source, r.Time, r.TimeUS, r.ReceivedAt, r.Action,
			r.ResourceType, r.ResourceID, r.PrincipalID, r.PrincipalType, r.Issuer, r.Subject, r.Email, r.Groups, r.Scopes,
			r.Decision, r.Code, r.Reason, r.Stage, r.PolicyIDs, r.PolicyErrors, r.PolicyVersion, r.SessionKey,
			r.TokenFingerprint, r.Context, r.AuthnUS, r.PolicyUS, r.TotalUS, r.NATSSubject, r.Seq, at)
	})
}

func (w *Writer) insertEvents(ctx context.Context, rows []eventRow) error {
	at := now()
	return w.insert(ctx, TableEvents, eventColumns, len(rows), func(b driver.Batch, i int) error {
		r := &rows[i]
		return b.Append(r.EventID, r.Type, r.Source, r.Subject, r.Stream, r.Seq, r.Time, r.TimeUS,
			r.Data, r.InvalidReason, at)
	})
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
