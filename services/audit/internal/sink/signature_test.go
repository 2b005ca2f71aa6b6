package sink

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
)

// The audit checks every decision's and session event's signature against
// the trust file and stores the verdict with the signer's key id: a
// decision signed by policy is valid; one that is unsigned, signed by a
// role that does not decide (the reaper's key), signed by a key nobody
// trusts, or altered after signing is kept (nothing consumed is lost) but
// flagged, and counted. The verdicts are in the hash chain: editing one
// breaks `audit verify`.
func TestSignaturesAreCheckedAndStored(t *testing.T) {
	t.Parallel()
	h := startHarness(t, harnessOptions{batchSize: 16})
	_, outsiderKey, _ := ed25519.GenerateKey(rand.Reader)
	outsider, err := signing.NewSigner(outsiderKey)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		request string
		sign    func(subject, id string, raw []byte) (string, []byte)
		status  signing.Status
		keyID   string
	}{
		{"sig-valid", func(s, id string, raw []byte) (string, []byte) {
			return h.keys.Signer(schemas.RolePolicy).Sign(s, id, raw), raw
		}, signing.Valid, h.keys.Signer(schemas.RolePolicy).KeyID()},
		{"sig-authn", func(s, id string, raw []byte) (string, []byte) {
			return h.keys.Signer(schemas.RoleAuthn).Sign(s, id, raw), raw
		}, signing.Valid, h.keys.Signer(schemas.RoleAuthn).KeyID()},
		{"sig-unsigned", func(s, id string, raw []byte) (string, []byte) { return "", raw }, signing.Unsigned, ""},
		{"sig-reaper", func(s, id string, raw []byte) (string, []byte) {
			return h.keys.Signer(schemas.RoleReaper).Sign(s, id, raw), raw
		}, signing.Untrusted, h.keys.Signer(schemas.RoleReaper).KeyID()},
		{"sig-outsider", func(s, id string, raw []byte) (string, []byte) { return outsider.Sign(s, id, raw), raw }, signing.Untrusted, ""},
		// authn decides only denies: an allow under its key is untrusted.
		{"sig-authn-allow", func(s, id string, raw []byte) (string, []byte) {
			return h.keys.Signer(schemas.RoleAuthn).Sign(s, id, raw), raw
		}, signing.Untrusted, h.keys.Signer(schemas.RoleAuthn).KeyID()},
		{"sig-altered", func(s, id string, raw []byte) (string, []byte) {
			return h.keys.Signer(schemas.RolePolicy).Sign(s, id, raw), []byte(strings.Replace(string(raw), `"deny"`, `"allow"`, 1))
		}, signing.Invalid, h.keys.Signer(schemas.RolePolicy).KeyID()},
	}
	for _, c := range cases {
		d := fixtureDecision(c.request)
		d.Decision, d.Code = schemas.Deny, schemas.CodePolicyDenied
		if strings.HasSuffix(c.request, "-allow") {
			d.Decision, d.Code = schemas.Allow, ""
		}
		id := schemas.DerivedID(d.RequestID, "decision")
		subject := h.subjects.Decision(d.Action)
		sig, raw := c.sign(subject, id, encode(t, id, schemas.TypeDecision, d.Timings.DecidedAt, d))
		m := nats.NewMsg(subject)
		m.Data = raw
		m.Header.Set(schemas.HeaderMsgID, id)
		if sig != "" {
			m.Header.Set(signing.Header, sig)
		}
		h.publishMsg(m)
	}
	h.waitCount(uint64(len(cases)), 20*time.Second, "SELECT count() FROM "+h.db+".decisions FINAL")
	h.waitAcked(schemas.ConsumerAuditDecisions, 10*time.Second)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, c := range cases {
		var keyID, status, logKey, logStatus string
		if err := h.ch.QueryRow(ctx, "SELECT signer_key_id, signature FROM "+h.db+".decisions FINAL WHERE request_id = ?", c.request).Scan(&keyID, &status); err != nil {
			t.Fatalf("%s: %v", c.request, err)
		}
		if err := h.ch.QueryRow(ctx, "SELECT signer_key_id, signature FROM "+h.db+".event_log FINAL WHERE event_id = ?",
			schemas.DerivedID(c.request, "decision")).Scan(&logKey, &logStatus); err != nil {
			t.Fatalf("%s event_log: %v", c.request, err)
		}
		if status != string(c.status) || logStatus != status || keyID != c.keyID || logKey != keyID {
			t.Errorf("%s: decisions (%q, %q), event_log (%q, %q); want (%q, %q)", c.request, keyID, status, logKey, logStatus, c.keyID, c.status)
		}
	}
	want := fmt.Sprintf(`
# HELP aigov_audit_bad_signatures_total %s
# TYPE aigov_audit_bad_signatures_total counter
aigov_audit_bad_signatures_total{status="invalid",stream="%[2]s"} 1
aigov_audit_bad_signatures_total{status="unsigned",stream="%[2]s"} 1
aigov_audit_bad_signatures_total{status="untrusted",stream="%[2]s"} 3
`, badSignaturesHelp, h.topo.StreamDecisions())
	if err := testutil.GatherAndCompare(h.svc.HTTP.Registry, strings.NewReader(want), "aigov_audit_bad_signatures_total"); err != nil {
		t.Error(err)
	}

	// The verdict is covered by the chain: making a forgery look valid is
	// caught.
	h.stop() // signs the final checkpoint
	if rep := h.verify(h.topo.StreamDecisions()); !rep.OK() {
		t.Fatalf("untouched chain does not verify: %+v", rep.Broken)
	}
	h.exec("ALTER TABLE " + h.db + ".event_log UPDATE signature = 'valid' WHERE signature = 'unsigned'")
	h.waitMutations()
	if rep := h.verify(h.topo.StreamDecisions()); rep.OK() {
		t.Fatal("a stored verdict changed from unsigned to valid, and audit verify did not notice")
	}
}
