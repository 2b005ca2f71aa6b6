package sessions_test

import (
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/services/servicekit/topology"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/reaper/internal/reap"
	"github.com/aigov/aigov/services/reaper/internal/sessions"
	"github.com/aigov/aigov/services/servicekit"
)

func TestLoadConfigDefaults(t *testing.T) {
	t.Parallel()
	env := reaperEnv(nil)
	c := sessions.LoadConfig(env)
	if err := env.Err(); err != nil {
		t.Fatal(err)
	}
	if c.MaxAge != 8*time.Hour || c.IdleTimeout != time.Hour || c.Interval != time.Second || c.MaxScan != 100000 || c.Workers != 4 {
		t.Errorf("defaults: %+v", c)
	}
	// The common part is the whole reaper's, loaded beside the sessions'.
	if rc := reap.LoadConfig(reaperEnv(nil)); rc.Service != "reaper" || rc.HTTPAddr != "127.0.0.1:8084" || rc.NATSUser != "reaper" {
		t.Errorf("common defaults: service %q http %q user %q", rc.Service, rc.HTTPAddr, rc.NATSUser)
	}
}

func TestLoadConfigReadsVariables(t *testing.T) {
	t.Parallel()
	env := reaperEnv(map[string]string{
		"AIGOV_SESSION_MAX_AGE":      "10s",
		"AIGOV_SESSION_IDLE_TIMEOUT": "5s",
		"AIGOV_REAPER_INTERVAL":      "250ms",
		"AIGOV_REAPER_MAX_SCAN":      "50",
		"AIGOV_REAPER_WORKERS":       "2",
	})
	c := sessions.LoadConfig(env)
	if err := env.Err(); err != nil {
		t.Fatal(err)
	}
	if c.MaxAge != 10*time.Second || c.IdleTimeout != 5*time.Second || c.Interval != 250*time.Millisecond || c.MaxScan != 50 || c.Workers != 2 {
		t.Errorf("loaded: %+v", c)
	}
}

// Every bad setting is reported in one error, so an operator fixes them
// all in one go.
func TestLoadConfigReportsAllErrorsAtOnce(t *testing.T) {
	t.Parallel()
	env := reaperEnv(map[string]string{
		"AIGOV_SESSION_MAX_AGE":      "eight hours",
		"AIGOV_SESSION_IDLE_TIMEOUT": "0s",
		"AIGOV_REAPER_INTERVAL":      "1ms",
		"AIGOV_REAPER_MAX_SCAN":      "0",
		"AIGOV_REAPER_WORKERS":       "many",
		"AIGOV_REPLICAS":             "0",
	})
	reap.LoadConfig(env)
	err := env.Err()
	if err == nil {
		t.Fatal("bad configuration accepted")
	}
	for _, want := range []string{
		`AIGOV_SESSION_MAX_AGE="eight hours"`,
		"AIGOV_SESSION_IDLE_TIMEOUT must be positive",
		"AIGOV_REAPER_INTERVAL=1ms must be at least 10ms",
		`AIGOV_REAPER_MAX_SCAN="0"`,
		`AIGOV_REAPER_WORKERS="many"`,
		`AIGOV_REPLICAS="0"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not mention %q:\n%v", want, err)
		}
	}
}

// An idle timeout as long as the sessions bucket's retention would let
// idle sessions vanish from the bucket without ever being ended.
func TestLoadConfigRejectsIdleTimeoutBeyondRetention(t *testing.T) {
	t.Parallel()
	retention := topology.New("").EventMaxAge
	env := reaperEnv(map[string]string{"AIGOV_SESSION_IDLE_TIMEOUT": retention.String()})
	sessions.LoadConfig(env)
	if err := env.Err(); err == nil || !strings.Contains(err.Error(), "retention") {
		t.Errorf("got %v, want an error about the bucket's retention", err)
	}
}

func TestRecordExpired(t *testing.T) {
	t.Parallel()
	auth := t0.Add(-30 * time.Minute)
	cases := map[string]struct {
		rec        sessions.Record
		now        time.Time
		wantReason string
		wantOK     bool
	}{
		"fresh":                      {sessions.Record{FirstSeen: t0, LastSeen: t0}, t0.Add(time.Minute), "", false},
		"max age from first seen":    {sessions.Record{FirstSeen: t0, LastSeen: t0.Add(50 * time.Minute)}, t0.Add(time.Hour), schemas.ReasonMaxAge, true},
		"max age from auth_time":     {sessions.Record{AuthTime: &auth, FirstSeen: t0, LastSeen: t0}, t0.Add(30 * time.Minute), schemas.ReasonMaxAge, true},
		"auth_time just under limit": {sessions.Record{AuthTime: &auth, FirstSeen: t0, LastSeen: t0}, t0.Add(29 * time.Minute), "", false},
		"idle exactly at the limit":  {sessions.Record{FirstSeen: t0, LastSeen: t0}, t0.Add(30 * time.Minute), schemas.ReasonIdle, true},
		"idle just under the limit":  {sessions.Record{FirstSeen: t0, LastSeen: t0}, t0.Add(30*time.Minute - time.Nanosecond), "", false},
		"max age wins over idle":     {sessions.Record{FirstSeen: t0, LastSeen: t0}, t0.Add(2 * time.Hour), schemas.ReasonMaxAge, true},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			reason, ok := tc.rec.Expired(tc.now, time.Hour, 30*time.Minute)
			if reason != tc.wantReason || ok != tc.wantOK {
				t.Errorf("Expired: got (%q, %v), want (%q, %v)", reason, ok, tc.wantReason, tc.wantOK)
			}
		})
	}
}

// reaperEnv reads m with the reaper's declared settings (their defaults
// and bounds), without its required common ones.
func reaperEnv(m map[string]string) *servicekit.Env {
	e := servicekit.NewEnv(servicekit.MapLookup(m))
	e.Declare(servicekit.Settings{Service: "reaper", Sections: []servicekit.Section{servicekit.SessionLimitSettings(), reap.Settings()}})
	return e
}
