package chain

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Store is where checkpoints are kept: the checkpoint stream of the
// topology (Topology.StreamAuditCheckpoints), one subject per audited
// stream, which denies delete and purge. Older versions kept them in a KV
// bucket (Topology.LegacyBucketAuditCheckpoints); where that bucket is
// still there, its checkpoints are read too, never written.
//
// Reads use stream info and message get only (no consumer), which is all
// the audit's and the operator's credentials allow on these streams.
type Store struct {
	js     jetstream.JetStream
	topo   topology.Topology
	stream jetstream.Stream // nil: the checkpoint stream is missing
	legacy jetstream.Stream // nil: no legacy bucket
}

// ErrNoCheckpointStream is returned by OpenStore when the checkpoint
// stream does not exist.
var ErrNoCheckpointStream = errors.New("checkpoint stream not found")

// OpenStore looks the checkpoint stream and the legacy bucket up. A
// missing checkpoint stream is ErrNoCheckpointStream unless tolerate is
// set, which verify uses: there every stream with rows is then reported
// as having no checkpoint, which is a failure.
func OpenStore(ctx context.Context, js jetstream.JetStream, topo topology.Topology, tolerate bool) (*Store, error) {
	s := &Store{js: js, topo: topo}
	st, err := js.Stream(ctx, topo.StreamAuditCheckpoints())
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		if !tolerate {
			return nil, fmt.Errorf("%w: %s (has the bus been provisioned? run 'aigov bus provision' as the provisioner)", ErrNoCheckpointStream, topo.StreamAuditCheckpoints())
		}
	case err != nil:
		return nil, fmt.Errorf("checkpoint stream %s: %w", topo.StreamAuditCheckpoints(), err)
	default:
		s.stream = st
	}
	legacy, err := js.Stream(ctx, "KV_"+topo.LegacyBucketAuditCheckpoints())
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
	case err != nil:
		return nil, fmt.Errorf("legacy checkpoint bucket %s: %w", topo.LegacyBucketAuditCheckpoints(), err)
	default:
		s.legacy = legacy
	}
	return s, nil
}

// HasStream reports whether the checkpoint stream exists.
func (s *Store) HasStream() bool { return s.stream != nil }

// HasLegacy reports whether the legacy checkpoint bucket exists.
func (s *Store) HasLegacy() bool { return s.legacy != nil }

// MsgID is the Nats-Msg-Id of a checkpoint: the same head signed twice
// (a publish retried after a lost acknowledgement, or two replicas at the
// same position) is stored once.
func MsgID(h Head) string {
	return schemas.DerivedID(h.Stream+":"+strconv.FormatUint(h.Start, 10)+":"+strconv.FormatUint(h.Seq, 10)+":"+h.Hash, "checkpoint")
}

// Put publishes c on its stream's checkpoint subject and waits for
// JetStream to store it.
func (s *Store) Put(ctx context.Context, c Checkpoint) error {
	b, err := c.Marshal()
	if err != nil {
		return fmt.Errorf("encode checkpoint: %w", err)
	}
	m := nats.NewMsg(s.topo.Subjects.Checkpoint(c.Stream))
	m.Data = b
	m.Header.Set(schemas.HeaderMsgID, MsgID(c.Head))
	if _, err := s.js.PublishMsg(ctx, m, jetstream.WithExpectStream(s.topo.StreamAuditCheckpoints())); err != nil {
		return fmt.Errorf("store checkpoint of %s seq %d: %w", c.Stream, c.Seq, err)
	}
	return nil
}

// Latest returns the newest checkpoint of stream: the last one stored in
// the checkpoint stream, else the legacy bucket's current value.
func (s *Store) Latest(ctx context.Context, stream string) (Checkpoint, bool, error) {
	if s.stream != nil {
		c, ok, err := last(ctx, s.stream, s.topo.Subjects.Checkpoint(stream))
		if err != nil || ok {
			return c, ok, checkStream(c, stream, err)
		}
	}
	if s.legacy != nil {
		c, ok, err := last(ctx, s.legacy, s.legacySubject(stream))
		return c, ok, checkStream(c, stream, err)
	}
	return Checkpoint{}, false, nil
}

