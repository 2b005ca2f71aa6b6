package sink

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	goruntime "runtime"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/audit/chain"
)

// MaxGapFill bounds how many stream positions one batch fetches directly
// from the stream to close a gap in front of it (messages still pending
// redelivery after a crash, or taken by another replica).
const MaxGapFill = 20000

// streamLane writes one audited stream. It is driven by one RunBatches
// loop: one writer per stream per process; mu only lets the lane's
// checkpoint ticker (SignIfDue) sign the head between batches. Across
// replicas the chain stays single because it is a pure function of the
// stream: see package chain.
type streamLane struct {
	mu       sync.Mutex
	stream   string
	consumer string
	deadLtr  bool // the lane reads the dead-letter stream itself
	w        *Writer
	js       jetstream.JetStream
	cps      *chain.Store
	key      ed25519.PrivateKey
	mask     masker
	subjects schemas.Subjects
	every    time.Duration
	log      zerolog.Logger
	// trust checks the signatures of the events of a stream whose
	// publishers sign (signers: their roles; none for requests and dead
	// letters).
	trust   *signing.Trust
	signers []string

	head      chain.Head
	haveHead  bool
	signedSeq uint64
	signedAt  time.Time
}

// checkSignature records in d's rows who signed the event and whether the
// signature holds, for a stream whose events are signed (signers names
// the roles that publish on it). It checks the raw body, as signed, not
// the masked one that is stored.
func (l *streamLane) checkSignature(d *decoded, it item) {
	if len(l.signers) == 0 {
		return
	}
	signers := l.signers
	if d.decision != nil && d.decision.Decision != schemas.Deny {
		// authn decides only denies: an allow is valid under policy's key
		// alone.
		signers = []string{schemas.RolePolicy}
	}
	key, err := l.trust.VerifyMsg(it.md.Subject, it.md.Header, it.raw, signers...)
	status := string(signing.StatusOf(err))
	d.log.SignerKeyID, d.log.Signature = key.ID, status
	if d.decision != nil {
		d.decision.SignerKeyID, d.decision.Signature = key.ID, status
	}
	if err != nil && l.w.badSignatures != nil {
		l.w.badSignatures.WithLabelValues(l.stream, status).Inc()
	}
}

// item is one stream position to write.
type item struct {
	md  meta
	raw []byte
	gap uint64 // > 0: positions gap..md.Seq are gone from the stream
}

// Handle is the lane's servicekit.BatchHandler: it writes every position of
// the batch, and any position missing in front of it, in stream order,
// linking each to its predecessor. It returns nil only once every row is
// committed and every dead letter published.
func (l *streamLane) Handle(ctx context.Context, msgs []jetstream.Msg) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.haveHead {
		if err := l.loadHead(ctx); err != nil {
			return err
		}
	}
	items := make([]item, 0, len(msgs))
	var again []item
	seen := make(map[uint64]bool, len(msgs))
	for _, m := range msgs {
		md := metaOf(m)
		if seen[md.Seq] {
			continue // twice in the batch
		}
		seen[md.Seq] = true
		if md.Seq <= l.head.Seq {
			again = append(again, item{md: md, raw: m.Data()})
			continue
		}
		items = append(items, item{md: md, raw: m.Data()})
	}
	if len(items) == 0 && len(again) == 0 {
		return nil
	}
	// A redelivered position is in the chain already, but its typed row
	// may not be: the two tables are written at once, and after a lost
	// checkpoint the head is read back from event_log. Its typed rows are
	// written again (they collapse with any copy) and its log row is not.
	rewrites := l.typedRowsOf(again)
	if len(items) == 0 {
		return l.w.write(ctx, rewrites)
	}
	sort.Slice(items, func(i, j int) bool { return items[i].md.Seq < items[j].md.Seq })
	if items[0].md.Seq > l.head.Seq+1 {
		l.refreshHead(ctx, items[0].md.Seq)
	}
	items, err := l.fillGaps(ctx, items)
	if err != nil {
		return err
	}
	rows, dead, head := l.rowsOf(items, l.head)
	// Dead letters first: once published, the poison is safe in the DLQ
	// stream even if the insert below fails and is retried.
	for _, dl := range dead {
		if err := l.publishDeadLetter(ctx, dl); err != nil {
			return err
		}
	}
	if err := l.w.write(ctx, append(rows, rewrites...)); err != nil {
		return err
	}
	if len(dead) > 0 {
		l.w.invalid.Add(float64(len(dead)))
		for _, dl := range dead {
			l.log.Warn().Str("stream", dl.Stream).Uint64("stream_seq", dl.StreamSeq).Str("subject", dl.Subject).
				Str("reason", dl.Reason).Msg("poison message dead-lettered")
		}
	}
	l.head = head
	if time.Since(l.signedAt) >= l.every {
		l.checkpoint(ctx)
	}
	return nil
}

