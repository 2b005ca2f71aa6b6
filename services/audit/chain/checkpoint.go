package chain

import (
	"crypto/ed25519"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/aigov/aigov/schemas/signing"
)

// Checkpoint is a signed chain head: the writer vouches that the chain of
// Stream reached Hash at Seq. Checkpoints are stored outside ClickHouse.
type Checkpoint struct {
	Head
	// At is when the checkpoint was signed.
	At time.Time `json:"at"`
	// KeyID names the signing key: the first 8 bytes of SHA-256 of its
	// public key, hex.
	KeyID string `json:"key_id"`
	// Signature is Ed25519 over Payload, base64.
	Signature string `json:"signature"`
}

// Payload is the exact byte string a checkpoint's signature covers.
func (c Checkpoint) Payload() []byte {
	return []byte("aigov-checkpoint-v1\n" + c.Stream + "\n" + strconv.FormatUint(c.Start, 10) + "\n" +
		strconv.FormatUint(c.Seq, 10) + "\n" + c.Hash + "\n" + c.At.UTC().Format(time.RFC3339Nano) + "\n")
}

// Sign returns a checkpoint of h signed with key at time at.
func Sign(h Head, at time.Time, key ed25519.PrivateKey) Checkpoint {
	c := Checkpoint{Head: h, At: at.UTC(), KeyID: signing.KeyID(key.Public().(ed25519.PublicKey))}
	c.Signature = base64.StdEncoding.EncodeToString(ed25519.Sign(key, c.Payload()))
	return c
}

// ErrBadSignature is returned for a checkpoint whose signature does not
// verify with the given key.
var ErrBadSignature = errors.New("checkpoint signature does not verify")

// Verify checks the signature with pub.
func (c Checkpoint) Verify(pub ed25519.PublicKey) error {
	sig, err := base64.StdEncoding.DecodeString(c.Signature)
	if err != nil || !ed25519.Verify(pub, c.Payload(), sig) {
		return fmt.Errorf("%w: stream %s seq %d (key %s, verifying with %s)", ErrBadSignature, c.Stream, c.Seq, c.KeyID, signing.KeyID(pub))
	}
	return nil
}

// Marshal encodes a checkpoint as stored in the checkpoint stream.
func (c Checkpoint) Marshal() ([]byte, error) { return json.Marshal(c) }

// ParseCheckpoint decodes a stored checkpoint.
func ParseCheckpoint(b []byte) (Checkpoint, error) {
	var c Checkpoint
	if err := json.Unmarshal(b, &c); err != nil {
		return Checkpoint{}, fmt.Errorf("decode checkpoint: %w", err)
	}
	if c.Stream == "" || c.Seq < c.Start {
		return Checkpoint{}, fmt.Errorf("decode checkpoint: stream %q seq %d start %d is not a chain head", c.Stream, c.Seq, c.Start)
	}
	return c, nil
}
