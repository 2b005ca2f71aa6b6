package sink

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime/debug"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/audit/chain"
	"github.com/aigov/aigov/services/audit/internal/chtest"
	"github.com/aigov/aigov/services/audit/internal/migrate"
	"github.com/aigov/aigov/services/audit/migrations"
)

// BenchmarkWriterPath measures the writer's whole path for decision
// events, as a lane runs it on a batch pulled from JetStream: mask, decode,
// hash-chain, then insert into decisions and event_log on the real
// ClickHouse server. JetStream's own cost (fetch, the per-message copy and
// metadata parsing, ack) is not in it, nor Handle's per-message dedupe and
// sort; the events name no masked field, so masking is the scan alone.
// The rows/s metric is audited events per second.
func BenchmarkWriterPath(b *testing.B) {
	benchWriter(b, []int{10000, 25000, 50000}, true)
}

// benchWriter runs one sub-benchmark per batch size and wire compression;
// timeDecode says whether decoding and chaining are on the clock (the
// writer's path) or done while it is paused (the inserts alone).
func benchWriter(b *testing.B, batches []int, timeDecode bool) {
	for _, batch := range batches {
		for _, comp := range []string{CompressionLZ4, CompressionNone} {
			b.Run("batch="+itoa(batch)+"/compression="+comp, func(b *testing.B) {
				w, l, items, next := benchSetup(b, batch, comp)
				ctx := context.Background()
				head := chain.NewHead(l.stream, 0)
				b.ReportAllocs()
				cpu := startCPU(b)
				for iter := 0; b.Loop(); iter++ {
					cpu.pause()
					next(iter)
					if timeDecode {
						cpu.resume()
					}
					var rows []decoded
					rows, _, head = l.rowsOf(items, head)
					if !timeDecode {
						cpu.resume()
					}
					if err := w.write(ctx, rows); err != nil {
						b.Fatal(err)
					}
				}
				cpu.report(b.N * batch)
			})
		}
	}
}

// benchSetup migrates a fresh database and returns a writer on it, a
// decisions lane, a batch of encoded decisions and next, which turns the
// batch into the iter-th batch of a stream: new event and request ids, new
// stream positions. Every row is a distinct event, as in production,
// where ClickHouse's merges have nothing to collapse. Encoding is done up
// front and next patches bytes in place: the producer's cost is not the
// writer's.
func benchSetup(b *testing.B, batch int, compression string) (*Writer, *streamLane, []item, func(iter int)) {
	b.Helper()
	// The service's garbage-collection target, as its main sets it.
	if _, set := os.LookupEnv("GOGC"); !set {
		old := debug.SetGCPercent(GCPercent)
		b.Cleanup(func() { debug.SetGCPercent(old) })
	}
	// The database is not dropped when the benchmark ends: deleting
	// thousands of part files makes every file created in the next minute
	// slower on ext4 (it avoids reusing recently freed inodes), which would
	// charge one benchmark's cleanup to the next. The server's directory
	// goes when the test binary exits.
	db := chtest.DatabaseName(b)
	ctx := context.Background()
	if err := migrate.EnsureDatabase(ctx, chtest.Open(b, server, "default"), db); err != nil {
		b.Fatal(err)
	}
	conn, err := dial(ClickHouseConfig{Addrs: []string{server.Addr()}, User: "default", Compression: compression}, db)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = conn.Close() })
	ms, err := migrate.Load(migrations.FS())
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
	mask, err := newMasker([]string{"prompt"}, MaskHash, testPseudonymizer(b))
	if err != nil {
		b.Fatal(err)
	}
	const stream = "AIGOV_DECISIONS"
	l := &streamLane{stream: stream, consumer: schemas.ConsumerAuditDecisions, w: w, mask: mask}
	// The iteration number is written in hex over the marker, in both the
	// event id and the request id.
	const marker = "ITERATIO"
	items := make([]item, batch)
	at := make([][]int, batch)
	for i := range items {
		d := decisionN(i)
		d.RequestID = fmt.Sprintf("req-%s-%06d", marker, i)
		raw := encode(b, fmt.Sprintf("ev-%s-%06d", marker, i), schemas.TypeDecision, d.Timings.DecidedAt, d)
		for off := 0; ; {
			j := bytes.Index(raw[off:], []byte(marker))
			if j < 0 {
				break
			}
			at[i] = append(at[i], off+j)
			off += j + len(marker)
		}
		if len(at[i]) != 2 {
			b.Fatalf("event %d holds the id marker %d times, want 2", i, len(at[i]))
		}
		items[i] = item{md: meta{Subject: "aigov.decision." + d.Action, Stream: stream}, raw: raw}
	}
	// The patch writes the message bytes in place, which the writer
	// otherwise never does: safe here because the previous batch's write
	// has returned and nothing holds its rows any more.
	next := func(iter int) {
		hex := fmt.Sprintf("%08x", iter)
		for i := range items {
			for _, off := range at[i] {
				copy(items[i].raw[off:], hex)
			}
			items[i].md.Seq = uint64(iter*batch + i + 1)
		}
	}
	waitMerges(b, conn)
	return w, l, items, next
}

// waitMerges waits, up to a minute, until the server runs no merge, so
// that the parts an earlier benchmark left are not merged on this one's
// clock.
func waitMerges(b *testing.B, conn driver.Conn) {
	b.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var n uint64
		if err := conn.QueryRow(context.Background(), "SELECT count() FROM system.merges").Scan(&n); err != nil {
			b.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			b.Logf("%d merges still running after a minute; measuring anyway", n)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// BenchmarkWriterInsert measures only the inserts of BenchmarkWriterPath:
// the rows are decoded and chained before the timer starts. It is the
// ceiling the decode path is measured against.
func BenchmarkWriterInsert(b *testing.B) {
	benchWriter(b, []int{50000}, false)
}

// cpuMeter reads the CPU time of this process (the writer) and of the
// ClickHouse server around a benchmark loop, pausing with its timer. On
// two shared cores the events/s figure is bound by their sum, and only
// this split says which side to work on.
type cpuMeter struct {
	b                 *testing.B
	self, chCPU       time.Duration // at the last start
	selfSum, chCPUSum time.Duration // over the timed parts
}

func startCPU(b *testing.B) *cpuMeter {
	b.Helper()
	m := &cpuMeter{b: b}
	m.start()
	return m
}

func (m *cpuMeter) start() {
	m.b.Helper()
	var err error
	m.self = processCPU(m.b)
	if m.chCPU, err = server.CPUTime(); err != nil {
		m.b.Fatal(err)
	}
}

func (m *cpuMeter) stop() {
	m.b.Helper()
	chCPU, err := server.CPUTime()
	if err != nil {
		m.b.Fatal(err)
	}
	m.selfSum += processCPU(m.b) - m.self
	m.chCPUSum += chCPU - m.chCPU
}

// pause stops the benchmark's timer and the meter together; resume starts
// both again.
func (m *cpuMeter) pause()  { m.b.StopTimer(); m.stop() }
func (m *cpuMeter) resume() { m.start(); m.b.StartTimer() }

// report adds events/s and each side's CPU microseconds per event.
func (m *cpuMeter) report(events int) {
	m.b.Helper()
	m.stop()
	perEvent := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(events) }
	m.b.ReportMetric(float64(events)/m.b.Elapsed().Seconds(), "events/s")
	m.b.ReportMetric(perEvent(m.selfSum), "writer-cpu-us/event")
	m.b.ReportMetric(perEvent(m.chCPUSum), "clickhouse-cpu-us/event")
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
