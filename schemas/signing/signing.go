// Package signing is how aigov services vouch for the events they publish,
// and how everyone else checks them: Ed25519 over an event's canonical
// bytes (the NATS subject it was published on, its Nats-Msg-Id and its
// body), carried in the Aigov-Signature header with the signer's key id.
//
// A signer signs the events that are waiting at the same moment as one
// batch: each event is a leaf of a Merkle tree, the root is signed once, and
// each event carries the root's signature with its own path to the root.
// Under load that turns one Ed25519 signature per event into one per
// batch, and a verifier that has checked a root once checks the batch's
// other events with a few SHA-256 hashes. An event signed alone is a tree
// of one leaf: its path is empty.
//
// Header value (one line, fields separated by ';'):
//
//	v1;kid=<key id>;sig=<base64url Ed25519 signature of the root>[;d=<depth>;i=<leaf index>;p=<base64url path>]
//
// Leaf = SHA-256(0x00 || "aigov-event-v1" || len||subject || len||msg-id ||
// len||body), lengths as 8-byte big-endian. Node = SHA-256(0x01 || left ||
// right); a tree is padded to a power of two with all-zero leaves. The
// signature covers "aigov-batch-v1" || depth (one byte) || root.
package signing

import (
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unsafe"
)

// Header is the NATS header that carries an event's signature.
const Header = "Aigov-Signature"

// HeaderSubject names, on a reply sent to a requester's inbox, the subject
// the event was signed for (its stream subject): the inbox is not it.
const HeaderSubject = "Aigov-Signed-Subject"

// MaxDepth bounds a batch's tree: 2^8 events under one signature.
const MaxDepth = 8

// maxBatch is the most events signed under one root.
const maxBatch = 1 << MaxDepth

// Status is the outcome of checking an event's signature, as the audit
// stores it.
type Status string

// The statuses. Only Valid means the event is what its signer published.
const (
	Valid     Status = "valid"
	Unsigned  Status = "unsigned"
	Invalid   Status = "invalid"
	Untrusted Status = "untrusted"
)

// Errors of Verify, by status.
var (
	// ErrUnsigned: the message has no signature header (or no msg id).
	ErrUnsigned = errors.New("event is not signed")
	// ErrInvalid: the signature is malformed or does not verify.
	ErrInvalid = errors.New("event signature does not verify")
	// ErrUntrusted: the key is not in the trust set, or belongs to a role
	// that does not publish this event.
	ErrUntrusted = errors.New("event signed by a key not trusted for it")
)

// StatusOf maps Verify's error to a status.
func StatusOf(err error) Status {
	switch {
	case err == nil:
		return Valid
	case errors.Is(err, ErrUnsigned):
		return Unsigned
	case errors.Is(err, ErrUntrusted):
		return Untrusted
	default:
		return Invalid
	}
}

// KeyID is the short name of a public key: the first 8 bytes of its
// SHA-256, hex (as the audit's checkpoints name theirs).
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// Leaf is the hash of one event's canonical bytes.
func Leaf(subject, msgID string, body []byte) [32]byte {
	const tag = "aigov-event-v1"
	// Encoded in a pooled buffer: every verifier hashes every event, and a
	// fresh kilobyte (or a hash.Hash) per event is garbage the collector
	// then charges to whoever allocates.
	bp := leafBuffers.Get().(*[]byte)
	b := append((*bp)[:0], 0)
	b = append(b, tag...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(subject)))
	b = append(b, subject...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(msgID)))
	b = append(b, msgID...)
	b = binary.BigEndian.AppendUint64(b, uint64(len(body)))
	b = append(b, body...)
	sum := sha256.Sum256(b)
	if cap(b) <= maxPooledLeaf {
		*bp = b
		leafBuffers.Put(bp)
	}
	return sum
}

// maxPooledLeaf bounds the buffers kept for Leaf; a larger event's buffer
// is left to the collector.
const maxPooledLeaf = 64 << 10

var leafBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

func node(l, r [32]byte) [32]byte {
	var b [65]byte
	b[0] = 1
	copy(b[1:], l[:])
	copy(b[33:], r[:])
	return sha256.Sum256(b[:])
}

