package decide

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/personal"
)

// TestServiceOpensSealedFields: a verified event as authn seals it (email,
// name and a personal context field Cedar needs) is decided on the clear
// values, and the decision is published with authn's sealed ones; a value
// sealed for another subject is not opened but denied subject_erased, as
// is an event whose subject was erased while it was in flight.
func TestServiceOpensSealedFields(t *testing.T) {
	t.Parallel()
	h := startHarness(t, 2)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	kv, err := h.js.KeyValue(ctx, h.topo.BucketSubjectKeys())
	if err != nil {
		t.Fatal(err)
	}
	// Cache.Run is not needed to seal: keys are then just not cached.
	sealer := personal.NewSealer(personal.NewCache(kv, 0), []string{"environment"})
	seal := func(v schemas.Verified) schemas.Verified {
		t.Helper()
		c, err := sealer.Seal(ctx, &v.Principal, v.Request.Context)
		if err != nil {
			t.Fatal(err)
		}
		v.Request.Context = c
		return v
	}
	decide := func(v schemas.Verified, n uint64) schemas.Decision {
		t.Helper()
		h.publishVerified(t, v, v.RequestID)
		h.waitSettled(t, n)
		_, d := decodeDecision(t, h.lastDecision(t, v.Request.Action).Data)
		if d.RequestID != v.RequestID {
			t.Fatalf("last decision is for %s, want %s", d.RequestID, v.RequestID)
		}
		return d
	}

	// The retrain permit needs context.environment == "staging": allowed
	// only if policy opened it.
	v := seal(verified(t, "alice", "model.retrain", "Model", "fraud-detector", map[string]any{"environment": "staging"}))
	env, _ := v.Request.Context["environment"].(string)
	if !strings.HasPrefix(env, personal.CipherPrefix) || !strings.HasPrefix(v.Principal.Email, personal.CipherPrefix) {
		t.Fatalf("not sealed: %q %q", env, v.Principal.Email)
	}
	d := decide(v, 1)
	if !d.Allowed() {
		t.Fatalf("sealed staging retrain: %s/%s %s", d.Decision, d.Code, d.Reason)
	}
	if d.Context["environment"] != env || d.Principal == nil || d.Principal.Email != v.Principal.Email || d.Principal.Name != v.Principal.Name {
		t.Fatalf("the published decision is not authn's sealed values: %v %+v", d.Context, d.Principal)
	}

	// carol (a data scientist too) carrying alice's sealed environment:
	// refused, not opened.
	forged := seal(verified(t, "carol", "model.retrain", "Model", "fraud-detector", nil))
	forged.RequestID = "req-forged"
	forged.Request.Context = map[string]any{"environment": env}
	if d := decide(forged, 2); d.Allowed() || d.Code != schemas.CodeSubjectErased {
		t.Fatalf("another subject's sealed value: %s/%s, want subject_erased", d.Decision, d.Code)
	}

	// Sealed, then the subject erased before policy decides.
	late := seal(verified(t, "alice", "model.retrain", "Model", "fraud-detector", map[string]any{"environment": "staging"}))
	late.RequestID = "req-late"
	if _, err := sealer.Keys().Store().Erase(ctx, late.Principal.Issuer, late.Principal.Subject); err != nil {
		t.Fatal(err)
	}
	d = decide(late, 3)
	if d.Allowed() || d.Code != schemas.CodeSubjectErased || !strings.Contains(d.Reason, "erased") {
		t.Fatalf("erased in flight: %s/%s %q, want subject_erased", d.Decision, d.Code, d.Reason)
	}
	if d.Principal == nil || !strings.HasPrefix(d.Principal.Email, personal.CipherPrefix) {
		t.Fatalf("the deny does not keep the sealed email: %+v", d.Principal)
	}
}

// Cedar quotes a value it cannot parse (ip(), decimal()) in its error: of
// a field policy opened, only "[sealed]" may be published.
func TestScrubOpenedValues(t *testing.T) {
	t.Parallel()
	sealed := schemas.Verified{Principal: schemas.Principal{Email: "enc:v1:e", Name: "enc:v1:n"},
		Request: schemas.Request{Context: map[string]any{"client_ip": "enc:v1:c", "environment": "staging"}}}
	clear := schemas.Verified{Principal: schemas.Principal{Email: "erin@aigov.example", Name: "Erin"},
		Request: schemas.Request{Context: map[string]any{"client_ip": "10.0.0.999", "environment": "staging"}}}
	d := schemas.Decision{
		PolicyErrors: []string{`p (a.cedar:3): error parsing IP address 10.0.0.999`, `q (a.cedar:9): erin@aigov.example is not Erin`},
		Shadow:       &schemas.ShadowOutcome{Errors: []string{`s (b.cedar:1): error parsing IP address 10.0.0.999`}},
		Reason:       "2 policy evaluation error(s); any evaluation error denies",
	}
	scrubOpened(&d, sealed, clear)
	for _, s := range append(append([]string{d.Reason}, d.PolicyErrors...), d.Shadow.Errors...) {
		if strings.Contains(s, "10.0.0.999") || strings.Contains(s, "erin@") || strings.Contains(s, "Erin") {
			t.Errorf("an opened value left in clear: %q", s)
		}
	}
	if d.PolicyErrors[0] != `p (a.cedar:3): error parsing IP address [sealed]` {
		t.Errorf("scrubbed error %q", d.PolicyErrors[0])
	}
}
