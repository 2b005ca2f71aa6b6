package verify_test

import (
	"context"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/schemas/client"
	"github.com/aigov/aigov/services/devenv/idp"
)

// testMaxAge is the session max age of the test verifier.
const testMaxAge = 2 * time.Hour

// TestMaxAgeWithoutReaper: authn itself denies session_expired a request
// whose session is past its max age by its token (auth_time, or the iat of
// a token without sid and auth_time), with no revocation written: no
// reaper runs here. A fresh login of the same person passes, and a sid
// session without auth_time is left to the reaper.
func TestMaxAgeWithoutReaper(t *testing.T) {
	t.Parallel()
	e := startEnv(t)
	old := time.Now().Add(-testMaxAge - time.Minute)
	cases := []struct {
		name string
		opts []idp.TokenOption
		want schemas.Code // "" is verified
	}{
		{"sid session past max age by auth_time", []idp.TokenOption{idp.WithSessionID("sid-old"), idp.WithIssuedAt(old), idp.WithTTL(4 * time.Hour)}, schemas.CodeSessionExpired},
		{"one-token session past max age by iat", []idp.TokenOption{idp.WithoutSessionClaims(), idp.WithIssuedAt(old), idp.WithTTL(4 * time.Hour)}, schemas.CodeSessionExpired},
		{"a new login of the same person", []idp.TokenOption{idp.WithoutSessionClaims()}, ""},
		{"a fresh sid session", []idp.TokenOption{idp.WithSessionID("sid-new")}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := e.token(t, e.good, "alice", tc.opts...)
			id := schemas.NewID()
			m, err := client.NewRequestMessage(schemas.NewSubjects(""), "test-platform", client.Call{ID: id, Token: tok, Request: testRequest}, "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := e.platJS.PublishMsg(context.Background(), m); err != nil {
				t.Fatal(err)
			}
			ev := e.out.await(t, id).event
			if tc.want == "" {
				if ev.Type != schemas.TypeVerified {
					t.Fatalf("got %s, want a verified event", ev.Type)
				}
				return
			}
			var d schemas.Decision
			if ev.Type != schemas.TypeDecision || ev.DecodeData(&d) != nil {
				t.Fatalf("got %s, want a deny decision", ev.Type)
			}
			if d.Decision != schemas.Deny || d.Code != tc.want || d.Stage != schemas.StageAuthn || d.Reason != "session exceeded max age 2h0m0s" {
				t.Errorf("decision %s/%s at %s (%q), want deny %s at authn for max age 2h", d.Decision, d.Code, d.Stage, d.Reason, tc.want)
			}
		})
	}
	e.assertCounter(t, string(schemas.CodeSessionExpired), 2)
}
