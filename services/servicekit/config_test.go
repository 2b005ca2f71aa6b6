package servicekit_test

import (
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/services/servicekit"
)

// testSettings declares the variables the Env tests read.
func testSettings() servicekit.Settings {
	return servicekit.Settings{Service: "test", Sections: []servicekit.Section{{Title: "test", Settings: []servicekit.Setting{
		{Names: []string{"A_DURATION"}, Value: time.Second},
		{Names: []string{"A_INT"}, Value: 1, Min: 0},
		{Names: []string{"A_BOOL"}, Value: false},
		{Names: []string{"A_MISSING"}, Required: true},
		{Names: []string{"D"}, Value: time.Duration(0)},
		{Names: []string{"I"}, Min: 1},
		{Names: []string{"B"}, Value: false},
		{Names: []string{"L"}},
		{Names: []string{"S", "EMPTY"}, Value: "d"},
		{Names: []string{"UNSET"}, Value: time.Minute},
		{Names: []string{"BOUNDED_D"}, Value: time.Second, Min: 10 * time.Millisecond, Max: time.Minute},
		{Names: []string{"BOUNDED_I"}, Value: 5, Min: 1, Max: 10},
		{Names: []string{"WRONG_TYPE"}, Value: "5"},
	}}}}
}

// commonEnv reads m with the settings every service declares.
func commonEnv(m map[string]string) *servicekit.Env {
	e := servicekit.NewEnv(servicekit.MapLookup(m))
	e.Declare(servicekit.Settings{Service: "test", Sections: []servicekit.Section{servicekit.CommonSettings()}})
	return e
}

func TestEnvReportsEveryViolation(t *testing.T) {
	t.Parallel()
	e := servicekit.NewEnv(servicekit.MapLookup(map[string]string{
		"A_DURATION": "soon",
		"A_INT":      "-3",
		"A_BOOL":     "maybe",
	}))
	e.Declare(testSettings()) // A_MISSING is required
	e.Duration("A_DURATION")
	e.Int("A_INT")
	e.Bool("A_BOOL")
	err := e.Err()
	if err == nil {
		t.Fatal("want an error")
	}
	for _, key := range []string{"A_DURATION", "A_INT", "A_BOOL", "A_MISSING"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("error does not name %s: %v", key, err)
		}
	}
}

func TestEnvDefaultsAndValues(t *testing.T) {
	t.Parallel()
	e := servicekit.NewEnv(servicekit.MapLookup(map[string]string{
		"D": "250ms", "I": "7", "B": "true", "L": " a, ,b ,c", "S": "  x  ", "EMPTY": "  ", "A_MISSING": "set",
	}))
	e.Declare(testSettings())
	if got := e.Duration("D"); got != 250*time.Millisecond {
		t.Errorf("duration %v", got)
	}
	if got := e.Int("I"); got != 7 {
		t.Errorf("int %d", got)
	}
	if !e.Bool("B") {
		t.Error("bool false")
	}
	if got := strings.Join(e.List("L"), "|"); got != "a|b|c" {
		t.Errorf("list %q", got)
	}
	if got := e.String("S"); got != "x" {
		t.Errorf("string %q", got)
	}
	if got := e.String("EMPTY"); got != "d" {
		t.Errorf("blank value must mean unset, got %q", got)
	}
	if got := e.Duration("UNSET"); got != time.Minute {
		t.Errorf("default duration %v", got)
	}
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
}

// The declared bounds are checked, each violation naming its variable and
// the bound; a declared default of the wrong type is a violation too.
func TestEnvDeclaredBounds(t *testing.T) {
	t.Parallel()
	e := servicekit.NewEnv(servicekit.MapLookup(map[string]string{"BOUNDED_D": "2m", "BOUNDED_I": "0", "A_MISSING": "set"}))
	e.Declare(testSettings())
	if got := e.Duration("BOUNDED_D"); got != time.Second {
		t.Errorf("out of bounds duration %v, want the default", got)
	}
	if got := e.Int("BOUNDED_I"); got != 5 {
		t.Errorf("out of bounds int %d, want the default", got)
	}
	e.Int("WRONG_TYPE")
	err := e.Err()
	for _, want := range []string{"BOUNDED_D=2m0s must be at most 1m", `BOUNDED_I="0" is not a whole number from 1 to 10`, "WRONG_TYPE: its declared default 5 is a string"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not say %q", err, want)
		}
	}
	low := servicekit.NewEnv(servicekit.MapLookup(map[string]string{"BOUNDED_D": "1ms", "A_MISSING": "set"}))
	low.Declare(testSettings())
	low.Duration("BOUNDED_D")
	if err := low.Err(); err == nil || !strings.Contains(err.Error(), "BOUNDED_D=1ms must be at least 10ms") {
		t.Errorf("below the minimum: %v", err)
	}
}

