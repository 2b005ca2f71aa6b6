package decide

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/json"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/signing"
)

// A verified event authn did not sign is a forgery on the bus (here by the
// test's admin connection, standing for a user whose permissions were
// widened): whatever it says, it is denied bad_event_signature, audited in
// the decisions stream, no reply goes to the reply subject it names, and
// the real request with the same id is still decided and stored.
func TestForgedVerifiedEventsAreDenied(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 2)
	platform, _ := h.srv.ConnectT(t, schemas.RolePlatform)
	inbox := schemas.InboxPrefix(schemas.RolePlatform) + ".forged"
	sub, err := platform.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	if err := platform.Flush(); err != nil {
		t.Fatal(err)
	}
	_, outsiderKey, _ := ed25519.GenerateKey(rand.Reader)
	outsider, err := signing.NewSigner(outsiderKey)
	if err != nil {
		t.Fatal(err)
	}

	// An outsider with no groups, who no policy allows... and, in the
	// forgery, alice, who a policy does allow.
	real := allowedRequest(t, "real-1", "sess-real")
	real.ReplyTo = inbox
	body := func(v schemas.Verified) []byte {
		b, err := json.Marshal(mustEvent(t, v))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	subject := h.topo.Subjects.Verified(real.Request.Action)
	forged := []struct {
		name   string
		msgID  string
		body   []byte
		signer *signing.Signer
		status signing.Status
	}{
		{"unsigned", "forged-1", body(real), nil, signing.Unsigned},
		{"signed by policy's own key", "forged-2", body(real), h.keys.Signer(schemas.RolePolicy), signing.Untrusted},
		{"signed by the reaper's key", "forged-3", body(real), h.keys.Signer(schemas.RoleReaper), signing.Untrusted},
		{"signed by a key nobody trusts", "forged-4", body(real), outsider, signing.Untrusted},
	}
	for _, f := range forged {
		h.publishSigned(t, subject, f.body, f.msgID, f.signer)
	}
	// authn's signature over another body does not carry over to this one.
	good := body(real)
	tampered := []byte(string(good[:len(good)-1]) + ` ,"x":1}`)
	m := h.keys.Signer(schemas.RoleAuthn).Sign(subject, "forged-5", good)
	h.publishWithHeader(t, subject, tampered, "forged-5", m)
	h.waitSettled(t, uint64(len(forged)+1))

	got := h.forgedDenies(t)
	if len(got) != len(forged)+1 {
		t.Fatalf("%d bad_event_signature denies stored, want %d: %+v", len(got), len(forged)+1, got)
	}
	for _, d := range got {
		if d.Allowed() || d.Code != schemas.CodeBadEventSignature || d.RequestID != real.RequestID || len(d.PolicyIDs) != 0 {
			t.Errorf("forged event's decision %s/%s for %s, policies %v", d.Decision, d.Code, d.RequestID, d.PolicyIDs)
		}
	}
	if m, err := sub.NextMsg(300 * time.Millisecond); err == nil {
		t.Fatalf("a forged event's reply subject was answered: %s", m.Data)
	}
	if n := h.counter(t, "aigov_policy_decisions_total", "code", string(schemas.CodeBadEventSignature)); n != float64(len(forged)+1) {
		t.Errorf("aigov_policy_decisions_total{code=bad_event_signature} = %v", n)
	}

	// The real request, same id, signed by authn: decided, stored, answered.
	h.publishVerified(t, real, "real-msg")
	reply, err := sub.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("no reply to the real request: %v", err)
	}
	if _, d := decodeDecision(t, reply.Data); !d.Allowed() {
		t.Fatalf("real request %s/%s", d.Decision, d.Code)
	}
	if _, err := h.keys.Trust().VerifyMsg(reply.Header.Get(signing.HeaderSubject), reply.Header, reply.Data, schemas.RolePolicy); err != nil {
		t.Fatalf("the reply is not signed by policy: %v", err)
	}
}

// forgedDenies returns the stored decisions with code bad_event_signature.
func (h *harness) forgedDenies(t *testing.T) []schemas.Decision {
	t.Helper()
	var out []schemas.Decision
	for _, m := range h.decisionMsgs(t) {
		if _, d := decodeDecision(t, m); d.Code == schemas.CodeBadEventSignature {
			out = append(out, d)
		}
	}
	return out
}
