package sink

import (
	"context"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/audit/chain"
	"github.com/aigov/aigov/services/audit/internal/chtest"
	"github.com/aigov/aigov/services/audit/internal/migrate"
)

// BenchmarkWriterPath measures the writer's whole path for decision
// events, as a lane runs it on a batch pulled from JetStream: mask, decode,
// hash-chain, then insert into decisions and event_log on the real
// ClickHouse server. JetStream's own cost (fetch and ack) is not in it.
// The rows/s metric is audited events per second.
func BenchmarkWriterPath(b *testing.B) {
	for _, batch := range []int{10000, 50000} {
		for _, comp := range []string{CompressionLZ4, CompressionNone} {
			b.Run("batch="+itoa(batch)+"/compression="+comp, func(b *testing.B) { benchWriterPath(b, batch, comp) })
		}
	}
}

func benchWriterPath(b *testing.B, batch int, compression string) {
	w, l, all := benchSetup(b, batch, compression)
	ctx := context.Background()
	head := chain.NewHead(l.stream, 0)
	n := 0
	b.ReportAllocs()
	cpu := startCPU(b)
	for b.Loop() {
		items := all[n%len(all)]
		// Later rounds repeat ids: harmless, the table collapses them
		// and the insert costs the same.
		rows, _, h := l.rowsOf(items, head)
		head = h
		if err := w.write(ctx, rows); err != nil {
			b.Fatal(err)
		}
		n++
	}
	cpu.report(n * batch)
}

// benchSetup migrates a fresh database and returns a writer on it, a
// decisions lane and eight rounds of distinct encoded decisions.
func benchSetup(b *testing.B, batch int, compression string) (*Writer, *streamLane, [][]item) {
	b.Helper()
	db := chtest.DatabaseName(b)
	chtest.DropAtCleanup(b, server, db)
	ctx := context.Background()
	if err := migrate.EnsureDatabase(ctx, chtest.Open(b, server, "default"), db); err != nil {
		b.Fatal(err)
	}
	conn, err := dial(ClickHouseConfig{Addrs: []string{server.Addr()}, User: "default", Compression: compression}, db)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	ms, err := migrate.Load(schemas.Migrations())
	if err != nil {
		b.Fatal(err)
	}
	if _, err := migrate.Apply(ctx, conn, db, ms, zerolog.Nop()); err != nil {
		b.Fatal(err)
	}
	w, err := NewWriter(conn, db, prometheus.NewRegistry(), zerolog.Nop())
	if err != nil {
		b.Fatal(err)
	}
	mask, err := newMasker([]string{"prompt"}, MaskHash)
	if err != nil {
		b.Fatal(err)
	}
	const stream = "AIGOV_DECISIONS"
	l := &streamLane{stream: stream, consumer: schemas.ConsumerAuditDecisions, w: w, mask: mask}
	// Distinct decisions for many rounds, encoded up front: the producer's
	// cost is not the writer's.
	const rounds = 8
	all := make([][]item, rounds)
	seq := uint64(0)
	for r := range all {
		all[r] = make([]item, batch)
		for i := range all[r] {
			d := decisionN(r*batch + i)
			seq++
			raw := encode(b, schemas.DerivedID(d.RequestID, "decision"), schemas.TypeDecision, d.Timings.DecidedAt, d)
			all[r][i] = item{md: meta{Subject: "aigov.decision." + d.Action, Stream: stream, Seq: seq}, raw: raw}
		}
	}
	return w, l, all
}

// BenchmarkWriterInsert measures only the inserts of BenchmarkWriterPath:
// the rows are decoded and chained before the timer starts. It is the
// ceiling the decode path is measured against.
func BenchmarkWriterInsert(b *testing.B) {
	for _, batch := range []int{50000} {
		for _, comp := range []string{CompressionLZ4, CompressionNone} {
			b.Run("batch="+itoa(batch)+"/compression="+comp, func(b *testing.B) { benchWriterInsert(b, batch, comp) })
		}
	}
}

func benchWriterInsert(b *testing.B, batch int, compression string) {
	w, l, all := benchSetup(b, batch, compression)
	ctx := context.Background()
	rows := make([][]decoded, len(all))
	head := chain.NewHead(l.stream, 0)
	for r := range all {
		rows[r], _, head = l.rowsOf(all[r], head)
	}
	n := 0
	b.ReportAllocs()
	cpu := startCPU(b)
	for b.Loop() {
		if err := w.write(ctx, rows[n%len(rows)]); err != nil {
			b.Fatal(err)
		}
		n++
	}
	cpu.report(n * batch)
}

// cpuMeter reads the CPU time of this process (the writer) and of the
// ClickHouse server around a benchmark loop. On two shared cores the
// events/s figure is bound by their sum, and only this split says which
// side to work on.
type cpuMeter struct {
	b           *testing.B
	self, chCPU time.Duration
}

func startCPU(b *testing.B) cpuMeter {
	b.Helper()
	m := cpuMeter{b: b, self: processCPU(b)}
	var err error
	if m.chCPU, err = server.CPUTime(); err != nil {
		b.Fatal(err)
	}
	return m
}

// report adds events/s and each side's CPU microseconds per event.
func (m cpuMeter) report(events int) {
	m.b.Helper()
	chCPU, err := server.CPUTime()
	if err != nil {
		m.b.Fatal(err)
	}
	perEvent := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(events) }
	m.b.ReportMetric(float64(events)/m.b.Elapsed().Seconds(), "events/s")
	m.b.ReportMetric(perEvent(processCPU(m.b)-m.self), "writer-cpu-us/event")
	m.b.ReportMetric(perEvent(chCPU-m.chCPU), "clickhouse-cpu-us/event")
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