func TestLoadCommon(t *testing.T) {
	t.Parallel()
	e := commonEnv(map[string]string{"AIGOV_NATS_URL": "nats://n:4222", "AIGOV_REPLICAS": "3"})
	c := servicekit.LoadCommon(e, "authn", "127.0.0.1:8081")
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	if c.NATSURL != "nats://n:4222" || c.NATSUser != "authn" || c.HTTPAddr != "127.0.0.1:8081" || c.Replicas != 3 || c.Prefix != "aigov" {
		t.Fatalf("unexpected config %+v", c)
	}
	if got := c.Topology().Replicas; got != 3 {
		t.Fatalf("topology replicas %d", got)
	}
	if c.GCPercent != servicekit.DefaultGCPercent {
		t.Errorf("GCPercent %d, want the default %d", c.GCPercent, servicekit.DefaultGCPercent)
	}
	for env, want := range map[string]int{"AIGOV_GOGC=150": 150, "AIGOV_GOGC=-1": -1, "GOGC=off": -1, "GOGC=50": 50} {
		k, v, _ := strings.Cut(env, "=")
		e := commonEnv(map[string]string{k: v})
		if c := servicekit.LoadCommon(e, "policy", ":0"); e.Err() != nil || c.GCPercent != want {
			t.Errorf("%s: %d, %v; want %d", env, c.GCPercent, e.Err(), want)
		}
	}
	bad := commonEnv(map[string]string{"AIGOV_GOGC": "-5"})
	if servicekit.LoadCommon(bad, "policy", ":0"); bad.Err() == nil {
		t.Error("AIGOV_GOGC=-5 accepted")
	}
}

// The NATS TLS and identity settings are read, and a half-given client
// certificate is a configuration error, not a silent plain connection.
func TestLoadCommonNATSSecurity(t *testing.T) {
	t.Parallel()
	e := commonEnv(map[string]string{
		"AIGOV_NATS_TLS_CA": "/ca.pem", "AIGOV_NATS_TLS_CERT": "/c.pem", "AIGOV_NATS_TLS_KEY": "/k.pem", "AIGOV_NATS_NKEY": "/s.nk",
	})
	c := servicekit.LoadCommon(e, "authn", ":0")
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	n := c.NATS()
	if n.TLSCA != "/ca.pem" || n.TLSCert != "/c.pem" || n.TLSKey != "/k.pem" || n.NKeySeed != "/s.nk" || n.User != "authn" {
		t.Fatalf("settings not carried: %+v", n)
	}
	e = commonEnv(map[string]string{"AIGOV_NATS_TLS_CERT": "/c.pem"})
	servicekit.LoadCommon(e, "authn", ":0")
	if err := e.Err(); err == nil || !strings.Contains(err.Error(), "AIGOV_NATS_") {
		t.Fatalf("want an error for a certificate without its key, got %v", err)
	}
}

// A dev clock offset may be negative and shifts Clock; without one Clock
// is the wall clock.
// A clock offset beyond ten minutes is refused: -720h on authn and policy
// would accept tokens that expired a month ago.
func TestClockOffsetBounded(t *testing.T) {
	for _, v := range []string{"-720h", "11m"} {
		e := commonEnv(map[string]string{"AIGOV_DEV_CLOCK_OFFSET": v})
		servicekit.LoadCommon(e, "authn", "127.0.0.1:8081")
		if err := e.Err(); err == nil || !strings.Contains(err.Error(), "AIGOV_DEV_CLOCK_OFFSET") {
			t.Errorf("AIGOV_DEV_CLOCK_OFFSET=%s: %v, want a refusal", v, err)
		}
	}
}

func TestClockOffset(t *testing.T) {
	t.Parallel()
	e := commonEnv(map[string]string{"AIGOV_DEV_CLOCK_OFFSET": "-2m"})
	c := servicekit.LoadCommon(e, "authn", "127.0.0.1:8081")
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(c.Clock()()); d > -119*time.Second || d < -121*time.Second {
		t.Fatalf("clock is %s from now, want -2m", d)
	}
	plain := servicekit.LoadCommon(commonEnv(nil), "authn", "127.0.0.1:8081")
	if d := time.Until(plain.Clock()()); d > time.Second || d < -time.Second {
		t.Fatalf("clock without offset is %s from now", d)
	}
}