// rowsOf decodes the items, links each to its predecessor from head on,
// and returns the rows, the dead letters to publish and the new head.
func (l *streamLane) rowsOf(items []item, head chain.Head) ([]decoded, []schemas.DeadLetter, chain.Head) {
	rows := make([]decoded, len(items))
	// Decoding and row hashing are most of the writer's CPU and each item
	// is independent: they run on every core, in at most GOMAXPROCS
	// goroutines that end before rowsOf returns. Only the links must go in
	// stream order.
	workers := min(goruntime.GOMAXPROCS(0), max(1, len(items)/minDecodeChunk))
	chunk := (len(items) + workers - 1) / workers
	var wg sync.WaitGroup
	for from := 0; from < len(items); from += chunk {
		to := min(from+chunk, len(items))
		wg.Add(1)
		go func() {
			defer wg.Done()
			var scratch []byte
			for i := from; i < to; i++ {
				rows[i] = l.decodeItem(items[i])
				// The row hash covers the row and its predecessor's
				// position, both known now: only the link is serial.
				r := &rows[i].log.Row
				r.PrevSeq = head.Seq
				if i > 0 {
					r.PrevSeq = items[i-1].md.Seq
				}
				r.RowHash = r.HashWith(&scratch)
			}
		}()
	}
	wg.Wait()
	var dead []schemas.DeadLetter
	for i := range rows {
		head = head.ExtendHashed(&rows[i].log.Row)
		if rows[i].dead != nil {
			dead = append(dead, *rows[i].dead)
		}
	}
	return rows, dead, head
}

// typedRowsOf decodes positions the chain already holds for their typed
// rows alone: no log row, and no dead letter (one was published when the
// position was first written).
func (l *streamLane) typedRowsOf(items []item) []decoded {
	out := make([]decoded, 0, len(items))
	for _, it := range items {
		d := l.decodeItem(it)
		d.dead, d.logged = nil, true
		out = append(out, d)
	}
	return out
}

// minDecodeChunk is the fewest items worth a goroutine of their own.
const minDecodeChunk = 256

// decodeItem is what one stream position becomes, before chaining.
func (l *streamLane) decodeItem(it item) decoded {
	if it.gap == 0 {
		d := decode(l.mask.event(it.raw), it.md, l.consumer, l.deadLtr)
		l.checkSignature(&d, it)
		if d.decision != nil {
			d.decision.SubjectPseudonym = l.mask.pseud.Subject(d.decision.Issuer, d.decision.Subject)
		}
		if d.session != nil {
			d.session.SubjectPseudonym = l.mask.pseud.Subject(d.session.Issuer, d.session.Subject)
		}
		return d
	}
	var d decoded
	d.log = logRow{Row: chain.Row{Stream: l.stream, Seq: it.md.Seq, EventID: "gap:" + l.stream + ":" + strconv.FormatUint(it.md.Seq, 10),
		Type: chain.TypeGap, InvalidReason: fmt.Sprintf("stream positions %d..%d were gone before the audit read them", it.gap, it.md.Seq)}, Time: minTime}
	d.anomaly = &anomalyRow{EventID: d.log.EventID, Kind: chain.TypeGap, Stream: l.stream, Consumer: l.consumer, Seq: it.md.Seq,
		Reason: d.log.InvalidReason, Time: minTime}
	return d
}

// fillGaps inserts, in front of each item, the positions between the chain
// head and it: read from the stream, or a gap item for those gone.
func (l *streamLane) fillGaps(ctx context.Context, items []item) ([]item, error) {
	if items[0].md.Seq == l.head.Seq+1 && items[len(items)-1].md.Seq == l.head.Seq+uint64(len(items)) {
		return items, nil // contiguous: the common case
	}
	if missing := items[len(items)-1].md.Seq - l.head.Seq - uint64(len(items)); missing > MaxGapFill {
		return nil, fmt.Errorf("stream %s: %d positions missing between seq %d and %d; waiting for redelivery", l.stream, missing, l.head.Seq, items[len(items)-1].md.Seq)
	}
	st, err := l.js.Stream(ctx, l.stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", l.stream, err)
	}
	out := make([]item, 0, len(items))
	expect := l.head.Seq + 1
	for _, it := range items {
		var gapFrom uint64
		for ; expect < it.md.Seq; expect++ {
			m, err := st.GetMsg(ctx, expect)
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				if gapFrom == 0 {
					gapFrom = expect
				}
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("fetch %s seq %d: %w", l.stream, expect, err)
			}
			if gapFrom > 0 {
				out = append(out, item{md: meta{Stream: l.stream, Seq: expect - 1}, gap: gapFrom})
				gapFrom = 0
			}
			out = append(out, item{md: meta{Subject: m.Subject, Stream: l.stream, Seq: m.Sequence, Stored: m.Time, Header: m.Header}, raw: m.Data})
		}
		if gapFrom > 0 {
			out = append(out, item{md: meta{Stream: l.stream, Seq: expect - 1}, gap: gapFrom})
		}
		out = append(out, it)
		expect = it.md.Seq + 1
	}
	return out, nil
}

