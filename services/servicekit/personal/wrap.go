package personal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// WrapPrefix starts a subject key wrapped to an exporter's ephemeral key:
// "xwrap:v1:<base64 ephemeral public key‖nonce‖ciphertext‖tag>".
const WrapPrefix = "xwrap:v1:"

// wrapInfo is the HKDF info and the AES-GCM additional data of a wrap:
// it binds the wrapped key to its key id, the request that asked for it
// and both public keys, so a wrap cannot be replayed into another export.
func wrapInfo(keyID, requestID string, recipient, ephemeral []byte) []byte {
	b := []byte("aigov-export-wrap-v1\x00" + keyID + "\x00" + requestID + "\x00")
	b = append(b, recipient...)
	return append(b, ephemeral...)
}

// ParseExportPublicKey decodes context.export_public_key: base64 of a
// 32-byte X25519 public key.
func ParseExportPublicKey(s string) (*ecdh.PublicKey, error) {
	raw, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("export public key: %w", err)
	}
	pub, err := ecdh.X25519().NewPublicKey(raw)
	if err != nil {
		return nil, fmt.Errorf("export public key: %w", err)
	}
	// A low-order point parses, but no key can be agreed with it: refuse
	// it here, where the request is judged, not when the key is wrapped.
	probe, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("export public key: %w", err)
	}
	if _, err := probe.ECDH(pub); err != nil {
		return nil, fmt.Errorf("export public key: %w", err)
	}
	return pub, nil
}

// ExportPublicKey is what an exporter sends as context.export_public_key.
func ExportPublicKey(priv *ecdh.PrivateKey) string {
	return base64.StdEncoding.EncodeToString(priv.PublicKey().Bytes())
}

// WrapKey encrypts a subject key to recipient, an exporter's ephemeral
// X25519 public key: ECDH with a fresh ephemeral key of the wrapper's,
// HKDF-SHA256 to an AES-256-GCM key, the key sealed under it. Only the
// holder of recipient's private key can unwrap it; anyone else who sees
// the result (on a shared inbox) learns nothing.
func WrapKey(recipient *ecdh.PublicKey, key []byte, keyID, requestID string) (string, error) {
	if len(key) != KeySize {
		return "", fmt.Errorf("wrap subject key: %d bytes, want %d", len(key), KeySize)
	}
	eph, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("wrap subject key: %w", err)
	}
	shared, err := eph.ECDH(recipient)
	if err != nil {
		return "", fmt.Errorf("wrap subject key: %w", err)
	}
	info := wrapInfo(keyID, requestID, recipient.Bytes(), eph.PublicKey().Bytes())
	gcm, err := wrapGCM(shared, info)
	if err != nil {
		return "", err
	}
	out := append([]byte{}, eph.PublicKey().Bytes()...)
	nonce := make([]byte, gcm.NonceSize())
	if _, err := rand.Read(nonce); err != nil {
		return "", fmt.Errorf("wrap subject key: nonce: %w", err)
	}
	out = append(out, nonce...)
	out = gcm.Seal(out, nonce, key, info)
	return WrapPrefix + base64.RawStdEncoding.EncodeToString(out), nil
}

// UnwrapKey opens what WrapKey wrapped to priv's public key for keyID and
// requestID.
func UnwrapKey(priv *ecdh.PrivateKey, wrapped, keyID, requestID string) ([]byte, error) {
	body, ok := strings.CutPrefix(wrapped, WrapPrefix)
	if !ok {
		return nil, errors.New("unwrap subject key: not a wrapped key")
	}
	raw, err := base64.RawStdEncoding.DecodeString(body)
	if err != nil {
		return nil, fmt.Errorf("unwrap subject key: %w", err)
	}
	const pubLen, nonceLen = 32, 12
	if len(raw) < pubLen+nonceLen+KeySize+16 {
		return nil, errors.New("unwrap subject key: too short")
	}
	eph, err := ecdh.X25519().NewPublicKey(raw[:pubLen])
	if err != nil {
		return nil, fmt.Errorf("unwrap subject key: %w", err)
	}
	shared, err := priv.ECDH(eph)
	if err != nil {
		return nil, fmt.Errorf("unwrap subject key: %w", err)
	}
	info := wrapInfo(keyID, requestID, priv.PublicKey().Bytes(), eph.Bytes())
	gcm, err := wrapGCM(shared, info)
	if err != nil {
		return nil, err
	}
	key, err := gcm.Open(nil, raw[pubLen:pubLen+nonceLen], raw[pubLen+nonceLen:], info)
	if err != nil {
		return nil, fmt.Errorf("unwrap subject key: %w", err)
	}
	if len(key) != KeySize {
		return nil, fmt.Errorf("unwrap subject key: %d bytes, want %d", len(key), KeySize)
	}
	return key, nil
}

func wrapGCM(shared, info []byte) (cipher.AEAD, error) {
	k, err := hkdf.Key(sha256.New, shared, nil, string(info), 32)
	if err != nil {
		return nil, fmt.Errorf("wrap key derivation: %w", err)
	}
	block, err := aes.NewCipher(k)
	if err != nil {
		return nil, fmt.Errorf("wrap key: %w", err)
	}
	return cipher.NewGCM(block)
}
