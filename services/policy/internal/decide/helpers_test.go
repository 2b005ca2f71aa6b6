package decide

import (
	"encoding/base64"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/devenv/idp"
	"github.com/aigov/aigov/services/policy/engine"
)

const (
	policyDir = "../../../../policies"
	testIss   = "https://idp.test"
)

func seedSet(tb testing.TB) *engine.Set {
	tb.Helper()
	set, err := engine.LoadDir(policyDir)
	if err != nil {
		tb.Fatal(err)
	}
	return set
}

func sampleStore(tb testing.TB) *engine.Store {
	tb.Helper()
	st, err := engine.LoadStore(policyDir + "/entities.json")
	if err != nil {
		tb.Fatal(err)
	}
	return st
}

// verified builds the event authn would emit for a dev persona.
func verified(tb testing.TB, persona, action, resType, resID string, ctx map[string]any) schemas.Verified {
	tb.Helper()
	p, ok := idp.Personas()[persona]
	if !ok {
		tb.Fatalf("no persona %q", persona)
	}
	now := time.Now().UTC()
	authTime := now.Add(-10 * time.Minute)
	return schemas.Verified{
		RequestID: "req-" + persona + "-" + action,
		Source:    "test",
		Request:   schemas.Request{Action: action, Resource: schemas.Resource{Type: resType, ID: resID}, Context: ctx},
		Principal: schemas.Principal{
			ID: schemas.PrincipalID(testIss, p.Subject), Type: schemas.PrincipalUser,
			Issuer: testIss, Subject: p.Subject, Email: p.Email, Name: p.Name,
			Groups: p.Groups, Scopes: []string{"openid", "email", "profile", "groups"},
			AMR: []string{"pwd"}, AuthTime: &authTime, IssuedAt: authTime, ExpiresAt: now.Add(time.Hour),
		},
		SessionKey:       "sk",
		TokenFingerprint: schemas.Fingerprint("token"),
		ReceivedAt:       now.Add(-2 * time.Millisecond),
		VerifiedAt:       now.Add(-1 * time.Millisecond),
	}
}

func b64(s string) string { return base64.RawURLEncoding.EncodeToString([]byte(s)) }
