package sessions_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
)

func writeLimits(t *testing.T, body string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "reaper.json")
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// The limits file is read by LoadConfig from AIGOV_REAPER_CONFIG, and a bad
// one is rejected with what is wrong.
func TestLoadLimits(t *testing.T) {
	t.Parallel()
	path := writeLimits(t, `{"limits":[
		{"issuer":"https://idp.aigov.test","group":"contractors","idle_timeout":"30s"},
		{"principal_type":"Workload","max_age":"10m"}]}`)
	env := reaperEnv(map[string]string{"AIGOV_REAPER_CONFIG": path})
	c := sessions.LoadConfig(env)
	if err := env.Err(); err != nil {
		t.Fatal(err)
	}
	want := []sessions.Limit{
		{Issuer: "https://idp.aigov.test", Group: "contractors", IdleTimeout: sessions.Duration(30 * time.Second)},
		{PrincipalType: "Workload", MaxAge: sessions.Duration(10 * time.Minute)},
	}
	if len(c.Limits) != len(want) || c.Limits[0] != want[0] || c.Limits[1] != want[1] {
		t.Errorf("limits %+v, want %+v", c.Limits, want)
	}
	// The default granularity shrinks to a tenth of the shortest idle.
	if c.TouchGranularity != 3*time.Second {
		t.Errorf("touch granularity %s, want 3s", c.TouchGranularity)
	}

	var many strings.Builder
	many.WriteString(`{"limits":[`)
	for i := range sessions.MaxLimitRules + 1 {
		if i > 0 {
			many.WriteString(",")
		}
		many.WriteString(`{"group":"g"}`)
	}
	many.WriteString("]}")
	for name, tc := range map[string]struct{ body, want string }{
		"unknown field":      {`{"limits":[{"grup":"x"}]}`, "unknown field"},
		"bad principal type": {`{"limits":[{"principal_type":"Robot"}]}`, "must be User or Workload"},
		"negative duration":  {`{"limits":[{"max_age":"-1m"}]}`, "negative"},
		"not a duration":     {`{"limits":[{"idle_timeout":"soon"}]}`, "duration"},
		"number duration":    {`{"limits":[{"idle_timeout":60}]}`, "duration must be a string"},
		"too many rules":     {many.String(), "at most 1000"},
		"not json":           {`limits: []`, "parse reaper config"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			env := reaperEnv(map[string]string{"AIGOV_REAPER_CONFIG": writeLimits(t, tc.body)})
			sessions.LoadConfig(env)
			if err := env.Err(); err == nil || !strings.Contains(err.Error(), "AIGOV_REAPER_CONFIG") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want AIGOV_REAPER_CONFIG and %q", err, tc.want)
			}
		})
	}
	env = reaperEnv(map[string]string{"AIGOV_REAPER_CONFIG": filepath.Join(t.TempDir(), "missing.json")})
	sessions.LoadConfig(env)
	if err := env.Err(); err == nil || !strings.Contains(err.Error(), "read reaper config") {
		t.Errorf("missing file: %v", err)
	}
	// A rule's idle timeout bounds an explicit touch granularity too.
	env = reaperEnv(map[string]string{
		"AIGOV_REAPER_CONFIG":            writeLimits(t, `{"limits":[{"group":"g","idle_timeout":"5s"}]}`),
		"AIGOV_REAPER_TOUCH_GRANULARITY": "1s",
	})
	sessions.LoadConfig(env)
	if err := env.Err(); err == nil || !strings.Contains(err.Error(), "AIGOV_REAPER_TOUCH_GRANULARITY") {
		t.Errorf("granularity above a rule's idle/10: %v", err)
	}
}

