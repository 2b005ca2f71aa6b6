package signing

import (
	"cmp"
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// Key is one trusted public key and the role whose events it signs.
type Key struct {
	ID     string
	Role   string
	Public ed25519.PublicKey
}

// TrustFile is the trust file's JSON: the public key of every signing
// service, by role. A role may list two keys while one replaces the
// other (rotation); the file is the operator's, not the services'.
type TrustFile struct {
	Keys []TrustedKey `json:"keys"`
}

// TrustedKey is one entry of a trust file. The key id is derived from the
// key, never taken from the file, so an entry cannot claim another's id.
type TrustedKey struct {
	Role string `json:"role"`
	// PublicKey is the raw 32-byte Ed25519 public key, standard base64.
	PublicKey string `json:"public_key"`
	// Comment is free text (who, when).
	Comment string `json:"comment,omitempty"`
}

// Entry is the trust file entry of a role's public key.
func Entry(role string, pub ed25519.PublicKey, comment string) TrustedKey {
	return TrustedKey{Role: role, PublicKey: base64.StdEncoding.EncodeToString(pub), Comment: comment}
}

// maxCachedRoots bounds the batch roots a Trust remembers as verified.
const maxCachedRoots = 8192

// Trust verifies events against the trusted keys. It is safe for
// concurrent use and remembers the batch roots it verified (bounded), so
// a batch's other events cost hashes, not Ed25519.
type Trust struct {
	keys map[string]Key

	// verified holds the batch roots already verified: the next event of
	// a batch costs its leaf and its path's hashes, not an Ed25519 check.
	mu       sync.RWMutex
	verified map[nodeKey]struct{}

	busy, events, roots atomic.Int64
}

// Stats reports the verifications so far.
func (t *Trust) Stats() Stats {
	return Stats{Busy: time.Duration(t.busy.Load()), Events: t.events.Load(), Ed25519: t.roots.Load()}
}

// nodeKey is the root of a signed tree: its height above the leaves (the
// tree's depth) and its hash, under the key that signed it.
type nodeKey struct {
	kid    string
	height int
	hash   [32]byte
}

// NewTrust trusts keys.
func NewTrust(keys ...Key) (*Trust, error) {
	t := &Trust{keys: make(map[string]Key, len(keys)), verified: make(map[nodeKey]struct{})}
	for _, k := range keys {
		if len(k.Public) != ed25519.PublicKeySize || k.Role == "" {
			return nil, fmt.Errorf("trust: key %q of role %q is not an Ed25519 public key with a role", k.ID, k.Role)
		}
		k.ID = KeyID(k.Public)
		if prev, dup := t.keys[k.ID]; dup && prev.Role != k.Role {
			return nil, fmt.Errorf("trust: key %s listed for roles %s and %s", k.ID, prev.Role, k.Role)
		}
		t.keys[k.ID] = k
	}
	return t, nil
}

// ParseTrust decodes a trust file.
func ParseTrust(b []byte) (*Trust, error) {
	var f TrustFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("trust file: %w", err)
	}
	if len(f.Keys) == 0 {
		return nil, fmt.Errorf("trust file: no keys")
	}
	keys := make([]Key, 0, len(f.Keys))
	for i, e := range f.Keys {
		k, err := e.Key()
		if err != nil {
			return nil, fmt.Errorf("trust file: key %d: %w", i, err)
		}
		keys = append(keys, k)
	}
	return NewTrust(keys...)
}

// Key decodes the entry.
func (e TrustedKey) Key() (Key, error) {
	pub, err := base64.StdEncoding.DecodeString(e.PublicKey)
	if err != nil || len(pub) != ed25519.PublicKeySize {
		return Key{}, fmt.Errorf("role %q: public_key is not a base64 Ed25519 key", e.Role)
	}
	return Key{ID: KeyID(pub), Role: e.Role, Public: pub}, nil
}

