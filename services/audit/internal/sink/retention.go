package sink

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"slices"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/services/audit/chain"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Retention is how long each event class is kept, in days; 0 keeps it for
// ever (AIGOV_AUDIT_RETENTION_DECISIONS_DAYS, _SESSIONS_DAYS,
// _GOVERNANCE_DAYS).
type Retention struct {
	Decisions, Sessions, Governance int
}

// Enabled reports whether any class has a retention.
func (r Retention) Enabled() bool { return r.Decisions > 0 || r.Sessions > 0 || r.Governance > 0 }

// epochPartition holds the rows dated at the epoch: gap rows and messages
// that could not be dated. It is never dropped: it is small, and a gap is
// evidence.
const epochPartition = 197001

// retirer drops whole expired partitions, which works on every server
// (18.16 has no TTL): each table is PARTITION BY toYYYYMM of its event time.
// A partition listed in legal_holds is never dropped. Before dropping a
// partition of event_log it writes a signed chain.Retirement for every run
// of chained rows of every stream in it, so verify reports them as retired.
type retirer struct {
	conn   driver.Conn
	db     string
	key    ed25519.PrivateKey
	policy Retention
	topo   topology.Topology
	log    zerolog.Logger
}

// classDays is the retention of the class stream belongs to.
func (r retirer) classDays(stream string) int {
	switch stream {
	case r.topo.StreamDecisions():
		return r.policy.Decisions
	case r.topo.StreamSessions():
		return r.policy.Sessions
	default:
		return r.policy.Governance
	}
}

// expired reports whether every day of partition p (YYYYMM) is more than
// days before now.
func expired(p uint32, days int, now time.Time) bool {
	if days <= 0 || p <= epochPartition {
		return false
	}
	end := time.Date(int(p/100), time.Month(p%100)+1, 1, 0, 0, 0, 0, time.UTC)
	return now.Sub(end) > time.Duration(days)*24*time.Hour
}

// maxPartitions bounds the partitions one pass looks at per table.
const maxPartitions = 10000

func (r retirer) partitions(ctx context.Context, table string) ([]uint32, error) {
	rows, err := r.conn.Query(ctx, "SELECT DISTINCT toUInt32(toYYYYMM(event_time)) AS p FROM "+r.db+"."+table+" ORDER BY p LIMIT "+fmt.Sprint(maxPartitions))
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", table, err)
	}
	defer rows.Close()
	var out []uint32
	for rows.Next() {
		var p uint32
		if err := rows.Scan(&p); err != nil {
			return nil, fmt.Errorf("list partitions of %s: %w", table, err)
		}
		out = append(out, p)
	}
	return out, rows.Err()
}

func (r retirer) held(ctx context.Context) (map[uint32]bool, error) {
	rows, err := r.conn.Query(ctx, "SELECT DISTINCT partition_id FROM "+r.db+".legal_holds")
	if err != nil {
		return nil, fmt.Errorf("read legal holds: %w", err)
	}
	defer rows.Close()
	out := map[uint32]bool{}
	for rows.Next() {
		var p uint32
		if err := rows.Scan(&p); err != nil {
			return nil, fmt.Errorf("read legal holds: %w", err)
		}
		out[p] = true
	}
	return out, rows.Err()
}

// Run does one pass at time now and returns the partitions dropped, as
// "table/YYYYMM".
func (r retirer) Run(ctx context.Context, now time.Time) ([]string, error) {
	if !r.policy.Enabled() {
		return nil, nil
	}
	held, err := r.held(ctx)
	if err != nil {
		return nil, err
	}
	var dropped []string
	typed := []struct {
		table string
		days  int
	}{
		{TableDecisions, r.policy.Decisions}, {TableSessionEvents, r.policy.Sessions},
		{TableApprovals, r.policy.Governance}, {TableChanges, r.policy.Governance}, {TableAnomalies, r.policy.Governance},
	}
	for _, t := range typed {
		if t.days <= 0 {
			continue
		}
		ps, err := r.partitions(ctx, t.table)
		if err != nil {
			return dropped, err
		}
		for _, p := range ps {
			if held[p] || !expired(p, t.days, now) {
				continue
			}
			if err := r.drop(ctx, t.table, p); err != nil {
				return dropped, err
			}
			dropped = append(dropped, fmt.Sprintf("%s/%d", t.table, p))
		}
	}
	ps, err := r.partitions(ctx, TableEventLog)
	if err != nil {
		return dropped, err
	}
	for _, p := range ps {
		if held[p] {
			continue
		}
		ok, err := r.retireLog(ctx, p, now)
		if err != nil {
			return dropped, err
		}
		if ok {
			dropped = append(dropped, fmt.Sprintf("%s/%d", TableEventLog, p))
		}
	}
	return dropped, nil
}

