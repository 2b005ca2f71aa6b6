package chain

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
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
	c := Checkpoint{Head: h, At: at.UTC(), KeyID: KeyID(key.Public().(ed25519.PublicKey))}
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
		return fmt.Errorf("%w: stream %s seq %d (key %s, verifying with %s)", ErrBadSignature, c.Stream, c.Seq, c.KeyID, KeyID(pub))
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

// KeyID is the short name of a public key.
func KeyID(pub ed25519.PublicKey) string {
	sum := sha256.Sum256(pub)
	return hex.EncodeToString(sum[:8])
}

// LoadOrCreateKey reads the PKCS#8 PEM Ed25519 private key at path. When
// the file does not exist and create is true it generates one, writes it
// with mode 0600 and its public key next to it as path+".pub" (what
// `aigov audit verify` needs); that is for development, production
// provisions the key.
func LoadOrCreateKey(path string, create bool) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && create {
		return createKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("read signing key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("signing key %s: not a PEM PRIVATE KEY", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("signing key %s: %w", path, err)
	}
	key, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("signing key %s: not an Ed25519 key", path)
	}
	return key, nil
}

func createKey(path string) (ed25519.PrivateKey, error) {
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode signing key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create signing key: %w", err)
	}
	// O_EXCL: two replicas starting together must not overwrite each
	// other's key; the loser reads the winner's.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, os.ErrExist) {
		return LoadOrCreateKey(path, false)
	}
	if err != nil {
		return nil, fmt.Errorf("create signing key: %w", err)
	}
	if err := pem.Encode(f, &pem.Block{Type: "PRIVATE KEY", Bytes: der}); err != nil {
		f.Close()
		return nil, fmt.Errorf("write signing key: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write signing key: %w", err)
	}
	if err := WritePublicKey(path+".pub", pub); err != nil {
		return nil, err
	}
	return key, nil
}

// WritePublicKey writes pub as a PKIX PEM PUBLIC KEY.
func WritePublicKey(path string, pub ed25519.PublicKey) error {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return fmt.Errorf("encode public key: %w", err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o644); err != nil {
		return fmt.Errorf("write public key: %w", err)
	}
	return nil
}

// LoadPublicKey reads a PEM PUBLIC KEY, or derives it from a PEM PRIVATE
// KEY file.
func LoadPublicKey(path string) (ed25519.PublicKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read public key: %w", err)
	}
	block, _ := pem.Decode(b)
	if block == nil {
		return nil, fmt.Errorf("public key %s: not PEM", path)
	}
	if block.Type == "PRIVATE KEY" {
		key, err := LoadOrCreateKey(path, false)
		if err != nil {
			return nil, err
		}
		return key.Public().(ed25519.PublicKey), nil
	}
	k, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("public key %s: %w", path, err)
	}
	pub, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("public key %s: not an Ed25519 key", path)
	}
	return pub, nil
}
