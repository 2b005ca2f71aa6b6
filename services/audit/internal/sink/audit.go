package sink

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/audit/chain"
	"github.com/aigov/aigov/services/audit/privacy"
	"github.com/aigov/aigov/services/servicekit"
)

// Audit is the audit service's logic on what servicekit.Start built: the
// ClickHouse pool, the writer and a batch runner per durable consumer.
type Audit struct {
	cfg    Config
	conn   driver.Conn
	writer *Writer
	lanes  []lane
	// dlqLane writes the dead-letter stream; dead turns advisories into
	// dead letters.
	dlqLane    *streamLane
	dead       *deadLetters
	deadCons   jetstream.Consumer
	deadRunner *servicekit.Runner
	// retirer drops expired partitions (Config.Retention).
	retirer retirer
}

// lane is one consumer and the runner and handler that drain it.
type lane struct {
	consumer jetstream.Consumer
	runner   *servicekit.Runner
	handle   servicekit.BatchHandler
	stream   *streamLane
}

// New builds the audit service on what servicekit.Start built (NewAudit,
// bounded by the ClickHouse startup timeout): one worker, which runs a
// batch loop per consumer and closes the ClickHouse pool once every loop
// has flushed its last batch.
func New(cfg Config, deps servicekit.Deps) ([]servicekit.Worker, error) {
	ctx, cancel := context.WithTimeout(context.Background(), cfg.ClickHouse.StartupTimeout+servicekit.SetupTimeout)
	defer cancel()
	a, err := NewAudit(ctx, cfg, deps)
	if err != nil {
		return nil, err
	}
	return []servicekit.Worker{a.Run}, nil
}

// Run runs the workers until ctx ends, then closes the pool: the workers'
// last flush still needs it.
func (a *Audit) Run(ctx context.Context) error {
	err := servicekit.Group(a.Workers()...)(ctx)
	return errors.Join(err, a.Close())
}

// NewAudit connects to ClickHouse (waiting for it up to the startup
// timeout), applies the migrations, ensures both audit consumers and
// registers the ClickHouse readiness check and the writer's metrics on
// svc.HTTP.
func NewAudit(ctx context.Context, cfg Config, svc servicekit.Deps) (*Audit, error) {
	if svc.JS == nil || svc.HTTP == nil {
		return nil, errors.New("audit: nil JetStream context or health server")
	}
	if svc.Trust == nil {
		return nil, errors.New("audit: no trust file (AIGOV_TRUST_FILE): the signatures of audited events cannot be checked")
	}
	log := svc.Log.With().Str("component", "audit").Logger()
	conn, err := Open(ctx, cfg.ClickHouse, log)
	if err != nil {
		return nil, err
	}
	a, err := start(ctx, cfg, svc, conn)
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	log.Info().Strs("clickhouse_addrs", cfg.ClickHouse.Addrs).Str("database", cfg.ClickHouse.Database).
		Int("batch_size", cfg.BatchSize).Dur("flush_interval", cfg.FlushInterval).Msg("audit writer ready")
	return a, nil
}

