// Package servicekit is what every aigov service shares to run: configuration
// from the environment, the NATS connection, the runner that owns acks, the
// health and metrics server, logging and graceful shutdown.
package servicekit

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/aigov/aigov/services/servicekit/natsconn"
)

// Lookup reads one configuration variable; os.LookupEnv in production, a map
// in tests.
type Lookup func(key string) (string, bool)

// MapLookup serves variables from a map.
func MapLookup(m map[string]string) Lookup {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

// Env reads typed variables and collects every violation, so that a service
// started with three bad settings reports all three at once. A variable's
// default and bounds are those of its declaration (Declare, Setting): the
// getters take only its name, so a default is written once, where the
// reference and -h read it too.
type Env struct {
	lookup Lookup
	errs   []error
	// declared, once Declare was called, are the variables the service
	// may read, with their declarations; undeclared lists those read
	// without a declaration.
	declared   map[string]Setting
	undeclared []string
}

// NewEnv reads from lookup.
func NewEnv(lookup Lookup) *Env { return &Env{lookup: lookup} }

func (e *Env) raw(key string) (string, bool) {
	e.read(key)
	v, ok := e.lookup(key)
	v = strings.TrimSpace(v)
	return v, ok && v != ""
}

// declaredValue is the declared default of key as a T: the zero value when
// there is none (or key is undeclared, which read reports), and a
// violation when the declaration's default is not a T (a programming error
// the start, and every test of the service, reports).
func declaredValue[T any](e *Env, key string) T {
	var zero T
	st, ok := e.declared[key]
	if !ok || st.Value == nil {
		return zero
	}
	v, ok := st.Value.(T)
	if !ok {
		e.errs = append(e.errs, fmt.Errorf("%s: its declared default %v is a %T, read as a %T", key, st.Value, st.Value, zero))
	}
	return v
}

// bounds are key's declared Min and Max as Ts, with whether each is set.
func bounds[T any](e *Env, key string) (lo T, hasLo bool, hi T, hasHi bool) {
	st := e.declared[key]
	if st.Min != nil {
		if lo, hasLo = st.Min.(T); !hasLo {
			e.errs = append(e.errs, fmt.Errorf("%s: its declared minimum %v is a %T, read as a %T", key, st.Min, st.Min, lo))
		}
	}
	if st.Max != nil {
		if hi, hasHi = st.Max.(T); !hasHi {
			e.errs = append(e.errs, fmt.Errorf("%s: its declared maximum %v is a %T, read as a %T", key, st.Max, st.Max, hi))
		}
	}
	return lo, hasLo, hi, hasHi
}

// String returns the variable or its declared default.
func (e *Env) String(key string) string { return e.StringOr(key, declaredValue[string](e, key)) }

// StringOr returns the variable or def, for a default computed at load
// time (the declaration's Default says how).
func (e *Env) StringOr(key, def string) string {
	if v, ok := e.raw(key); ok {
		return v
	}
	return def
}

// Duration parses a Go duration such as 30s or 5m, within the declared
// bounds (never negative).
func (e *Env) Duration(key string) time.Duration {
	return e.DurationOr(key, declaredValue[time.Duration](e, key))
}

// DurationOr is Duration with a default computed at load time.
func (e *Env) DurationOr(key string, def time.Duration) time.Duration {
	v, ok := e.raw(key)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		e.errs = append(e.errs, fmt.Errorf("%s=%q is not a non-negative duration such as 30s", key, v))
		return def
	}
	if !e.durationInBounds(key, d) {
		return def
	}
	return d
}

// SignedDuration parses a duration that may be negative (a clock offset).
func (e *Env) SignedDuration(key string) time.Duration {
	def := declaredValue[time.Duration](e, key)
	v, ok := e.raw(key)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q is not a duration such as -2m", key, v))
		return def
	}
	if !e.durationInBounds(key, d) {
		return def
	}
	return d
}

func (e *Env) durationInBounds(key string, d time.Duration) bool {
	lo, hasLo, hi, hasHi := bounds[time.Duration](e, key)
	switch {
	case hasLo && d < lo:
		e.errs = append(e.errs, fmt.Errorf("%s=%s must be at least %s", key, d, FormatDuration(lo)))
		return false
	case hasHi && d > hi:
		e.errs = append(e.errs, fmt.Errorf("%s=%s must be at most %s", key, d, FormatDuration(hi)))
		return false
	}
	return true
}

