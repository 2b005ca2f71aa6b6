package servicekit_test

import (
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/services/servicekit"
)

func TestEnvReportsEveryViolation(t *testing.T) {
	t.Parallel()
	e := servicekit.NewEnv(servicekit.MapLookup(map[string]string{
		"A_DURATION": "soon",
		"A_INT":      "-3",
		"A_BOOL":     "maybe",
	}))
	e.Duration("A_DURATION", time.Second)
	e.Int("A_INT", 1, 0)
	e.Bool("A_BOOL", false)
	e.Required("A_MISSING")
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
		"D": "250ms", "I": "7", "B": "true", "L": " a, ,b ,c", "S": "  x  ", "EMPTY": "  ",
	}))
	if got := e.Duration("D", 0); got != 250*time.Millisecond {
		t.Errorf("duration %v", got)
	}
	if got := e.Int("I", 0, 1); got != 7 {
		t.Errorf("int %d", got)
	}
	if !e.Bool("B", false) {
		t.Error("bool false")
	}
	if got := strings.Join(e.List("L", nil), "|"); got != "a|b|c" {
		t.Errorf("list %q", got)
	}
	if got := e.String("S", "d"); got != "x" {
		t.Errorf("string %q", got)
	}
	if got := e.String("EMPTY", "d"); got != "d" {
		t.Errorf("blank value must mean unset, got %q", got)
	}
	if got := e.Duration("UNSET", time.Minute); got != time.Minute {
		t.Errorf("default duration %v", got)
	}
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestLoadCommon(t *testing.T) {
	t.Parallel()
	e := servicekit.NewEnv(servicekit.MapLookup(map[string]string{"AIGOV_NATS_URL": "nats://n:4222", "AIGOV_REPLICAS": "3"}))
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
		e := servicekit.NewEnv(servicekit.MapLookup(map[string]string{k: v}))
		if c := servicekit.LoadCommon(e, "policy", ":0"); e.Err() != nil || c.GCPercent != want {
			t.Errorf("%s: %d, %v; want %d", env, c.GCPercent, e.Err(), want)
		}
	}
	bad := servicekit.NewEnv(servicekit.MapLookup(map[string]string{"AIGOV_GOGC": "-5"}))
	if servicekit.LoadCommon(bad, "policy", ":0"); bad.Err() == nil {
		t.Error("AIGOV_GOGC=-5 accepted")
	}
}

// The NATS TLS and identity settings are read, and a half-given client
// certificate is a configuration error, not a silent plain connection.
func TestLoadCommonNATSSecurity(t *testing.T) {
	t.Parallel()
	e := servicekit.NewEnv(servicekit.MapLookup(map[string]string{
		"AIGOV_NATS_TLS_CA": "/ca.pem", "AIGOV_NATS_TLS_CERT": "/c.pem", "AIGOV_NATS_TLS_KEY": "/k.pem", "AIGOV_NATS_NKEY": "/s.nk",
	}))
	c := servicekit.LoadCommon(e, "authn", ":0")
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	n := c.NATS()
	if n.TLSCA != "/ca.pem" || n.TLSCert != "/c.pem" || n.TLSKey != "/k.pem" || n.NKeySeed != "/s.nk" || n.User != "authn" {
		t.Fatalf("settings not carried: %+v", n)
	}
	e = servicekit.NewEnv(servicekit.MapLookup(map[string]string{"AIGOV_NATS_TLS_CERT": "/c.pem"}))
	servicekit.LoadCommon(e, "authn", ":0")
	if err := e.Err(); err == nil || !strings.Contains(err.Error(), "AIGOV_NATS_") {
		t.Fatalf("want an error for a certificate without its key, got %v", err)
	}
}

// A dev clock offset may be negative and shifts Clock; without one Clock
// is the wall clock.
func TestClockOffset(t *testing.T) {
	t.Parallel()
	e := servicekit.NewEnv(servicekit.MapLookup(map[string]string{"AIGOV_DEV_CLOCK_OFFSET": "-2m"}))
	c := servicekit.LoadCommon(e, "authn", "127.0.0.1:8081")
	if err := e.Err(); err != nil {
		t.Fatal(err)
	}
	if d := time.Until(c.Clock()()); d > -119*time.Second || d < -121*time.Second {
		t.Fatalf("clock is %s from now, want -2m", d)
	}
	plain := servicekit.LoadCommon(servicekit.NewEnv(servicekit.MapLookup(nil)), "authn", "127.0.0.1:8081")
	if d := time.Until(plain.Clock()()); d > time.Second || d < -time.Second {
		t.Fatalf("clock without offset is %s from now", d)
	}
}
