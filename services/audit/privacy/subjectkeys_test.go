package privacy_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/natsdev"
	"github.com/aigov/aigov/services/servicekit/personal"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// TestSubjectKeysCryptoShredding, on an embedded NATS server: a subject's
// values decrypt with its key; after Erase the key is gone from the bucket
// (no revision left) and from the server's store on disk (its bytes
// overwritten, not only unindexed: without the secure delete they are
// still in the block file), the values no longer decrypt, and another
// subject's still do.
func TestSubjectKeysCryptoShredding(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	dir := t.TempDir()
	ns := natsdev.StartT(t, natsdev.Options{Dir: dir})
	_, js := ns.ConnectT(t, natsdev.AdminUser)
	topo := topology.New("aigov")
	kv, err := js.KeyValue(ctx, topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	stream, err := js.Stream(ctx, "KV_"+topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	keys := personal.NewSubjectKeys(kv).WithStream(stream)
	onDisk := func(key []byte) bool {
		t.Helper()
		found := false
		err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			found = found || bytes.Contains(b, key)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		return found
	}
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
	ca, err := personal.Encrypt(ka, ida, "email", "alice@example.com")
	if err != nil {
		t.Fatal(err)
	}
	cb, err := personal.Encrypt(kb, idb, "email", "bob@example.com")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(ca, "alice") || !strings.HasPrefix(ca, personal.CipherPrefix) {
		t.Fatalf("ciphertext %q", ca)
	}
	if id, ok := personal.CipherKeyID(ca); !ok || id != ida {
		t.Fatalf("CipherKeyID = %q, %v", id, ok)
	}
	if p, err := personal.Decrypt(ka, "email", ca); err != nil || p != "alice@example.com" {
		t.Fatalf("decrypt: %q, %v", p, err)
	}
	// Bound to its field and key.
	if _, err := personal.Decrypt(ka, "name", ca); err == nil {
		t.Fatal("a value decrypted as another field")
	}
	if _, err := personal.Decrypt(kb, "email", ca); err == nil {
		t.Fatal("alice's value decrypted with bob's key")
	}

	if !onDisk(ka) || !onDisk(kb) {
		t.Fatal("the keys are not in the store before the erasure: the search below would prove nothing")
	}
	if _, err := keys.Erase(ctx, iss, "alice"); err != nil {
		t.Fatal(err)
	}
	if onDisk(ka) {
		t.Fatal("alice's key is still in the NATS store on disk after the erasure")
	}
	if !onDisk(kb) {
		t.Fatal("bob's key left the store with alice's")
	}
	if _, err := keys.Get(ctx, ida); !errors.Is(err, personal.ErrErased) {
		t.Fatalf("alice's key after erase: %v, want ErrErased", err)
	}
	// No revision of the key is left in the bucket's stream.
	if m, err := stream.GetLastMsgForSubject(ctx, "$KV."+topo.BucketSubjectKeys()+"."+ida); err != nil || len(m.Data) != 0 {
		t.Fatalf("after erase the stream holds %d bytes for the key (%v)", len(m.Data), err)
	}
	if kb2, err := keys.Get(ctx, idb); err != nil || string(kb2) != string(kb) {
		t.Fatalf("bob's key after alice's erasure: %v", err)
	}
	if p, err := personal.Decrypt(kb, "email", cb); err != nil || p != "bob@example.com" {
		t.Fatalf("bob's value after alice's erasure: %q, %v", p, err)
	}
}

// TestSealOpenAndCacheErasure, on an embedded NATS server with the real
// topology's bucket: authn's sealer seals the email, name and a personal
// context field (nothing readable left), policy's Open gives them back;
// a cached key is dropped as soon as it is erased, in another process's
// cache too, so Open then fails with ErrErased; another subject is
// unaffected; a value sealed for one subject does not open as another's.
func TestSealOpenAndCacheErasure(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := natsdev.StartT(t, natsdev.Options{})
	_, js := ns.ConnectT(t, natsdev.AdminUser)
	topo := topology.New("aigov")
	kv, err := js.KeyValue(ctx, topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	writer, reader := personal.NewCache(kv, 2), personal.NewCache(kv, 2)
	for _, c := range []*personal.Cache{writer, reader} {
		wctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); _ = c.Run(wctx, nil) }()
		t.Cleanup(func() { stop(); <-done })
	}
	waitFor(t, func() bool { return writer.Watching() && reader.Watching() })
	sealer := personal.NewSealer(writer, []string{"SSN"})
	const iss = "https://idp.example"
	alice := schemas.Principal{ID: schemas.PrincipalID(iss, "alice"), Issuer: iss, Subject: "alice", Email: "alice@example.com", Name: "Alice Liddell"}
	bob := schemas.Principal{ID: schemas.PrincipalID(iss, "bob"), Issuer: iss, Subject: "bob", Email: "bob@example.com"}
	in := map[string]any{"ssn": "078-05-1120", "environment": "production"}
	sa := alice
	ca, err := sealer.Seal(ctx, &sa, in)
	if err != nil {
		t.Fatal(err)
	}
	if in["ssn"] != "078-05-1120" {
		t.Fatal("Seal changed its input map")
	}
	for _, v := range []string{sa.Email, sa.Name, ca["ssn"].(string)} {
		if !strings.HasPrefix(v, personal.CipherPrefix) || strings.Contains(v, "alice") || strings.Contains(v, "078") {
			t.Fatalf("sealed value %q", v)
		}
	}
	if ca["environment"] != "production" {
		t.Fatalf("a field not configured personal was sealed: %v", ca["environment"])
	}
	sb := bob
	if _, err := sealer.Seal(ctx, &sb, nil); err != nil {
		t.Fatal(err)
	}

	oa := sa
	opened, err := personal.Open(ctx, reader, &oa, ca)
	if err != nil || oa.Email != alice.Email || oa.Name != alice.Name || opened["ssn"] != "078-05-1120" {
		t.Fatalf("Open: %v %q %q %v", err, oa.Email, oa.Name, opened["ssn"])
	}
	if reader.Len() != 1 {
		t.Fatalf("reader caches %d keys, want 1", reader.Len())
	}
	// Alice's sealed email in bob's event: refused, not opened.
	forged := sb
	forged.Email = sa.Email
	if _, err := personal.Open(ctx, reader, &forged, nil); !errors.Is(err, personal.ErrWrongSubject) {
		t.Fatalf("another subject's value: %v, want ErrWrongSubject", err)
	}

	if _, err := writer.Store().Erase(ctx, iss, "alice"); err != nil {
		t.Fatal(err)
	}
	// Both caches drop it on the watch, without a lookup.
	waitFor(t, func() bool { return reader.Len() == 1 && writer.Len() == 1 }) // bob's only
	oa = sa
	if _, err := personal.Open(ctx, reader, &oa, ca); !errors.Is(err, personal.ErrErased) {
		t.Fatalf("Open after erasure: %v, want ErrErased", err)
	}
	ob := sb
	if _, err := personal.Open(ctx, reader, &ob, nil); err != nil || ob.Email != bob.Email {
		t.Fatalf("bob after alice's erasure: %v %q", err, ob.Email)
	}
	// Alice comes back: a new key, under which the old values still do
	// not open.
	again := alice
	if _, err := sealer.Seal(ctx, &again, nil); err != nil {
		t.Fatal(err)
	}
	oa = sa
	if _, err := personal.Open(ctx, reader, &oa, ca); !errors.Is(err, personal.ErrUnreadable) {
		t.Fatalf("old value under alice's new key: %v, want ErrUnreadable", err)
	}
	// Bounded: a third subject in a cache of two evicts one.
	third := schemas.Principal{Issuer: iss, Subject: "carol", Email: "carol@example.com"}
	if _, err := sealer.Seal(ctx, &third, nil); err != nil {
		t.Fatal(err)
	}
	if n := writer.Len(); n > 2 {
		t.Fatalf("cache of 2 holds %d keys", n)
	}
	if k, ok := personal.ReservedField(map[string]any{"x": 1, "note": personal.CipherPrefix + "abc"}); !ok || k != "note" {
		t.Fatalf("ReservedField = %q, %v", k, ok)
	}
	if got := sealer.Redact(map[string]any{"Ssn": "1", "a": "b"}); got["Ssn"] != personal.Redacted || got["a"] != "b" {
		t.Fatalf("Redact = %v", got)
	}
}

func waitFor(t *testing.T, ok func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if ok() {
			return
		}
	}
	t.Fatal("condition not met within 10s")
}