// Int parses a whole number within the declared bounds.
func (e *Env) Int(key string) int { return e.IntOr(key, declaredValue[int](e, key)) }

// IntOr is Int with a default computed at load time.
func (e *Env) IntOr(key string, def int) int {
	v, ok := e.raw(key)
	if !ok {
		return def
	}
	lo, hasLo, hi, hasHi := bounds[int](e, key)
	n, err := strconv.Atoi(v)
	if err != nil || (hasLo && n < lo) || (hasHi && n > hi) {
		want := "a whole number"
		switch {
		case hasLo && hasHi:
			want = fmt.Sprintf("a whole number from %d to %d", lo, hi)
		case hasLo:
			want = fmt.Sprintf("a whole number >= %d", lo)
		case hasHi:
			want = fmt.Sprintf("a whole number <= %d", hi)
		}
		e.errs = append(e.errs, fmt.Errorf("%s=%q is not %s", key, v, want))
		return def
	}
	return n
}

// Bool parses true/false/1/0.
func (e *Env) Bool(key string) bool {
	def := declaredValue[bool](e, key)
	v, ok := e.raw(key)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s=%q is not true or false", key, v))
		return def
	}
	return b
}

// List splits a comma-separated variable, dropping empty items.
func (e *Env) List(key string) []string {
	def := declaredValue[[]string](e, key)
	v, ok := e.raw(key)
	if !ok {
		return def
	}
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Fail records a violation found by the caller's own checks.
func (e *Env) Fail(format string, args ...any) { e.errs = append(e.errs, fmt.Errorf(format, args...)) }

// Err joins every violation seen, or is nil.
func (e *Env) Err() error {
	if len(e.errs) == 0 {
		return nil
	}
	return fmt.Errorf("configuration: %w", errors.Join(e.errs...))
}

// Common is the configuration every service reads.
type Common struct {
	// Service names the process in logs, metrics and NATS.
	Service string
	// NATSURL is a comma-separated server list (AIGOV_NATS_URL).
	NATSURL string
	// NATSUser and NATSPassword authenticate the service's own NATS user.
	NATSUser     string
	NATSPassword string
	// NATSCreds is a .creds file, used instead of user/password when set.
	NATSCreds string
	// NATSNKey is a file holding an nkey seed, used instead of the
	// password when set (AIGOV_NATS_NKEY).
	NATSNKey string
	// NATSTLSCA is the PEM CA bundle the NATS server's certificate must
	// chain to (AIGOV_NATS_TLS_CA); set, the connection is TLS or nothing.
	NATSTLSCA string
	// NATSTLSCert and NATSTLSKey are a client certificate for mutual TLS
	// (AIGOV_NATS_TLS_CERT, AIGOV_NATS_TLS_KEY).
	NATSTLSCert, NATSTLSKey string
	// Prefix is the first token of every subject (AIGOV_SUBJECT_PREFIX).
	Prefix string
	// Replicas of streams and buckets the service ensures (AIGOV_REPLICAS).
	Replicas int
	// HTTPAddr serves /healthz, /readyz and /metrics (AIGOV_HTTP_ADDR).
	HTTPAddr string
	// LogLevel is a zerolog level name (AIGOV_LOG_LEVEL).
	LogLevel string
	// LogFormat is json or console (AIGOV_LOG_FORMAT).
	LogFormat string
	// ShutdownTimeout bounds draining and flushing on SIGTERM.
	ShutdownTimeout time.Duration
	// SigningKey is the PEM Ed25519 private key file the service signs its
	// events with (AIGOV_SIGNING_KEY; required, in their own Config, by
	// the services that publish events: authn, policy, reaper).
	SigningKey string
	// SigningLinger is how long a pipelined runner waits, at most, for
	// more events to sign and publish as one batch (AIGOV_SIGNING_LINGER;
	// 0 flushes what is there at once). It waits only while its workers
	// are handling messages: a lone event is published at once.
	SigningLinger time.Duration
	// Pprof serves Go's profiles on the health port (AIGOV_PPROF).
	Pprof bool
	// GCPercent is the garbage collector's target (AIGOV_GOGC, as GOGC;
	// -1 turns it off), set when the service starts.
	GCPercent int
	// ClockOffset shifts the clock the service decides by
	// (AIGOV_DEV_CLOCK_OFFSET, e.g. -2m): a dev and chaos-test setting that
	// models a host whose clock is off. Zero in production.
	ClockOffset time.Duration
	// TrustFile lists the public keys of every signing role
	// (AIGOV_TRUST_FILE; required by the services that verify: policy,
	// audit). It is the operator's: no service writes it.
	TrustFile string
}

// DefaultSigningLinger is AIGOV_SIGNING_LINGER's default: 2 ms gathers
// a dozen events or more per signature at a few thousand a second, and
// costs each event at most that much latency per signing hop (none when
// the hop has nothing else in hand).
const DefaultSigningLinger = 2 * time.Millisecond

// GCPercent reads AIGOV_GOGC; unset, GOGC (as Go itself reads it, "off"
// included) and then def.
func (e *Env) GCPercent(def int) int {
	if v, ok := e.raw("GOGC"); ok {
		if v == "off" {
			def = -1
		} else if n, err := strconv.Atoi(v); err == nil && n >= -1 {
			def = n
		}
	}
	return e.IntOr("AIGOV_GOGC", def)
}

// DefaultGCPercent is AIGOV_GOGC's default. The hot-path services live on
// heaps of a few MiB, so Go's default of 100 collects every few hundred
// decisions: at 400, measured flat out on 2 cores, policy's GC went from
// 129 cycles and 6-8 % of wall time paused to 17 cycles and 0.9 %, the
// pipeline's CPU per decision fell 12-20 %, and each service stayed under
// 40 MiB. The audit writer has its own (sink.GCPercent).
const DefaultGCPercent = 400

// LoadCommon reads the shared variables. defaultHTTP differs per service so
// that a whole stack runs on one host without clashes.
func LoadCommon(e *Env, service, defaultHTTP string) Common {
	c := Common{
		Service:         service,
		NATSURL:         e.String("AIGOV_NATS_URL"),
		NATSUser:        e.StringOr("AIGOV_NATS_USER", service),
		NATSPassword:    e.String("AIGOV_NATS_PASSWORD"),
		NATSCreds:       e.String("AIGOV_NATS_CREDS"),
		NATSNKey:        e.String("AIGOV_NATS_NKEY"),
		NATSTLSCA:       e.String("AIGOV_NATS_TLS_CA"),
		NATSTLSCert:     e.String("AIGOV_NATS_TLS_CERT"),
		NATSTLSKey:      e.String("AIGOV_NATS_TLS_KEY"),
		Prefix:          e.String("AIGOV_SUBJECT_PREFIX"),
		Replicas:        e.Int("AIGOV_REPLICAS"),
		HTTPAddr:        e.StringOr("AIGOV_HTTP_ADDR", defaultHTTP),
		LogLevel:        e.String("AIGOV_LOG_LEVEL"),
		LogFormat:       e.String("AIGOV_LOG_FORMAT"),
		ShutdownTimeout: e.Duration("AIGOV_SHUTDOWN_TIMEOUT"),
		SigningKey:      e.String("AIGOV_SIGNING_KEY"),
		TrustFile:       e.String("AIGOV_TRUST_FILE"),
		SigningLinger:   e.Duration("AIGOV_SIGNING_LINGER"),
		Pprof:           e.Bool("AIGOV_PPROF"),
		GCPercent:       e.GCPercent(DefaultGCPercent),
		ClockOffset:     e.SignedDuration("AIGOV_DEV_CLOCK_OFFSET"),
	}
	if err := c.NATS().Validate(); err != nil {
		e.Fail("AIGOV_NATS_*: %w", err)
	}
	return c
}

// Clock is the clock the service decides by: time.Now, shifted by
// ClockOffset when one is set.
func (c Common) Clock() func() time.Time {
	if c.ClockOffset == 0 {
		return time.Now
	}
	off := c.ClockOffset
	return func() time.Time { return time.Now().Add(off) }
}

// NATS is how this service reaches the bus, for natsconn.
func (c Common) NATS() natsconn.Config {
	return natsconn.Config{
		URL: c.NATSURL, User: c.NATSUser, Password: c.NATSPassword, Creds: c.NATSCreds, NKeySeed: c.NATSNKey,
		TLSCA: c.NATSTLSCA, TLSCert: c.NATSTLSCert, TLSKey: c.NATSTLSKey, Name: "aigov-" + c.Service,
	}
}
