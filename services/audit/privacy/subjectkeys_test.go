package privacy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/services/audit/privacy"
	"github.com/aigov/aigov/services/devenv/natsdev"
)

// TestSubjectKeysCryptoShredding, on an embedded NATS server: a subject's
// values decrypt with its key; after Erase the key is gone from the bucket
// (no revision left), the values no longer decrypt, and another subject's
// still do.
func TestSubjectKeysCryptoShredding(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := natsdev.StartT(t, natsdev.Options{})
	_, js := ns.ConnectT(t, natsdev.AdminUser)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "test_subject_keys", History: 1})
	if err != nil {
		t.Fatal(err)
	}
	keys := privacy.NewSubjectKeys(kv)
	const iss = "https://idp.example"
	ka, ida, err := keys.GetOrCreate(ctx, iss, "alice")
	if err != nil {
		t.Fatal(err)
	}
	again, _, err := keys.GetOrCreate(ctx, iss, "alice")
	if err != nil || string(again) != string(ka) {
		t.Fatalf("second GetOrCreate: %v, same key %v", err, string(again) == string(ka))
	}
	kb, idb, err := keys.GetOrCreate(ctx, iss, "bob")
	if err != nil || ida == idb {
		t.Fatalf("bob's key: %v, same id %v", err, ida == idb)
	}
	ca, err := privacy.Encrypt(ka, ida, "email", "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := privacy.Encrypt(kb, idb, "email", "bob@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ca, "alice") || !strings.HasPrefix(ca, privacy.CipherPrefix) {
		t.Fatalf("ciphertext %q", ca)
	}
	if id, ok := privacy.CipherKeyID(ca); !ok || id != ida {
		t.Fatalf("CipherKeyID = %q, %v", id, ok)
	}
	if p, err := privacy.Decrypt(ka, "email", ca); err != nil || p != "alice@example.com" {
		t.Fatalf("decrypt: %q, %v", p, err)
	}
	// Bound to its field and key.
	if _, err := privacy.Decrypt(ka, "name", ca); err == nil {
		t.Fatal("a value decrypted as another field")
	}
	if _, err := privacy.Decrypt(kb, "email", ca); err == nil {
		t.Fatal("alice's value decrypted with bob's key")
	}

	if _, err := keys.Erase(ctx, iss, "alice"); err != nil {
		t.Fatal(err)
	}
	if _, err := keys.Get(ctx, ida); !errors.Is(err, privacy.ErrErased) {
		t.Fatalf("alice's key after erase: %v, want ErrErased", err)
	}
	// No revision of the key is left in the bucket's stream.
	st, err := js.Stream(ctx, "KV_test_subject_keys")
	if err != nil {
		t.Fatal(err)
	}
	if m, err := st.GetLastMsgForSubject(ctx, "$KV.test_subject_keys."+ida); err != nil || len(m.Data) != 0 {
		t.Fatalf("after erase the stream holds %d bytes for the key (%v)", len(m.Data), err)
	}
	if kb2, err := keys.Get(ctx, idb); err != nil || string(kb2) != string(kb) {
		t.Fatalf("bob's key after alice's erasure: %v", err)
	}
	if p, err := privacy.Decrypt(kb, "email", cb); err != nil || p != "bob@example.com" {
		t.Fatalf("bob's value after alice's erasure: %q, %v", p, err)
	}
}