// LoadTrust reads a trust file.
func LoadTrust(path string) (*Trust, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read trust file: %w", err)
	}
	t, err := ParseTrust(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// Keys lists the trusted keys.
func (t *Trust) Keys() []Key {
	out := make([]Key, 0, len(t.keys))
	for _, k := range t.keys {
		out = append(out, k)
	}
	slices.SortFunc(out, func(a, b Key) int {
		if a.Role != b.Role {
			return cmp.Compare(a.Role, b.Role)
		}
		return cmp.Compare(a.ID, b.ID)
	})
	return out
}

// Verify checks that header is a valid signature of the event (subject,
// msgID, body) by a key of one of roles. It returns the signer's key.
func (t *Trust) Verify(subject, msgID string, body []byte, header string, roles ...string) (k Key, err error) {
	// Reading the thread's CPU clock costs a system call, as much as a
	// cached verification's hashing: one call in sampleEvery is timed
	// whole and counted for sampleEvery, and every Ed25519 verification
	// (the expensive, uncached part) is timed on its own.
	var ed atomic.Int64
	defer func() { t.busy.Add(ed.Load()) }()
	if t.events.Add(1)%sampleEvery != 0 {
		return t.verify(subject, msgID, body, header, roles, &ed)
	}
	var whole atomic.Int64
	measure(&whole, func() { k, err = t.verify(subject, msgID, body, header, roles, &ed) })
	t.busy.Add(max(whole.Load()-ed.Load(), 0) * sampleEvery)
	return k, err
}

// sampleEvery is one verification timed in so many (see Verify).
const sampleEvery = 16

func (t *Trust) verify(subject, msgID string, body []byte, header string, roles []string, ed *atomic.Int64) (Key, error) {
	if header == "" || msgID == "" {
		return Key{}, ErrUnsigned
	}
	var s signature
	if err := parse(header, &s); err != nil {
		return Key{}, err
	}
	k, ok := t.keys[s.kid]
	if !ok {
		return Key{}, fmt.Errorf("%w: key %s is not in the trust file", ErrUntrusted, s.kid)
	}
	if !slices.Contains(roles, k.Role) {
		return k, fmt.Errorf("%w: key %s is %s's, this event is signed by %s", ErrUntrusted, k.ID, k.Role, strings.Join(roles, " or "))
	}
	// Climb from the event's leaf to the root; a root already verified
	// makes the event authentic, otherwise its signature is checked, once
	// per batch. Only roots are remembered: climbing a batch's few levels
	// costs less than keeping and looking up every inner node.
	h, at := Leaf(subject, msgID, body), s.index
	for height := 0; height < s.depth; height++ {
		if at&1 == 0 {
			h = node(h, s.sibling(height))
		} else {
			h = node(s.sibling(height), h)
		}
		at >>= 1
	}
	root := nodeKey{k.ID, s.depth, h} // k.ID: not a slice of the caller's header
	t.mu.RLock()
	_, known := t.verified[root]
	t.mu.RUnlock()
	if known {
		return k, nil
	}
	t.roots.Add(1)
	var valid bool
	measure(ed, func() { valid = ed25519.Verify(k.Public, rootMessage(s.depth, h), s.parsedSig()) })
	if !valid {
		return k, fmt.Errorf("%w: key %s", ErrInvalid, k.ID)
	}
	if s.depth > 0 { // an event signed alone shares its root with no other
		t.mu.Lock()
		if len(t.verified) >= maxCachedRoots {
			clear(t.verified) // bounded; a cleared batch is verified again once
		}
		t.verified[root] = struct{}{}
		t.mu.Unlock()
	}
	return k, nil
}

// VerifyMsg verifies a JetStream message as stored: its subject, its
// Nats-Msg-Id and its body.
func (t *Trust) VerifyMsg(subject string, h nats.Header, body []byte, roles ...string) (Key, error) {
	return t.Verify(subject, h.Get(nats.MsgIdHdr), body, h.Get(Header), roles...)
}

// WriteTrust writes a trust file of entries (mode 0644: it holds public
// keys only).
func WriteTrust(path string, entries ...TrustedKey) error {
	b, err := json.MarshalIndent(TrustFile{Keys: entries}, "", "  ")
	if err != nil {
		return fmt.Errorf("encode trust file: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write trust file: %w", err)
	}
	return nil
}