func checkStream(c Checkpoint, stream string, err error) error {
	if err == nil && c.Stream != "" && c.Stream != stream {
		return fmt.Errorf("checkpoint of stream %s stored under stream %s", c.Stream, stream)
	}
	return err
}

// Checkpoints returns every checkpoint kept for stream, in the checkpoint
// stream and the legacy bucket, ordered by position.
func (s *Store) Checkpoints(ctx context.Context, stream string) ([]Checkpoint, error) {
	var out []Checkpoint
	for _, src := range []struct {
		st      jetstream.Stream
		subject string
	}{{s.stream, s.topo.Subjects.Checkpoint(stream)}, {s.legacy, s.legacySubject(stream)}} {
		if src.st == nil {
			continue
		}
		cps, err := all(ctx, src.st, src.subject)
		if err != nil {
			return nil, err
		}
		out = append(out, cps...)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Seq < out[j].Seq })
	return out, nil
}

// Streams lists the audited streams that have checkpoints.
func (s *Store) Streams(ctx context.Context) ([]string, error) {
	seen := map[string]bool{}
	if s.stream != nil {
		subjects, err := subjectsOf(ctx, s.js, s.topo.StreamAuditCheckpoints(), s.topo.Subjects.Checkpoints())
		if err != nil {
			return nil, err
		}
		for _, subj := range subjects {
			if name, ok := s.topo.Subjects.CheckpointStream(subj); ok {
				seen[name] = true
			}
		}
	}
	if s.legacy != nil {
		prefix := "$KV." + s.topo.LegacyBucketAuditCheckpoints() + "."
		subjects, err := subjectsOf(ctx, s.js, "KV_"+s.topo.LegacyBucketAuditCheckpoints(), prefix+">")
		if err != nil {
			return nil, err
		}
		for _, subj := range subjects {
			if len(subj) <= len(prefix) {
				continue
			}
			// A key deleted from the bucket left only its marker.
			if _, ok, err := last(ctx, s.legacy, subj); err != nil {
				return nil, err
			} else if ok {
				seen[subj[len(prefix):]] = true
			}
		}
	}
	out := make([]string, 0, len(seen))
	for name := range seen {
		out = append(out, name)
	}
	sort.Strings(out)
	return out, nil
}

func (s *Store) legacySubject(stream string) string {
	return "$KV." + s.topo.LegacyBucketAuditCheckpoints() + "." + stream
}

// subjectsOf lists the subjects of stream name matching filter that hold
// messages. A fresh stream handle: the info request replaces its cache.
func subjectsOf(ctx context.Context, js jetstream.JetStream, name, filter string) ([]string, error) {
	st, err := js.Stream(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("list checkpoint streams in %s: %w", name, err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, fmt.Errorf("list checkpoint streams in %s: %w", name, err)
	}
	out := make([]string, 0, len(info.State.Subjects))
	for subj, n := range info.State.Subjects {
		if n > 0 {
			out = append(out, subj)
		}
	}
	return out, nil
}

// kvMarker reports a KV delete or purge marker (the legacy bucket).
func kvMarker(m *jetstream.RawStreamMsg) bool { return m.Header.Get("KV-Operation") != "" }

func last(ctx context.Context, st jetstream.Stream, subject string) (Checkpoint, bool, error) {
	m, err := st.GetLastMsgForSubject(ctx, subject)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return Checkpoint{}, false, nil
	}
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("read checkpoint %s: %w", subject, err)
	}
	if kvMarker(m) {
		return Checkpoint{}, false, nil // a deleted legacy key
	}
	c, err := ParseCheckpoint(m.Data)
	if err != nil {
		return Checkpoint{}, false, fmt.Errorf("checkpoint %s seq %d: %w", subject, m.Sequence, err)
	}
	return c, true, nil
}

// all reads every message on subject, oldest first, one get per message
// (at most CheckpointHistory of them).
func all(ctx context.Context, st jetstream.Stream, subject string) ([]Checkpoint, error) {
	var out []Checkpoint
	for seq := uint64(1); ; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read checkpoints %s: %w", subject, err)
		}
		seq = m.Sequence + 1
		if kvMarker(m) {
			continue
		}
		c, err := ParseCheckpoint(m.Data)
		if err != nil {
			return nil, fmt.Errorf("checkpoint %s seq %d: %w", subject, m.Sequence, err)
		}
		out = append(out, c)
	}
}
