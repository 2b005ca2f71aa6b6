package chain_test

import (
	"crypto/ed25519"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas/signing"
	"github.com/aigov/aigov/services/audit/chain"
)

func TestExtendIsDeterministicAndContentBound(t *testing.T) {
	t.Parallel()
	row := func() chain.Row {
		return chain.Row{Stream: "S", Seq: 1, EventID: "e", Type: "t", Source: "s", Subject: "x", TimeUS: 7, Data: "{}"}
	}
	a, b := row(), row()
	ha := chain.NewHead("S", 0).Extend(&a)
	hb := chain.NewHead("S", 0).Extend(&b)
	if ha != hb || a != b {
		t.Fatalf("same content, different links: %+v %+v", ha, hb)
	}
	c := row()
	c.Data = "{ }"
	if hc := chain.NewHead("S", 0).Extend(&c); hc.Hash == ha.Hash {
		t.Fatal("a changed row links the same")
	}
	if chain.Genesis("S") == chain.Genesis("T") {
		t.Fatal("two streams share a genesis")
	}
}

func TestCheckpointSignature(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "k.pem")
	key, err := signing.LoadOrCreateKey(path, true)
	if err != nil {
		t.Fatal(err)
	}
	again, err := signing.LoadOrCreateKey(path, false)
	if err != nil || !again.Equal(key) {
		t.Fatalf("reload: %v", err)
	}
	pub, err := signing.LoadPublicKey(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	c := chain.Sign(chain.Head{Stream: "S", Seq: 5, Hash: chain.Genesis("S")}, time.Now(), key)
	b, _ := c.Marshal()
	parsed, err := chain.ParseCheckpoint(b)
	if err != nil || parsed.Verify(pub) != nil {
		t.Fatalf("round trip: %v", err)
	}
	parsed.Seq = 6
	if err := parsed.Verify(pub); !errors.Is(err, chain.ErrBadSignature) {
		t.Fatalf("edited checkpoint verified: %v", err)
	}
	other, _, _ := ed25519.GenerateKey(nil)
	if err := c.Verify(other); !errors.Is(err, chain.ErrBadSignature) {
		t.Fatalf("wrong key verified: %v", err)
	}
	if _, err := signing.LoadOrCreateKey(filepath.Join(t.TempDir(), "missing"), false); err == nil {
		t.Fatal("a missing key was created without create")
	}
}
