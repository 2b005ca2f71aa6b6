// Package personal encrypts a data subject's personal fields under a key
// of their own (AES-256-GCM), held in a JetStream KV bucket: destroying
// the key erases the person from every stored copy at once
// (crypto-shredding), while the stored ciphertext, and the audit's hash
// chain over it, stay intact. authn seals events before they reach any
// retained stream; policy opens them, and wraps a subject's key to an
// allowed export's one-time key (WrapKey).
package personal

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// CipherPrefix starts every value encrypted under a subject key:
// "enc:v1:<key id>:<base64 nonce‖ciphertext‖tag>". The key id names the
// subject key (SubjectKeyID), so a reader knows which key to fetch without
// learning who the subject is.
const CipherPrefix = "enc:v1:"

// ErrErased is returned when a subject's key is gone: the subject was
// erased (crypto-shredded) and the values encrypted under it are lost.
var ErrErased = errors.New("subject key erased")

// SubjectKeyID is the KV key of data subject issuer+subject's encryption
// key: the hex SHA-256 of both, so the bucket's key names reveal no
// identity and are valid KV keys whatever the issuer URL holds.
func SubjectKeyID(issuer, subject string) string {
	sum := sha256.Sum256([]byte("aigov-subject-key-v1\x00" + issuer + "\x00" + subject))
	return hex.EncodeToString(sum[:])
}

// aad binds a ciphertext to its subject and field, so a value cannot be
// moved to another subject's row or another column unnoticed.
func aad(keyID, field string) []byte { return []byte("aigov-enc-v1\x00" + keyID + "\x00" + field) }

// Encrypt seals plaintext for field under key (32 bytes, AES-256-GCM).
func Encrypt(key []byte, keyID, field, plaintext string) (string, error) {
	k, err := NewKey(keyID, key)
	if err != nil {
		return "", err
	}
	return k.Seal(field, plaintext)
}

// Key is a subject key ready to seal and open: its AES-GCM state is built
// once, not per value (what a Cache holds).
type Key struct {
	id   string
	aead cipher.AEAD
}

// NewKey prepares key (KeySize bytes) with id keyID.
func NewKey(keyID string, key []byte) (*Key, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return nil, err
	}
	return &Key{id: keyID, aead: gcm}, nil
}

// ID is the key's id (SubjectKeyID).
func (k *Key) ID() string { return k.id }

// Seal encrypts plaintext for field.
func (k *Key) Seal(field, plaintext string) (string, error) {
	gcm := k.aead
	nonce := make([]byte, gcm.NonceSize(), gcm.NonceSize()+len(plaintext)+gcm.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("encrypt: nonce: %w", err)
	}
	sealed := gcm.Seal(nonce, nonce, []byte(plaintext), aad(k.id, field))
	return CipherPrefix + k.id + ":" + base64.RawStdEncoding.EncodeToString(sealed), nil
}

// Open decrypts a value Seal sealed for field.
func (k *Key) Open(field, v string) (string, error) { return open(k.aead, field, v) }

// CipherKeyID returns the key id of an encrypted value, or false when v is
// not one.
func CipherKeyID(v string) (string, bool) {
	rest, ok := strings.CutPrefix(v, CipherPrefix)
	if !ok {
		return "", false
	}
	id, _, ok := strings.Cut(rest, ":")
	return id, ok
}

// Decrypt opens a value Encrypt sealed for field under key.
func Decrypt(key []byte, field, v string) (string, error) {
	gcm, err := newGCM(key)
	if err != nil {
		return "", err
	}
	return open(gcm, field, v)
}

func open(gcm cipher.AEAD, field, v string) (string, error) {
	rest, ok := strings.CutPrefix(v, CipherPrefix)
	if !ok {
		return "", errors.New("decrypt: not an encrypted value")
	}
	keyID, body, ok := strings.Cut(rest, ":")
	if !ok {
		return "", errors.New("decrypt: malformed encrypted value")
	}
	sealed, err := base64.RawStdEncoding.DecodeString(body)
	if err != nil {
		return "", fmt.Errorf("decrypt: %w", err)
	}
	if len(sealed) < gcm.NonceSize()+gcm.Overhead() {
		return "", errors.New("decrypt: value too short")
	}
	plain, err := gcm.Open(nil, sealed[:gcm.NonceSize()], sealed[gcm.NonceSize():], aad(keyID, field))
	if err != nil {
		return "", fmt.Errorf("decrypt: %w", err)
	}
	return string(plain), nil
}

