// Package chain is the audit log's tamper evidence: the hash chain that
// links every row of ClickHouse table event_log to its predecessor in
// stream-sequence order, the Ed25519-signed checkpoints the audit writer
// keeps in a JetStream stream that denies delete and purge (Store), and
// the verification `aigov audit verify` runs.
//
// The chain of a stream is a pure function of the stream's content (and of
// the masking configuration), so any writer — a restarted one, or a second
// replica — computes the same link for the same position, and a row
// written twice is written identically.
//
// Encoding (version 1):
//
//	row_hash   = hex(SHA-256("aigov-row-v1" ‖ f(stream) ‖ u64(seq) ‖ u64(prev_seq) ‖ f(event_id) ‖ f(type)
//	                         ‖ f(source) ‖ f(subject) ‖ u64(event_time_us) ‖ f(data) ‖ f(invalid_reason)))
//	             (version 2, for a row whose event's signature was checked: tag "aigov-row-v2" and
//	             ‖ f(signer_key_id) ‖ f(signature) appended, so the stored verdict is covered too)
//	chain_hash = hex(SHA-256(bytes(previous chain_hash) ‖ bytes(row_hash)))
//	genesis    = hex(SHA-256("aigov-chain-v1" ‖ f(stream)))   // the "previous" of the first row
//
// where f(s) is s prefixed by its length as a big-endian uint64 and u64 is
// a big-endian uint64. A row normally has prev_seq = seq-1; a row of type
// TypeGap stands for stream positions prev_seq+1..seq that were gone from
// the stream before the audit could read them.
package chain

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"hash"
)

// TypeGap is the event_log type of a row standing for stream positions
// that no longer existed when the writer reached them.
const TypeGap = "gap"

// Row is what the chain covers of one event_log row.
type Row struct {
	Stream        string
	Seq           uint64
	PrevSeq       uint64
	EventID       string
	Type          string
	Source        string
	Subject       string
	TimeUS        uint64
	Data          string
	InvalidReason string
	// SignerKeyID and Signature are the id of the key that signed the event
	// and what checking its signature gave (signing.Status); both empty
	// for an event that is not checked (requests, dead letters) and for
	// rows written before signatures, which keep their v1 hash.
	SignerKeyID string
	Signature   string
	// RowHash and ChainHash are the stored links (hex); Hash ignores them.
	RowHash   string
	ChainHash string
}

// Hash returns the row's row_hash.
func (r Row) Hash() string {
	var scratch []byte
	return r.HashWith(&scratch)
}

// HashWith is Hash encoding the row in *scratch, grown as needed and kept
// for the next call: the writer hashes every audited event, a kilobyte or
// more each, and a fresh buffer per row was a tenth of its allocations.
// The encoded row is hashed at once; writing field by field to a
// hash.Hash copied each field again.
func (r Row) HashWith(scratch *[]byte) string {
	tag := "aigov-row-v1"
	signed := r.SignerKeyID != "" || r.Signature != ""
	if signed {
		tag = "aigov-row-v2"
	}
	n := 8*13 + len(tag) + len(r.Stream) + len(r.EventID) + len(r.Type) + len(r.Source) + len(r.Subject) +
		len(r.Data) + len(r.InvalidReason) + len(r.SignerKeyID) + len(r.Signature)
	b := (*scratch)[:0]
	if cap(b) < n {
		b = make([]byte, 0, n)
	}
	b = appendField(b, tag)
	b = appendField(b, r.Stream)
	b = binary.BigEndian.AppendUint64(b, r.Seq)
	b = binary.BigEndian.AppendUint64(b, r.PrevSeq)
	b = appendField(b, r.EventID)
	b = appendField(b, r.Type)
	b = appendField(b, r.Source)
	b = appendField(b, r.Subject)
	b = binary.BigEndian.AppendUint64(b, r.TimeUS)
	b = appendField(b, r.Data)
	b = appendField(b, r.InvalidReason)
	if signed {
		b = appendField(b, r.SignerKeyID)
		b = appendField(b, r.Signature)
	}
	*scratch = b
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

func appendField(b []byte, s string) []byte {
	return append(binary.BigEndian.AppendUint64(b, uint64(len(s))), s...)
}

// Genesis is the link before a stream's first chained row.
func Genesis(stream string) string {
	h := sha256.New()
	field(h, "aigov-chain-v1")
	field(h, stream)
	return hex.EncodeToString(h.Sum(nil))
}

// Link returns the chain hash of a row whose row hash is rowHash and whose
// predecessor's chain hash is prev. Both are hex; a malformed one still
// yields a (different) hash, so a tampered link never verifies.
func Link(prev, rowHash string) string {
	h := sha256.New()
	h.Write(decode(prev))
	h.Write(decode(rowHash))
	return hex.EncodeToString(h.Sum(nil))
}

func decode(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != sha256.Size {
		// Never equal to a real 32-byte digest.
		return append([]byte("invalid:"), s...)
	}
	return b
}

func field(h hash.Hash, s string) {
	u64(h, uint64(len(s)))
	h.Write([]byte(s))
}

func u64(h hash.Hash, n uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n)
	h.Write(b[:])
}

// Head is a stream's chain position: the last chained sequence and its
// chain hash, and where the chain started.
type Head struct {
	Stream string `json:"stream"`
	// Start is the sequence before the chain's first row; rows at or
	// below it predate the chain.
	Start uint64 `json:"start_seq"`
	Seq   uint64 `json:"seq"`
	Hash  string `json:"chain_hash"`
}

// NewHead starts a chain on stream after sequence start.
func NewHead(stream string, start uint64) Head {
	return Head{Stream: stream, Start: start, Seq: start, Hash: Genesis(stream)}
}

// ExtendHashed links r after h like Extend, reusing r.RowHash when r
// was hashed beforehand (Hash is the costly part, and independent per row,
// so the writer computes it on every core) with r.PrevSeq = h.Seq.
// Otherwise it is Extend.
func (h Head) ExtendHashed(r *Row) Head {
	if r.RowHash == "" || r.PrevSeq != h.Seq {
		return h.Extend(r)
	}
	r.ChainHash = Link(h.Hash, r.RowHash)
	return Head{Stream: h.Stream, Start: h.Start, Seq: r.Seq, Hash: r.ChainHash}
}

// Extend links r after h: it sets r's PrevSeq, RowHash and ChainHash and
// returns the new head. r.Seq must be above h.Seq.
func (h Head) Extend(r *Row) Head {
	r.PrevSeq = h.Seq
	r.RowHash = r.Hash()
	r.ChainHash = Link(h.Hash, r.RowHash)
	return Head{Stream: h.Stream, Start: h.Start, Seq: r.Seq, Hash: r.ChainHash}
}
