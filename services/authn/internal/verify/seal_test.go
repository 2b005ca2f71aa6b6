package verify_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/aigov/aigov/services/servicekit/topology"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/authn/internal/verify"
	"github.com/aigov/aigov/services/servicekit/personal"
)

// TestAuthnSealsPersonalFields: with sealing on, the verified event authn
// stores holds the principal's email and name and the personal context
// field only sealed (the stored bytes are searched); a requester's own
// "enc:v1:" value is denied malformed_request, so it can never pass for
// one authn sealed; a deny before the token checks out has no subject to
// seal for and keeps the personal field as "***".
func TestAuthnSealsPersonalFields(t *testing.T) {
	t.Parallel()
	e := startEnvTopo(t, topology.New(""), func(c *verify.Config) {
		c.Encrypt, c.PersonalContextFields, c.SubjectKeyCacheSize = true, []string{"Patient_Ref"}, 10
	})
	ctx := context.Background()
	send := func(id, tok string, c map[string]any) output {
		t.Helper()
		req := testRequest
		req.Context = c
		m, err := client.NewRequestMessage(schemas.NewSubjects(""), "test-platform", client.Call{ID: id, Token: tok, Request: req}, "")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.platJS.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		return e.out.await(t, id)
	}
	tok := e.token(t, e.good, "alice")

	out := send("sealed-1", tok, map[string]any{"environment": "staging", "patient_ref": "PR-4711"})
	if out.event.Type != schemas.TypeVerified {
		t.Fatalf("got %s, want a verified event", out.event.Type)
	}
	for _, clear := range []string{"alice@aigov.example", "Alice Archer", "PR-4711"} {
		if bytes.Contains(out.raw, []byte(clear)) {
			t.Errorf("the stored verified event holds %q in clear", clear)
		}
	}
	var v schemas.Verified
	if err := json.Unmarshal(out.event.Data, &v); err != nil {
		t.Fatal(err)
	}
	ref, _ := v.Request.Context["patient_ref"].(string)
	if !strings.HasPrefix(v.Principal.Email, personal.CipherPrefix) || !strings.HasPrefix(v.Principal.Name, personal.CipherPrefix) ||
		!strings.HasPrefix(ref, personal.CipherPrefix) || v.Request.Context["environment"] != "staging" {
		t.Fatalf("sealed: email %q name %q context %v", v.Principal.Email, v.Principal.Name, v.Request.Context)
	}
	if id, _ := personal.CipherKeyID(ref); id != personal.SubjectKeyID(v.Principal.Issuer, v.Principal.Subject) {
		t.Fatalf("sealed under key %s, want alice's", id)
	}

	// A requester's ciphertext-looking value: refused.
	out = send("forged-1", tok, map[string]any{"environment": "staging", "note": ref})
	var d schemas.Decision
	if err := json.Unmarshal(out.event.Data, &d); err != nil {
		t.Fatal(err)
	}
	if out.event.Type != schemas.TypeDecision || d.Code != schemas.CodeMalformedRequest || !strings.Contains(d.Reason, "reserved") {
		t.Fatalf("a requester's enc:v1: value: %s %s %q, want malformed_request", out.event.Type, d.Code, d.Reason)
	}

	// No verified subject: nothing to seal for, the field is dropped.
	out = send("unsigned-1", algNone(t, tok), map[string]any{"patient_ref": "PR-0815"})
	d = schemas.Decision{}
	if err := json.Unmarshal(out.event.Data, &d); err != nil {
		t.Fatal(err)
	}
	if d.Decision != schemas.Deny || d.Principal != nil || d.Context["patient_ref"] != personal.Redacted || bytes.Contains(out.raw, []byte("PR-0815")) {
		t.Fatalf("deny without a subject: %s %s principal %v context %v", d.Decision, d.Code, d.Principal, d.Context)
	}
}