// Limits apply per issuer, principal type and group; the first matching
// rule wins (a later, broader or stricter rule does not apply to a session
// an earlier one matched); a zero field keeps the default; and the
// revocation names the limit that ended the session.
func TestLimitsSelectPerSession(t *testing.T) {
	t.Parallel()
	cfg := testConfig() // defaults: max age 1h, idle 30m
	cfg.Limits = []sessions.Limit{
		{Issuer: "https://other.test", MaxAge: sessions.Duration(2 * time.Minute)},
		{Issuer: issuer, Group: "contractors", IdleTimeout: sessions.Duration(5 * time.Minute)},
		{PrincipalType: schemas.PrincipalWorkload, MaxAge: sessions.Duration(10 * time.Minute)},
		{Group: "data-scientists", MaxAge: sessions.Duration(20 * time.Minute), IdleTimeout: sessions.Duration(15 * time.Minute)},
		{Group: "data-scientists", MaxAge: sessions.Duration(time.Minute)}, // shadowed by the rule above
	}
	h := newHarness(t, cfg)
	type who struct {
		name       string
		p          schemas.Principal
		endAt      time.Duration // first pass (at 1-minute steps) that ends it
		wantReason string
		wantText   string
	}
	mk := func(sub, iss, typ string, groups ...string) schemas.Principal {
		p := principal(sub, "sid-"+sub, ptr(t0))
		p.Issuer, p.ID, p.Type, p.Groups = iss, schemas.PrincipalID(iss, sub), typ, groups
		return p
	}
	cases := []who{
		{"other issuer: rule 1", mk("olga", "https://other.test", schemas.PrincipalUser, "data-scientists"), 2 * time.Minute, schemas.ReasonMaxAge, "session exceeded max age 2m0s"},
		{"contractor: rule 2 (idle), default max age", mk("cora", issuer, schemas.PrincipalUser, "contractors", "data-scientists"), 5 * time.Minute, schemas.ReasonIdle, "session exceeded idle timeout 5m0s"},
		{"workload: rule 3", mk("ci-bot", issuer, schemas.PrincipalWorkload), 10 * time.Minute, schemas.ReasonMaxAge, "session exceeded max age 10m0s"},
		{"data scientist: rule 4, not the shadowed rule 5", mk("dana", issuer, schemas.PrincipalUser, "data-scientists"), 15 * time.Minute, schemas.ReasonIdle, "session exceeded idle timeout 15m0s"},
		{"no rule: defaults", mk("nick", issuer, schemas.PrincipalUser, "finance"), 30 * time.Minute, schemas.ReasonIdle, "session exceeded idle timeout 30m0s"},
	}
	keys := map[string]who{}
	for i, c := range cases {
		v := verified("req-limits-"+c.p.Subject, "tok-"+c.p.Subject, c.p)
		h.track(v)
		keys[v.SessionKey] = cases[i]
	}
	ended := map[string]time.Duration{}
	for m := time.Duration(0); m <= 31*time.Minute; m += time.Minute {
		h.clock.Set(m)
		h.sweep(h.reaper)
		for key, c := range keys {
			if _, done := ended[key]; done {
				continue
			}
			if rv, ok := h.revocation(key); ok {
				ended[key] = m
				if rv.Reason != c.wantText {
					t.Errorf("%s: revocation reason %q, want %q", c.name, rv.Reason, c.wantText)
				}
			}
		}
	}
	for key, c := range keys {
		if got, ok := ended[key]; !ok || got != c.endAt {
			t.Errorf("%s: ended at t0+%s (ended %v), want t0+%s", c.name, got, ok, c.endAt)
		}
	}
	for _, ev := range h.sessionEvents(schemas.TypeSessionExpired) {
		d := decodeSessionEvent(t, ev)
		if c, ok := keys[d.SessionKey]; ok && d.Reason != c.wantReason {
			t.Errorf("%s: expired event reason %q, want %q", c.name, d.Reason, c.wantReason)
		}
	}
	if n := len(h.sessionEvents(schemas.TypeSessionExpired)); n != len(cases) {
		t.Errorf("%d expired events, want %d", n, len(cases))
	}
}