func start(ctx context.Context, cfg Config, svc servicekit.Deps, conn driver.Conn) (*Audit, error) {
	w, err := NewWriter(conn, cfg.ClickHouse.Database, svc.HTTP.Registry, svc.Log)
	if err != nil {
		return nil, err
	}
	key, err := signing.LoadOrCreateKey(cfg.SigningKey, cfg.CreateSigningKey)
	if err != nil {
		return nil, err
	}
	var pseud privacy.Pseudonymizer
	if cfg.PseudonymKey != "" {
		pk, err := privacy.LoadOrCreateKey(cfg.PseudonymKey, cfg.CreatePseudonymKey)
		if err != nil {
			return nil, err
		}
		if pseud, err = privacy.NewPseudonymizer(pk); err != nil {
			return nil, err
		}
	}
	mask, err := newMasker(cfg.MaskFields, cfg.MaskMode, pseud)
	if err != nil {
		return nil, err
	}
	cps, err := chain.OpenStore(ctx, svc.JS, svc.Topology, false)
	if err != nil {
		return nil, err
	}
	a := &Audit{cfg: cfg, conn: conn, writer: w}
	a.retirer = retirer{conn: conn, db: cfg.ClickHouse.Database, key: key, policy: cfg.Retention, topo: svc.Topology,
		log: svc.Log.With().Str("component", "retention").Logger()}
	newRunner := func(name string) *servicekit.Runner {
		r := servicekit.NewRunner(name, svc.Log, svc.HTTP.Registry, 1)
		r.HandlerTimeout = HandlerTimeout
		// An outage of ClickHouse is retried in place; a short cap on the
		// pause means the backlog starts moving soon after it returns.
		r.Backoff = servicekit.ExponentialBackoff(250*time.Millisecond, 5*time.Second)
		return r
	}
	// One lane per audited stream: whatever stream the topology gains is
	// audited without wiring here.
	for _, stream := range svc.Topology.AuditedStreams() {
		name := svc.Topology.AuditConsumer(stream)
		cons, err := svc.Topology.Bind(ctx, svc.JS, name)
		if err != nil {
			return nil, err
		}
		l := &streamLane{stream: stream, consumer: name, deadLtr: stream == svc.Topology.StreamDeadLetter(), w: w, js: svc.JS, cps: cps,
			key: key, mask: mask, subjects: svc.Topology.Subjects, every: cfg.CheckpointInterval,
			trust: svc.Trust, signers: svc.Topology.Signers(stream),
			log: svc.Log.With().Str("component", "audit").Str("stream", stream).Logger()}
		a.lanes = append(a.lanes, lane{consumer: cons, runner: newRunner(name), handle: l.Handle, stream: l})
		if l.deadLtr {
			a.dlqLane = l
		}
	}
	if a.dlqLane == nil {
		return nil, errors.New("audit: the topology has no audited dead-letter stream")
	}
	cons, err := svc.Topology.Bind(ctx, svc.JS, schemas.ConsumerDeadLetter)
	if err != nil {
		return nil, err
	}
	// Redaction needs no key: the pseudonymizer is never asked.
	personal, err := newMasker(cfg.PersonalContextFields, MaskRedact, pseud)
	if err != nil {
		return nil, fmt.Errorf("audit: personal context fields: %w", err)
	}
	a.dead = &deadLetters{js: svc.JS, lane: a.dlqLane, personal: personal, log: svc.Log.With().Str("component", "dead-letter").Logger()}
	a.deadCons, a.deadRunner = cons, newRunner(schemas.ConsumerDeadLetter)
	svc.HTTP.AddCheck("clickhouse", func(ctx context.Context) error {
		if err := conn.Ping(ctx); err != nil {
			return fmt.Errorf("ping: %w", err)
		}
		return nil
	})
	return a, nil
}

// Workers returns one batch loop per consumer (Run runs them).
// Each flushes its last batch when its context ends.
func (a *Audit) Workers() []servicekit.Worker {
	opts := servicekit.BatchOptions{MaxMessages: a.cfg.BatchSize, MaxWait: a.cfg.FlushInterval, BacklogWait: a.cfg.BacklogWait()}
	out := make([]servicekit.Worker, 0, len(a.lanes)+1)
	for _, l := range a.lanes {
		out = append(out, func(ctx context.Context) error {
			// Each lane signs its own rows within the checkpoint interval,
			// whatever the traffic of its stream or the others'.
			tctx, stopTicker := context.WithCancel(ctx)
			ticker := make(chan struct{})
			go func() {
				defer close(ticker)
				l.stream.RunTicker(tctx)
			}()
			err := l.runner.RunBatches(ctx, l.consumer, opts, l.handle)
			stopTicker()
			<-ticker
			// The last batch is flushed: sign where the chain stands, so a
			// restart (or verify) finds the newest head.
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			l.stream.Sign(cctx)
			cancel()
			return err
		})
	}
	out = append(out, func(ctx context.Context) error {
		return a.deadRunner.Run(ctx, a.deadCons, a.dead.Handle)
	})
	if a.cfg.Retention.Enabled() {
		out = append(out, a.retirer.worker(a.cfg.RetentionInterval))
	}
	return out
}

// Close closes the ClickHouse pool. Call it after the workers have
// returned: their last flush still needs it.
func (a *Audit) Close() error {
	if err := a.conn.Close(); err != nil {
		return fmt.Errorf("close clickhouse: %w", err)
	}
	return nil
}
