package chain

import (
	"context"
	"crypto/ed25519"
	"fmt"
	"regexp"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Break is the first broken link of a stream's chain.
type Break struct {
	// Seq is the stream position where verification failed.
	Seq uint64
	// Reason says what is wrong there.
	Reason string
}

// Report is the outcome of verifying one stream.
type Report struct {
	Stream string
	// Start is the chain's start (rows at or below it predate it).
	Start uint64
	// Rows is how many rows were checked; LastSeq the last position.
	Rows    uint64
	LastSeq uint64
	// Checkpoints is how many signed checkpoints were matched; Signed the
	// newest one's position. Rows after it are covered by the chain only.
	Checkpoints int
	Signed      uint64
	// Retired are the ranges of positions dropped by the retention policy,
	// each named by a signed retirement (Retirement) and linked across;
	// RetiredPositions counts them. They are not missing.
	Retired          []Span `json:",omitempty"`
	RetiredPositions uint64
	// Broken is nil when every link holds.
	Broken *Break
}

// OK reports whether the chain verified.
func (r Report) OK() bool { return r.Broken == nil }

var identPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// VerifyStream recomputes the chain of stream from table event_log of
// database db and checks it against the signed checkpoints cps (all must
// verify with pub). It reads every row, FINAL not applied, so that a
// forged second copy of a position is seen. The first broken link ends the
// check and is returned in the report; err is for failures to read.
func VerifyStream(ctx context.Context, conn driver.Conn, db, stream string, cps []Checkpoint, pub ed25519.PublicKey) (Report, error) {
	return VerifyStreamRetired(ctx, conn, db, stream, cps, nil, pub)
}

// VerifyStreamRetired is VerifyStream where positions may have been
// dropped by the retention policy: a range of missing positions that a
// retirement of rets (all must verify with pub) names exactly is reported
// in Report.Retired, and the chain continues from the retirement's chain
// hash; any other missing position is still a break.
func VerifyStreamRetired(ctx context.Context, conn driver.Conn, db, stream string, cps []Checkpoint, rets []Retirement, pub ed25519.PublicKey) (Report, error) {
	if !identPattern.MatchString(db) {
		return Report{}, fmt.Errorf("database name %q is not a plain identifier", db)
	}
	rep := Report{Stream: stream}
	if len(cps) == 0 {
		// Rows that nothing vouches for are a failure, never a skip: a
		// deleted checkpoint must not make its stream unverifiable in
		// silence.
		var n, first uint64
		if err := conn.QueryRow(ctx, "SELECT count(), min(stream_seq) FROM "+db+".event_log WHERE stream = ?", stream).Scan(&n, &first); err != nil {
			return rep, fmt.Errorf("stream %s: count rows: %w", stream, err)
		}
		if n == 0 {
			return rep, fmt.Errorf("stream %s: no rows and no checkpoint to verify against", stream)
		}
		rep.Rows = n
		rep.Broken = &Break{Seq: first, Reason: fmt.Sprintf("%d rows but no signed checkpoint: the stream's checkpoints are missing", n)}
		return rep, nil
	}
	bySeq := map[uint64]Checkpoint{}
	for _, c := range cps {
		if err := c.Verify(pub); err != nil {
			rep.Broken = &Break{Seq: c.Seq, Reason: err.Error()}
			return rep, nil
		}
		if c.Stream != stream || c.Start != cps[0].Start {
			rep.Broken = &Break{Seq: c.Seq, Reason: fmt.Sprintf("checkpoint of stream %s start %d among checkpoints of %s start %d", c.Stream, c.Start, stream, cps[0].Start)}
			return rep, nil
		}
		if prev, dup := bySeq[c.Seq]; dup && prev.Hash != c.Hash {
			rep.Broken = &Break{Seq: c.Seq, Reason: "two signed checkpoints disagree about this position"}
			return rep, nil
		}
		bySeq[c.Seq] = c
		rep.Signed = max(rep.Signed, c.Seq)
	}
	rep.Start = cps[0].Start
	for _, r := range rets {
		if err := r.Verify(pub); err != nil {
			rep.Broken = &Break{Seq: r.From, Reason: err.Error()}
			return rep, nil
		}
		if r.Stream != stream || r.To < r.From {
			rep.Broken = &Break{Seq: r.From, Reason: fmt.Sprintf("retirement of stream %s seq %d..%d among retirements of %s", r.Stream, r.From, r.To, stream)}
			return rep, nil
		}
	}
	rows, err := conn.Query(ctx, "SELECT stream_seq, prev_seq, event_id, type, source, nats_subject, event_time_us, data, invalid_reason, signer_key_id, signature, row_hash, chain_hash FROM "+
		db+".event_log WHERE stream = ? AND stream_seq > ? ORDER BY stream_seq, row_hash", stream, rep.Start)
	if err != nil {
		return rep, fmt.Errorf("read %s.event_log: %w", db, err)
	}
	defer rows.Close()
	head := NewHead(stream, rep.Start)
	var last Row
	brk := func(seq uint64, format string, args ...any) (Report, error) {
		rep.Broken = &Break{Seq: seq, Reason: fmt.Sprintf(format, args...)}
		return rep, nil
	}
	// retire moves head across retired ranges that start right after it
	// and end at or before limit; each range is used once, so the loop
	// ends after len(rets) steps at most. It returns a break reason.
	used := make([]bool, len(rets))
	retire := func(limit uint64) (uint64, string) {
		for range rets {
			found := false
			for i, r := range rets {
				if used[i] || r.From != head.Seq+1 || r.To > limit {
					continue
				}
				used[i], found = true, true
				for s, c := range bySeq {
					if s == r.To && c.Hash != r.ChainHash {
						return r.To, "a signed retirement disagrees with the checkpoint at its end"
					}
					if s == r.To {
						rep.Checkpoints++
					}
				}
				head = Head{Stream: stream, Start: head.Start, Seq: r.To, Hash: r.ChainHash}
				rep.Retired = append(rep.Retired, Span{From: r.From, To: r.To})
				rep.RetiredPositions += r.To - r.From + 1
				break
			}
			if !found {
				break
			}
		}
		return 0, ""
	}
	for rows.Next() {
		r := Row{Stream: stream}
		if err := rows.Scan(&r.Seq, &r.PrevSeq, &r.EventID, &r.Type, &r.Source, &r.Subject, &r.TimeUS, &r.Data, &r.InvalidReason, &r.SignerKeyID, &r.Signature, &r.RowHash, &r.ChainHash); err != nil {
			return rep, fmt.Errorf("scan %s.event_log: %w", db, err)
		}
		if rep.Rows > 0 && r.Seq == last.Seq {
			// A redelivered message written twice is the same row until
			// ClickHouse merges the copies; any difference is a forgery.
			if r != last {
				return brk(r.Seq, "two different rows claim this position (forged or altered copy)")
			}
			continue
		}
		if r.PrevSeq > head.Seq {
			if seq, why := retire(r.PrevSeq); why != "" {
				return brk(seq, "%s", why)
			}
		}
		if r.PrevSeq != head.Seq {
			if r.PrevSeq > head.Seq {
				return brk(head.Seq+1, "row missing: the next row (seq %d) links to seq %d, the last row present is seq %d", r.Seq, r.PrevSeq, head.Seq)
			}
			return brk(r.Seq, "row links to seq %d, want %d", r.PrevSeq, head.Seq)
		}
		if r.Seq != r.PrevSeq+1 && r.Type != TypeGap {
			return brk(r.Seq, "row skips positions %d..%d without being a gap row", r.PrevSeq+1, r.Seq-1)
		}
		if h := r.Hash(); h != r.RowHash {
			return brk(r.Seq, "row content altered: row_hash %.12s… stored, %.12s… recomputed", r.RowHash, h)
		}
		want := r
		next := head.Extend(&want)
		if want.ChainHash != r.ChainHash {
			return brk(r.Seq, "chain_hash does not link to the previous row")
		}
		for s, c := range bySeq {
			if s > head.Seq && s < r.Seq {
				return brk(s, "a signed checkpoint names seq %d, which falls inside gap row %d", s, r.Seq)
			}
			if s == r.Seq && c.Hash != next.Hash {
				return brk(r.Seq, "chain differs from the checkpoint signed at %s", c.At.Format("2006-01-02T15:04:05Z07:00"))
			}
			if s == r.Seq {
				rep.Checkpoints++
			}
		}
		head, last = next, r
		rep.Rows++
		rep.LastSeq = r.Seq
	}
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("read %s.event_log: %w", db, err)
	}
	// The newest rows may be retired too.
	if seq, why := retire(^uint64(0)); why != "" {
		return brk(seq, "%s", why)
	}
	if rep.Signed > head.Seq {
		return brk(head.Seq+1, "rows truncated: a checkpoint signed seq %d, the log ends at seq %d", rep.Signed, head.Seq)
	}
	return rep, nil
}

// LoggedStreams lists the streams that have rows in event_log of database
// db, so that verify covers a stream whose checkpoints are gone.
func LoggedStreams(ctx context.Context, conn driver.Conn, db string) ([]string, error) {
	if !identPattern.MatchString(db) {
		return nil, fmt.Errorf("database name %q is not a plain identifier", db)
	}
	rows, err := conn.Query(ctx, "SELECT DISTINCT stream FROM "+db+".event_log ORDER BY stream")
	if err != nil {
		return nil, fmt.Errorf("list logged streams: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return nil, fmt.Errorf("list logged streams: %w", err)
		}
		out = append(out, s)
	}
	return out, rows.Err()
}