func newGCM(key []byte) (cipher.AEAD, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("subject key: %d bytes, want %d", len(key), KeySize)
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("subject key: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("subject key: %w", err)
	}
	return gcm, nil
}

// KeySize is the length of a subject key in bytes (AES-256).
const KeySize = 32

// SubjectKeys is the store of per-subject keys: a JetStream KV bucket, one
// key per data subject (SubjectKeyID), readable only by authn (which
// creates keys) and policy (which opens, erases and wraps one for an
// allowed export; topology.Topology.Grant). Erasing a subject overwrites and purges its key, after which
// every value encrypted under it is unreadable while the rows, and the hash
// chain over their ciphertext, stay intact.
type SubjectKeys struct {
	kv jetstream.KeyValue
	// stream is the bucket's stream, for the secure delete of an
	// erasure; nil until WithStream.
	stream jetstream.Stream
}

// NewSubjectKeys uses bucket kv.
func NewSubjectKeys(kv jetstream.KeyValue) *SubjectKeys { return &SubjectKeys{kv: kv} }

// WithStream lets EraseID overwrite the key on disk: st is the bucket's
// stream (topology.Topology.SubjectKeysStream, which allows it).
func (s *SubjectKeys) WithStream(st jetstream.Stream) *SubjectKeys {
	s.stream = st
	return s
}

// GetOrCreate returns the key of issuer+subject, creating it on first use.
// Two writers creating one subject's key at once agree: Create fails for
// the loser, which reads the winner's.
func (s *SubjectKeys) GetOrCreate(ctx context.Context, issuer, subject string) (key []byte, keyID string, err error) {
	keyID = SubjectKeyID(issuer, subject)
	if key, err = s.get(ctx, keyID); err == nil {
		return key, keyID, nil
	}
	if !errors.Is(err, ErrErased) {
		return nil, "", err
	}
	key = make([]byte, KeySize)
	if _, err := rand.Read(key); err != nil {
		return nil, "", fmt.Errorf("generate subject key: %w", err)
	}
	if _, err := s.kv.Create(ctx, keyID, key); err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) {
			key, err = s.get(ctx, keyID)
			return key, keyID, err
		}
		return nil, "", fmt.Errorf("store subject key %s: %w", keyID, err)
	}
	return key, keyID, nil
}

// Get returns the key with id keyID, or ErrErased when there is none.
func (s *SubjectKeys) Get(ctx context.Context, keyID string) ([]byte, error) {
	return s.get(ctx, keyID)
}

func (s *SubjectKeys) get(ctx context.Context, keyID string) ([]byte, error) {
	e, err := s.kv.Get(ctx, keyID)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, fmt.Errorf("subject key %s: %w", keyID, ErrErased)
	}
	if err != nil {
		return nil, fmt.Errorf("read subject key %s: %w", keyID, err)
	}
	if len(e.Value()) != KeySize {
		return nil, fmt.Errorf("subject key %s: %d bytes stored, want %d", keyID, len(e.Value()), KeySize)
	}
	return e.Value(), nil
}

// Erase destroys the key of issuer+subject (EraseID).
func (s *SubjectKeys) Erase(ctx context.Context, issuer, subject string) (keyID string, err error) {
	keyID = SubjectKeyID(issuer, subject)
	return keyID, s.EraseID(ctx, keyID)
}

// EraseID destroys the key with id keyID. With the bucket's stream
// (WithStream) the key's message is first deleted securely: the server
// overwrites its bytes in the store (and on every replica), which a purge
// alone does not do. Then a purge removes any other revision and leaves a
// marker without a value, which every watching cache sees. Erasing a
// subject with no key is not an error; an erasure that failed half way is
// completed by running it again.
func (s *SubjectKeys) EraseID(ctx context.Context, keyID string) error {
	if !ValidKeyID(keyID) {
		return fmt.Errorf("erase subject key: %q is not a subject key id (64 hex digits)", keyID)
	}
	if s.stream != nil {
		e, err := s.kv.Get(ctx, keyID)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return fmt.Errorf("erase subject key %s: %w", keyID, err)
		default:
			if err := s.stream.SecureDeleteMsg(ctx, e.Revision()); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return fmt.Errorf("erase subject key %s: overwrite revision %d: %w", keyID, e.Revision(), err)
			}
		}
	}
	if err := s.kv.Purge(ctx, keyID); err != nil {
		return fmt.Errorf("erase subject key %s: %w", keyID, err)
	}
	return nil
}

// ValidKeyID reports whether id has the shape of a SubjectKeyID.
func ValidKeyID(id string) bool {
	if len(id) != 2*sha256.Size {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil && strings.ToLower(id) == id
}
