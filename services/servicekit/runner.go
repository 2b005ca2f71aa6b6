package servicekit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/rs/zerolog"
)

// Handler processes one message. Handlers never ack: the runner acks on
// nil, terminates on a Permanent error, and naks with a delay otherwise so
// JetStream redelivers.
type Handler func(ctx context.Context, m jetstream.Msg) error

// BatchHandler processes a batch; nil means every message's effect is
// durable and all are acked.
type BatchHandler func(ctx context.Context, msgs []jetstream.Msg) error

// ErrPermanent marks an error that no retry can fix.
var ErrPermanent = errors.New("permanent failure")

// Permanent wraps err so the runner terminates the message instead of
// retrying it.
func Permanent(err error) error { return fmt.Errorf("%w: %w", ErrPermanent, err) }

// Runner pulls from a durable consumer and owns every ack.
type Runner struct {
	name    string
	log     zerolog.Logger
	workers int
	// HandlerTimeout bounds one handler call; keep it below AckWait.
	HandlerTimeout time.Duration
	// Backoff returns the redelivery delay after a failed attempt.
	Backoff func(delivered uint64) time.Duration

	handled *prometheus.CounterVec
	// acked, naked and termed are handled's children, looked up once: a
	// label lookup hashes the values on every message.
	acked, naked, termed prometheus.Counter
	latency              prometheus.Histogram
	// pipeline, when set, publishes handlers' events asynchronously in
	// signed batches (Pipeline).
	pipeline *PipelineOptions
}

// NewRunner registers the runner's metrics in reg.
func NewRunner(name string, log zerolog.Logger, reg prometheus.Registerer, workers int) *Runner {
	if workers < 1 {
		workers = 1
	}
	r := &Runner{
		name:           name,
		log:            log.With().Str("consumer", name).Logger(),
		workers:        workers,
		HandlerTimeout: 10 * time.Second,
		Backoff:        ExponentialBackoff(250*time.Millisecond, 30*time.Second),
		handled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name:        "aigov_messages_handled_total",
			Help:        "Messages handled by outcome: ack, nak or term.",
			ConstLabels: prometheus.Labels{"consumer": name},
		}, []string{"outcome"}),
		latency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:        "aigov_handler_seconds",
			Help:        "Time spent in the handler per message or batch.",
			ConstLabels: prometheus.Labels{"consumer": name},
			Buckets:     prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
	}
	r.acked, r.naked, r.termed = r.handled.WithLabelValues("ack"), r.handled.WithLabelValues("nak"), r.handled.WithLabelValues("term")
	reg.MustRegister(r.handled, r.latency)
	return r
}

// ExponentialBackoff doubles from first up to max.
func ExponentialBackoff(first, max time.Duration) func(uint64) time.Duration {
	return func(delivered uint64) time.Duration {
		d := first
		for i := uint64(1); i < delivered && d < max; i++ {
			d *= 2
		}
		return min(d, max)
	}
}

// PullExpiry and PullHeartbeat shape the pull requests of every runner:
// the server answers an idle pull with a heartbeat every PullHeartbeat,
// and two missed ones (ErrNoHeartbeat) make the client pull again. With
// nats.go's defaults (30 s expiry, 15 s heartbeat) a paused server, or a
// link that drops packets without closing, went unnoticed for 30 s; with
// these, within about 2 × PullHeartbeat (4 s). An idle consumer sends one
// pull request every PullExpiry.
const (
	PullExpiry    = 10 * time.Second
	PullHeartbeat = 2 * time.Second
)