func (r retirer) drop(ctx context.Context, table string, p uint32) error {
	if err := r.conn.Exec(ctx, fmt.Sprintf("ALTER TABLE %s.%s DROP PARTITION %d", r.db, table, p)); err != nil {
		return fmt.Errorf("drop partition %d of %s: %w", p, table, err)
	}
	r.log.Info().Str("table", table).Uint32("partition", p).Msg("expired partition dropped by retention policy")
	return nil
}

// maxRetiredRows bounds the rows of one event_log partition a pass reads.
const maxRetiredRows = 50_000_000

// retireLog drops partition p of event_log when every stream with rows in
// it is past its class's retention, after recording the retired runs.
func (r retirer) retireLog(ctx context.Context, p uint32, now time.Time) (bool, error) {
	rows, err := r.conn.Query(ctx, "SELECT stream, stream_seq, prev_seq, chain_hash FROM "+r.db+".event_log WHERE toYYYYMM(event_time) = ? ORDER BY stream, stream_seq LIMIT "+fmt.Sprint(maxRetiredRows), p)
	if err != nil {
		return false, fmt.Errorf("read partition %d of event_log: %w", p, err)
	}
	var runs []chain.Retirement
	var streams []string
	for rows.Next() {
		var stream, hash string
		var seq, prev uint64
		if err := rows.Scan(&stream, &seq, &prev, &hash); err != nil {
			rows.Close()
			return false, fmt.Errorf("read partition %d of event_log: %w", p, err)
		}
		n := len(runs)
		switch {
		case n > 0 && runs[n-1].Stream == stream && runs[n-1].To == seq:
			// A second copy of a position (not yet merged).
		case n > 0 && runs[n-1].Stream == stream && runs[n-1].To == prev:
			runs[n-1].To, runs[n-1].ChainHash = seq, hash
		default:
			runs = append(runs, chain.Retirement{Stream: stream, From: prev + 1, To: seq, ChainHash: hash, Partition: p})
			if !slices.Contains(streams, stream) {
				streams = append(streams, stream)
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return false, fmt.Errorf("read partition %d of event_log: %w", p, err)
	}
	if len(runs) == 0 {
		return false, nil
	}
	for _, s := range streams {
		if !expired(p, r.classDays(s), now) {
			return false, nil
		}
	}
	b, err := r.conn.PrepareBatch(ctx, "INSERT INTO "+r.db+".retirements ("+chain.RetirementColumns+")")
	if err != nil {
		return false, fmt.Errorf("record retirements: %w", err)
	}
	for _, run := range runs {
		run.Reason = fmt.Sprintf("retention: partition %d past %d days", p, r.classDays(run.Stream))
		run.At = now
		if err := b.Append(chain.SignRetirement(run, r.key).Values()...); err != nil {
			_ = b.Abort()
			return false, fmt.Errorf("record retirements: %w", err)
		}
	}
	if err := b.Send(); err != nil {
		return false, fmt.Errorf("record retirements: %w", err)
	}
	return true, r.drop(ctx, TableEventLog, p)
}

// retentionWorker runs the retirer every interval until ctx ends.
func (r retirer) worker(interval time.Duration) func(context.Context) error {
	return func(ctx context.Context) error {
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			if dropped, err := r.Run(ctx, time.Now().UTC()); err != nil {
				r.log.Error().Err(err).Msg("retention pass failed; retrying at the next interval")
			} else if len(dropped) > 0 {
				r.log.Info().Strs("dropped", dropped).Msg("retention pass")
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	}
}