// rootMessage is what the Ed25519 signature covers.
func rootMessage(depth int, root [32]byte) []byte {
	const tag = "aigov-batch-v1"
	b := make([]byte, 0, len(tag)+1+32)
	b = append(b, tag...)
	b = append(b, byte(depth))
	return append(b, root[:]...)
}

// levels builds the padded tree over leaves: levels[0] holds the leaves
// (padded with zero hashes to a power of two), levels[depth] the root.
func levels(leaves [][32]byte) [][][32]byte {
	size := 1
	for size < len(leaves) {
		size <<= 1
	}
	level := make([][32]byte, size)
	copy(level, leaves)
	out := [][][32]byte{level}
	for len(level) > 1 {
		next := make([][32]byte, len(level)/2)
		for j := range next {
			next[j] = node(level[2*j], level[2*j+1])
		}
		out = append(out, next)
		level = next
	}
	return out
}

// signature is a parsed header value.
type signature struct {
	kid   string
	sig   []byte
	depth int
	index int
	// buf holds a parsed header's signature and then its path's hashes,
	// back to back, so that parsing allocates nothing (a verifier parses
	// every event's header); sigLen and flatLen say how much of each came.
	buf             [ed25519.SignatureSize + 32*MaxDepth]byte
	sigLen, flatLen int
}

var b64 = base64.RawURLEncoding.Strict()

// decodeInto decodes base64url v into dst (read in place, not copied)
// and returns the decoded length: what does not fit is an error.
func decodeInto(dst []byte, v string) (int, error) {
	if b64.DecodedLen(len(v)) > len(dst) {
		return 0, errors.New("too long")
	}
	return b64.Decode(dst, unsafe.Slice(unsafe.StringData(v), len(v)))
}

// sibling is the parsed path's hash at height.
func (s *signature) sibling(height int) [32]byte {
	at := ed25519.SignatureSize + 32*height
	return [32]byte(s.buf[at : at+32])
}

// parsedSig is the parsed signature.
func (s *signature) parsedSig() []byte { return s.buf[:s.sigLen] }

// digits parses a small decimal number written with digits only (no
// sign): one header has one spelling.
func digits(v string) (int, error) {
	if v == "" || len(v) > 4 || strings.TrimLeft(v, "0123456789") != "" || (len(v) > 1 && v[0] == '0') {
		return 0, errors.New("not a plain decimal number")
	}
	return strconv.Atoi(v)
}

func parse(v string, s *signature) error {
	rest, ok := strings.CutPrefix(v, "v1;")
	if !ok {
		return fmt.Errorf("%w: not a v1 %s header", ErrInvalid, Header)
	}
	var seen [5]bool // kid, sig, d, i, p
	for rest != "" {
		var f string
		f, rest, _ = strings.Cut(rest, ";")
		k, val, ok := strings.Cut(f, "=")
		slot := slices.Index([]string{"kid", "sig", "d", "i", "p"}, k)
		if !ok || slot < 0 || seen[slot] {
			return fmt.Errorf("%w: malformed field %q", ErrInvalid, f)
		}
		seen[slot] = true
		var err error
		switch k {
		case "kid":
			s.kid = val
		case "sig":
			s.sigLen, err = decodeInto(s.buf[:ed25519.SignatureSize], val)
		case "d":
			s.depth, err = digits(val)
		case "i":
			s.index, err = digits(val)
		case "p":
			s.flatLen, err = decodeInto(s.buf[ed25519.SignatureSize:], val)
		default:
			err = errors.New("unknown field")
		}
		if err != nil {
			return fmt.Errorf("%w: field %q: %v", ErrInvalid, k, err)
		}
	}
	switch {
	case s.kid == "" || s.sigLen != ed25519.SignatureSize:
		return fmt.Errorf("%w: missing key id or signature", ErrInvalid)
	case s.depth < 0 || s.depth > MaxDepth || s.index < 0 || s.index >= 1<<s.depth:
		return fmt.Errorf("%w: depth %d index %d out of range", ErrInvalid, s.depth, s.index)
	case s.flatLen != 32*s.depth:
		return fmt.Errorf("%w: path of %d bytes for depth %d", ErrInvalid, s.flatLen, s.depth)
	}
	return nil
}