// TestKeyCreationRace: many writers (two processes' caches, several
// workers each) seeing a new subject at once agree on one key: KV Create
// lets one win and the others read its key.
func TestKeyCreationRace(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ns := natsdev.StartT(t, natsdev.Options{})
	var caches []*personal.Cache
	for range 2 {
		nc, err := ns.Connect(natsdev.AdminUser)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		kv, err := js.KeyValue(ctx, topology.New("aigov").BucketSubjectKeys())
		if err != nil {
			t.Fatal(err)
		}
		caches = append(caches, personal.NewCache(kv, 0))
	}
	const workers = 16
	sealed := make([]string, workers)
	errs := make(chan error, workers)
	start := make(chan struct{})
	for i := range workers {
		go func() {
			<-start
			k, err := caches[i%2].KeyFor(ctx, "https://idp.example", "newcomer")
			if err == nil {
				sealed[i], err = k.Seal("principal.email", "newcomer@example.com")
			}
			errs <- err
		}()
	}
	close(start)
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	key, err := caches[0].Store().Get(ctx, personal.SubjectKeyID("https://idp.example", "newcomer"))
	if err != nil {
		t.Fatal(err)
	}
	for i, v := range sealed {
		if p, err := personal.Decrypt(key, "principal.email", v); err != nil || p != "newcomer@example.com" {
			t.Fatalf("worker %d sealed under another key: %v", i, err)
		}
	}
}
