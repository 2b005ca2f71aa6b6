package signing

import (
	"crypto/ed25519"
	"errors"
	"strconv"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/nats-io/nats.go"
)

// Signer signs a service's events with its private key; it is safe for
// concurrent use. The batches are its callers': the pipelined runner
// hands it what its workers queued (SignMsgs), one Ed25519 signature for
// them all.
type Signer struct {
	key ed25519.PrivateKey
	kid string

	// busy is the time spent hashing and signing, in nanoseconds; events
	// and batches count what was signed (Stats).
	busy, events, batches atomic.Int64
}

// Stats is what a signer or a trust did so far: the CPU time spent in
// cryptography (hashing and Ed25519), the events handled and the Ed25519
// operations made (one per batch, or per root verified).
type Stats struct {
	Busy    time.Duration
	Events  int64
	Ed25519 int64
}

// Stats reports the signer's work so far.
func (s *Signer) Stats() Stats {
	return Stats{Busy: time.Duration(s.busy.Load()), Events: s.events.Load(), Ed25519: s.batches.Load()}
}

type job struct {
	leaf   [32]byte
	header string
}

// NewSigner signs with key.
func NewSigner(key ed25519.PrivateKey) (*Signer, error) {
	if len(key) != ed25519.PrivateKeySize {
		return nil, errors.New("signing: not an Ed25519 private key")
	}
	return &Signer{key: key, kid: KeyID(key.Public().(ed25519.PublicKey))}, nil
}

// KeyID names the signer's public key.
func (s *Signer) KeyID() string { return s.kid }

// Public is the signer's public key, for a trust file.
func (s *Signer) Public() ed25519.PublicKey { return s.key.Public().(ed25519.PublicKey) }

// Sign returns the Aigov-Signature header value for one event published
// on subject with Nats-Msg-Id msgID and body, signed alone. A caller that
// holds several events signs them together with SignMsgs.
func (s *Signer) Sign(subject, msgID string, body []byte) string {
	j := &job{}
	measure(&s.busy, func() { j.leaf = Leaf(subject, msgID, body) })
	s.events.Add(1)
	s.signBatch([]*job{j})
	return j.header
}

func (s *Signer) signBatch(batch []*job) {
	s.batches.Add(1)
	measure(&s.busy, func() { s.sign(batch) })
}

func (s *Signer) sign(batch []*job) {
	leaves := make([][32]byte, len(batch))
	for i, j := range batch {
		leaves[i] = j.leaf
	}
	tree := levels(leaves)
	depth := len(tree) - 1
	sig := ed25519.Sign(s.key, rootMessage(depth, tree[depth][0]))
	// The prefix is the batch's; only the index and the path are each
	// event's.
	prefix := make([]byte, 0, 128)
	prefix = append(prefix, "v1;kid="...)
	prefix = append(prefix, s.kid...)
	prefix = append(prefix, ";sig="...)
	prefix = b64.AppendEncode(prefix, sig)
	if depth == 0 {
		batch[0].header = string(prefix)
		return
	}
	prefix = append(prefix, ";d="...)
	prefix = strconv.AppendInt(prefix, int64(depth), 10)
	prefix = append(prefix, ";i="...)
	var flat [32 * MaxDepth]byte
	for i, j := range batch {
		at := i
		for h := range depth {
			copy(flat[32*h:], tree[h][at^1][:])
			at >>= 1
		}
		b := make([]byte, 0, len(prefix)+6+b64.EncodedLen(32*depth))
		b = append(b, prefix...)
		b = strconv.AppendInt(b, int64(i), 10)
		b = append(b, ";p="...)
		b = b64.AppendEncode(b, flat[:32*depth])
		j.header = unsafe.String(unsafe.SliceData(b), len(b))
	}
}

// SignMsgs signs each message (its Subject, Nats-Msg-Id header and Data)
// and sets its Aigov-Signature header, all under one signature: the caller
// already holds the batch. Each message needs its header map.
func (s *Signer) SignMsgs(msgs []*nats.Msg) {
	for len(msgs) > 0 {
		n := min(len(msgs), maxBatch)
		batch := make([]*job, n)
		measure(&s.busy, func() {
			for i, m := range msgs[:n] {
				batch[i] = &job{leaf: Leaf(m.Subject, m.Header.Get(nats.MsgIdHdr), m.Data)}
			}
		})
		s.events.Add(int64(n))
		s.signBatch(batch)
		for i, m := range msgs[:n] {
			m.Header.Set(Header, batch[i].header)
		}
		msgs = msgs[n:]
	}
}
