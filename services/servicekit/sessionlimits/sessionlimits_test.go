package sessionlimits_test

import (
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
)

func TestCheckToken(t *testing.T) {
	t.Parallel()
	now := time.Unix(1700000000, 0)
	ago := func(d time.Duration) *time.Time { t := now.Add(-d); return &t }
	l := sessionlimits.Limits{MaxAge: time.Hour, IdleTimeout: time.Minute, Rules: []sessionlimits.Limit{
		{PrincipalType: schemas.PrincipalWorkload, Group: "batch-jobs", MaxAge: sessionlimits.Duration(72 * time.Hour)},
		{Issuer: "https://partner", MaxAge: sessionlimits.Duration(10 * time.Minute)},
	}}
	user := func(p schemas.Principal) schemas.Principal {
		if p.Issuer == "" {
			p.Issuer = "https://idp"
		}
		if p.Type == "" {
			p.Type = schemas.PrincipalUser
		}
		return p
	}
	cases := []struct {
		name    string
		limits  sessionlimits.Limits
		p       schemas.Principal
		maxAge  time.Duration
		exceeds bool
	}{
		{"auth_time within max age", l, user(schemas.Principal{SessionID: "s", AuthTime: ago(59 * time.Minute)}), time.Hour, false},
		{"auth_time at max age", l, user(schemas.Principal{SessionID: "s", AuthTime: ago(time.Hour)}), time.Hour, true},
		{"refreshed token keeps auth_time", l, user(schemas.Principal{AuthTime: ago(2 * time.Hour), IssuedAt: now}), time.Hour, true},
		{"one-token session by iat", l, user(schemas.Principal{IssuedAt: *ago(61 * time.Minute)}), time.Hour, true},
		{"fresh one-token session", l, user(schemas.Principal{IssuedAt: now}), time.Hour, false},
		{"sid without auth_time: the reaper's", l, user(schemas.Principal{SessionID: "s", IssuedAt: *ago(48 * time.Hour)}), 0, false},
		{"a rule's longer max age", l, user(schemas.Principal{Type: schemas.PrincipalWorkload, Groups: []string{"batch-jobs"}, AuthTime: ago(48 * time.Hour)}), 72 * time.Hour, false},
		{"a rule's shorter max age", l, user(schemas.Principal{Issuer: "https://partner", AuthTime: ago(11 * time.Minute)}), 10 * time.Minute, true},
		{"no max age configured", sessionlimits.Limits{}, user(schemas.Principal{AuthTime: ago(1000 * time.Hour)}), 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			maxAge, over := tc.limits.CheckToken(tc.p, now)
			if over != tc.exceeds || maxAge != tc.maxAge {
				t.Errorf("CheckToken = %s, %v; want %s, %v", maxAge, over, tc.maxAge, tc.exceeds)
			}
		})
	}
}