// pump feeds messages from the consumer into out until ctx ends; then it
// drains what was already pulled and closes out.
func (r *Runner) pump(ctx context.Context, cons jetstream.Consumer, buffer int, out chan<- jetstream.Msg) error {
	it, err := cons.Messages(jetstream.PullMaxMessages(buffer),
		jetstream.PullExpiry(PullExpiry), jetstream.PullHeartbeat(PullHeartbeat))
	if err != nil {
		close(out)
		return fmt.Errorf("consume %s: %w", r.name, err)
	}
	// The AfterFunc must outlive pump, which returns at once: it is what
	// drains the iterator on shutdown, so it is released by the goroutine.
	stop := context.AfterFunc(ctx, it.Drain)
	go func() {
		defer stop()
		defer close(out)
		for {
			m, err := it.Next()
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				// The server stopped answering (PullHeartbeat): the
				// iterator pulls again by itself. No pause: the error
				// comes at most once per two heartbeats, and while the
				// loop is not reading, the statuses a recovered server
				// sends at once would overflow the iterator's buffer.
				r.log.Warn().Err(err).Msg("pull interrupted")
				continue
			}
			if err != nil {
				// Other errors: the iterator recovers by itself; pause so
				// a broken link cannot spin the loop.
				r.log.Warn().Err(err).Msg("pull interrupted")
				select {
				case <-time.After(200 * time.Millisecond):
				case <-ctx.Done():
				}
				continue
			}
			out <- m
		}
	}()
	return nil
}

// Run handles messages with the runner's workers until ctx ends, then stops
// pulling, finishes every message already pulled, and returns.
func (r *Runner) Run(ctx context.Context, cons jetstream.Consumer, h Handler) error {
	msgs := make(chan jetstream.Msg)
	if err := r.pump(ctx, cons, 2*r.workers, msgs); err != nil {
		return err
	}
	if r.pipeline != nil {
		r.runPipelined(ctx, msgs, h)
		return nil
	}
	var wg sync.WaitGroup
	for range r.workers {
		wg.Go(func() {
			for m := range msgs {
				r.handle(ctx, m, h)
			}
		})
	}
	wg.Wait()
	return nil
}

func (r *Runner) handle(ctx context.Context, m jetstream.Msg, h Handler) {
	r.settle(m, r.call(ctx, m, h, nil))
}

// call runs the handler on m, bounded by HandlerTimeout, recovering a
// panic and timing it; a pipelined runner passes the message's settlement
// for the handler's publishes to queue in.
func (r *Runner) call(ctx context.Context, m jetstream.Msg, h Handler, s *settlement) error {
	// In-flight work finishes after shutdown begins; only the timeout cuts it.
	hctx := context.WithoutCancel(ctx)
	if s != nil {
		hctx = context.WithValue(hctx, settlementKey{}, s)
	}
	hctx, cancel := context.WithTimeout(hctx, r.HandlerTimeout)
	defer cancel()
	start := time.Now()
	err := r.safely(func() error { return h(hctx, m) })
	r.latency.Observe(time.Since(start).Seconds())
	return err
}

func (r *Runner) safely(f func() error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("handler panic: %v", p)
		}
	}()
	return f()
}

