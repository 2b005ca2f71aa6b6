package privacy_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"strings"
	"testing"

	"github.com/aigov/aigov/services/servicekit/personal"
)

// TestWrapKeyOnlyForTheExporter: a subject key wrapped to an exporter's
// ephemeral X25519 key opens with that key for that key id and request
// only; another private key (someone else reading the inbox), another
// request id (a replayed wrap), another key id, or a flipped byte are
// refused, and the wrap does not contain the key.
func TestWrapKeyOnlyForTheExporter(t *testing.T) {
	key := bytes.Repeat([]byte{0x5a}, personal.KeySize)
	exporter, _ := ecdh.X25519().GenerateKey(rand.Reader)
	other, _ := ecdh.X25519().GenerateKey(rand.Reader)
	pub, err := personal.ParseExportPublicKey(personal.ExportPublicKey(exporter))
	if err != nil {
		t.Fatal(err)
	}
	const id, req = "k1", "req-1"
	w, err := personal.WrapKey(pub, key, id, req)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(w, personal.WrapPrefix) || strings.Contains(w, string(key)) {
		t.Fatalf("wrap %q", w)
	}
	got, err := personal.UnwrapKey(exporter, w, id, req)
	if err != nil || !bytes.Equal(got, key) {
		t.Fatalf("unwrap: %x %v", got, err)
	}
	flipped := []byte(w)
	flipped[len(flipped)-3] ^= 1
	for name, try := range map[string]func() ([]byte, error){
		"another private key": func() ([]byte, error) { return personal.UnwrapKey(other, w, id, req) },
		"another request":     func() ([]byte, error) { return personal.UnwrapKey(exporter, w, id, "req-2") },
		"another key id":      func() ([]byte, error) { return personal.UnwrapKey(exporter, w, "k2", req) },
		"a flipped byte":      func() ([]byte, error) { return personal.UnwrapKey(exporter, string(flipped), id, req) },
	} {
		if k, err := try(); err == nil {
			t.Errorf("%s: unwrapped %x", name, k)
		}
	}
	for _, bad := range []string{"", "AAAA", "!!"} {
		if _, err := personal.ParseExportPublicKey(bad); err == nil {
			t.Errorf("public key %q accepted", bad)
		}
	}
}

// A low-order point (here all zeros) is a valid X25519 encoding no key can
// be agreed with: it is refused when the request is judged (policy then
// denies malformed_request, recorded), not later when the key is wrapped.
func TestExportPublicKeyRefusesLowOrderPoints(t *testing.T) {
	zero := base64.StdEncoding.EncodeToString(make([]byte, 32))
	if _, err := personal.ParseExportPublicKey(zero); err == nil {
		t.Fatal("an all-zero export public key was accepted")
	}
	good, _ := ecdh.X25519().GenerateKey(rand.Reader)
	if _, err := personal.ParseExportPublicKey(personal.ExportPublicKey(good)); err != nil {
		t.Fatalf("a real key was refused: %v", err)
	}
}