func (l *streamLane) publishDeadLetter(ctx context.Context, dl schemas.DeadLetter) error {
	id := schemas.DerivedID(dl.Stream+":"+strconv.FormatUint(dl.StreamSeq, 10)+":"+dl.Kind, "deadletter")
	raw, err := deadLetterEvent(id, dl, time.Now(), schemas.MaxDeadLetterBytes-deadLetterHeadroom)
	if err != nil {
		return err
	}
	m := nats.NewMsg(l.subjects.DeadLetter(dl.Stream, dl.Consumer))
	m.Data = raw
	m.Header.Set(schemas.HeaderMsgID, id)
	if _, err := l.js.PublishMsg(ctx, m); err != nil {
		return fmt.Errorf("publish dead letter of %s seq %d: %w", dl.Stream, dl.StreamSeq, err)
	}
	return nil
}

// loadHead finds where the chain of the stream stands: the newest signed
// checkpoint (in the checkpoint stream, else in the legacy bucket of a
// deployment that had one); else chained rows already in ClickHouse (the checkpoints were
// lost: logged loudly); else a new chain starting after what the consumer
// had already acknowledged.
func (l *streamLane) loadHead(ctx context.Context) error {
	if h, ok, err := l.signedHead(ctx); err != nil {
		return err
	} else if ok {
		l.head, l.haveHead, l.signedSeq = h, true, h.Seq
		return nil
	}
	var (
		seq, start uint64
		hash       string
	)
	err := l.w.conn.QueryRow(ctx, "SELECT max(stream_seq), argMax(chain_hash, stream_seq), min(prev_seq) FROM "+l.w.db+
		".event_log WHERE stream = ? AND chain_hash != ''", l.stream).Scan(&seq, &hash, &start)
	if err != nil {
		return fmt.Errorf("read chain head of %s: %w", l.stream, err)
	}
	if seq > 0 {
		l.log.Error().Str("stream", l.stream).Uint64("seq", seq).Msg("no checkpoint found; continuing the chain from clickhouse")
		l.head, l.haveHead = chain.Head{Stream: l.stream, Start: start, Seq: seq, Hash: hash}, true
		return nil
	}
	c, err := l.js.Consumer(ctx, l.stream, l.consumer)
	if err != nil {
		return fmt.Errorf("consumer %s: %w", l.consumer, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer %s: %w", l.consumer, err)
	}
	l.head, l.haveHead = chain.NewHead(l.stream, info.AckFloor.Stream), true
	l.log.Info().Str("stream", l.stream).Uint64("start_seq", l.head.Start).Msg("hash chain started")
	l.checkpoint(ctx)
	return nil
}

func (l *streamLane) signedHead(ctx context.Context) (chain.Head, bool, error) {
	c, ok, err := l.cps.Latest(ctx, l.stream)
	if err != nil || !ok {
		return chain.Head{}, false, err
	}
	return c.Head, true, nil
}

// refreshHead adopts a newer checkpoint another replica signed, when it
// closes (part of) the gap in front of the batch.
func (l *streamLane) refreshHead(ctx context.Context, next uint64) {
	h, ok, err := l.signedHead(ctx)
	if err == nil && ok && h.Seq > l.head.Seq && h.Seq < next {
		l.head = h
	}
}

// SignIfDue signs the head when rows written since the last checkpoint
// have waited the checkpoint interval: a batch signs only when the
// interval has passed since the last checkpoint, so without this the
// last rows of a quiet stream would wait, unsigned, for its next event.
// The lane's ticker calls it; a batch being written signs by itself.
func (l *streamLane) SignIfDue(ctx context.Context) {
	if !l.mu.TryLock() {
		return
	}
	defer l.mu.Unlock()
	if time.Since(l.signedAt) >= l.every {
		l.checkpoint(ctx)
	}
}

// Sign signs the head if it moved since the last checkpoint (shutdown).
func (l *streamLane) Sign(ctx context.Context) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.checkpoint(ctx)
}

// RunTicker calls SignIfDue four times per checkpoint interval until ctx
// ends, so a row waits at most about 1.25 intervals for its signature.
func (l *streamLane) RunTicker(ctx context.Context) {
	if l.every <= 0 {
		return
	}
	tick := time.NewTicker(max(l.every/4, 10*time.Millisecond))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			cctx, cancel := context.WithTimeout(ctx, max(l.every, time.Second))
			l.SignIfDue(cctx)
			cancel()
		}
	}
}

// checkpoint signs the head and stores it in the checkpoint stream; the
// caller holds mu. A failure is logged, not returned: the rows are
// committed and the chain intact; the next batch, tick (or shutdown)
// signs again.
func (l *streamLane) checkpoint(ctx context.Context) {
	if !l.haveHead || (l.head.Seq == l.signedSeq && !l.signedAt.IsZero()) {
		return
	}
	c := chain.Sign(l.head, time.Now(), l.key)
	if err := l.cps.Put(ctx, c); err != nil {
		l.log.Warn().Err(err).Str("stream", l.stream).Uint64("seq", l.head.Seq).Msg("checkpoint not stored")
		return
	}
	l.signedSeq, l.signedAt = l.head.Seq, time.Now()
}