func (r *Runner) settle(m jetstream.Msg, err error) {
	if err == nil {
		if aerr := m.Ack(); aerr != nil {
			// The effect is durable; redelivery will be absorbed as a duplicate.
			r.log.Warn().Err(aerr).Str("subject", m.Subject()).Msg("ack failed")
		}
		r.acked.Inc()
		return
	}
	// Only a failure needs the delivery count: parsing the reply subject
	// for it on every ack cost 4-5 % of authn's CPU.
	var delivered uint64
	if md, mdErr := m.Metadata(); mdErr == nil {
		delivered = md.NumDelivered
	}
	switch {
	case errors.Is(err, ErrPermanent):
		r.log.Error().Err(err).Str("subject", m.Subject()).Uint64("num_delivered", delivered).Msg("message terminated")
		_ = m.TermWithReason(truncate(err.Error(), 200))
		r.termed.Inc()
	default:
		delay := r.Backoff(delivered)
		r.log.Warn().Err(err).Str("subject", m.Subject()).Uint64("num_delivered", delivered).Dur("retry_in", delay).Msg("message will be retried")
		_ = m.NakWithDelay(delay)
		r.naked.Inc()
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// BatchOptions bound a batch.
type BatchOptions struct {
	// MaxMessages flushes a batch when it holds this many.
	MaxMessages int
	// MaxWait flushes a non-empty batch this long after its first message.
	MaxWait time.Duration
	// BacklogWait, when above MaxWait, lets a batch wait up to this long
	// after its first message while the stream still holds enough
	// undelivered messages to fill it. Cutting a batch on MaxWait only
	// bounds latency when messages trickle in; on a backlog it makes many
	// small inserts instead of a few full ones, and the backlog drains
	// slower. Zero: MaxWait always decides.
	BacklogWait time.Duration
}

// RunBatches collects messages into batches and hands each to h. A failed
// batch is retried in place with back-off, its messages kept alive with
// InProgress, so that a sink outage holds the backlog in JetStream instead of
// burning through MaxDeliver. On shutdown the last batch is flushed; if that
// fails too its messages are nak'ed for redelivery after restart.
func (r *Runner) RunBatches(ctx context.Context, cons jetstream.Consumer, opts BatchOptions, h BatchHandler) error {
	if opts.MaxMessages < 1 || opts.MaxWait <= 0 {
		return errors.New("batch options need MaxMessages >= 1 and MaxWait > 0")
	}
	// A batch larger than the consumer's MaxAckPending can never fill:
	// waiting for it would only stall every batch for BacklogWait.
	if info := cons.CachedInfo(); opts.BacklogWait > 0 && info != nil && info.Config.MaxAckPending > 0 &&
		info.Config.MaxAckPending < opts.MaxMessages {
		r.log.Warn().Int("max_ack_pending", info.Config.MaxAckPending).Int("batch", opts.MaxMessages).
			Msg("batches cannot fill on a backlog: MaxAckPending is below the batch size")
		opts.BacklogWait = 0
	}
	msgs := make(chan jetstream.Msg, opts.MaxMessages)
	if err := r.pump(ctx, cons, 2*opts.MaxMessages, msgs); err != nil {
		return err
	}
	batch := make([]jetstream.Msg, 0, opts.MaxMessages)
	var started time.Time // when the batch got its first message
	timer := time.NewTimer(opts.MaxWait)
	timer.Stop()
	flush := func() {
		if len(batch) > 0 {
			r.flush(ctx, batch, h)
			batch = batch[:0]
		}
		timer.Stop()
	}
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				flush()
				return nil
			}
			if len(batch) == 0 {
				started = time.Now()
				timer.Reset(opts.MaxWait)
			}
			batch = append(batch, m)
			if len(batch) >= opts.MaxMessages {
				flush()
			}
		case <-timer.C:
			if left := opts.BacklogWait - time.Since(started); left > 0 && backlogFills(batch, opts.MaxMessages) {
				timer.Reset(min(left, opts.MaxWait))
				continue
			}
			flush()
		}
	}
}

// backlogFills reports whether the stream still holds, undelivered to the
// consumer, at least the messages the batch lacks. Every message says how
// many were pending when it was delivered; the newest one is the latest
// word.
func backlogFills(batch []jetstream.Msg, max int) bool {
	if len(batch) == 0 || len(batch) >= max {
		return false
	}
	md, err := batch[len(batch)-1].Metadata()
	return err == nil && md.NumPending >= uint64(max-len(batch))
}

func (r *Runner) flush(ctx context.Context, batch []jetstream.Msg, h BatchHandler) {
	for attempt := uint64(1); ; attempt++ {
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), r.HandlerTimeout)
		start := time.Now()
		err := r.safely(func() error { return h(hctx, batch) })
		cancel()
		r.latency.Observe(time.Since(start).Seconds())
		if err == nil {
			for _, m := range batch {
				r.settle(m, nil)
			}
			return
		}
		if ctx.Err() != nil {
			r.log.Error().Err(err).Int("messages", len(batch)).Msg("batch failed during shutdown; left for redelivery")
			for _, m := range batch {
				_ = m.Nak()
				r.naked.Inc()
			}
			return
		}
		delay := r.Backoff(attempt)
		r.log.Warn().Err(err).Int("messages", len(batch)).Uint64("attempt", attempt).Dur("retry_in", delay).Msg("batch failed; retrying")
		for _, m := range batch {
			_ = m.InProgress()
		}
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
	}
}
