package sessions

import (
	"errors"
	"fmt"
	"time"

	"github.com/aigov/aigov/services/servicekit"
	"github.com/aigov/aigov/services/servicekit/sessionlimits"
	"github.com/aigov/aigov/services/servicekit/topology"
)

// Defaults of the reaper's settings.
const (
	DefaultMaxAge      = sessionlimits.DefaultMaxAge
	DefaultIdleTimeout = time.Hour
	DefaultInterval    = time.Second
	DefaultMaxScan     = 100000
	DefaultWorkers     = 4
	// DefaultSessionsMax bounds the live sessions held in memory; a record
	// takes about 1 to 3 KB (it keeps up to 32 token fingerprints).
	DefaultSessionsMax = 100000
	// DefaultRevocationsMax bounds the revocation keys held in memory,
	// authn's and policy's default too.
	DefaultRevocationsMax = 500000
	// DefaultTTLGrace of zero gives session records no per-key bound of
	// their own beyond the bucket's retention (see Config.TTLGrace).
	DefaultTTLGrace = 0
	// DefaultTouchGranularity is how stale a record's last_seen may get
	// before a request of a known token rewrites it: a busy session's
	// record is written at most this often.
	DefaultTouchGranularity = 5 * time.Second
)

// touchGranularityDivisor keeps the coalescing granularity well below the
// idle timeout: an idle expiry may come early by up to the granularity.
const touchGranularityDivisor = 10

// MinInterval keeps a mistyped interval from turning the expiry loop into a
// busy loop against the broker.
const MinInterval = 10 * time.Millisecond

// Config is the configuration of the reaper's session tracking and
// expiry (reap.Config holds it beside the common settings).
type Config struct {
	// MaxAge bounds a session's life, measured from its start
	// (killswitch.Session.Start: auth_time, else the iat of a one-token
	// session, else when the reaper first saw it) (AIGOV_SESSION_MAX_AGE;
	// authn and policy enforce it too, package sessionlimits).
	MaxAge time.Duration
	// IdleTimeout ends a session not seen for this long
	// (AIGOV_SESSION_IDLE_TIMEOUT).
	IdleTimeout time.Duration
	// Interval is how often sessions are checked (AIGOV_REAPER_INTERVAL).
	Interval time.Duration
	// MaxScan bounds the sessions examined per check
	// (AIGOV_REAPER_MAX_SCAN).
	MaxScan int
	// Workers handle verified events concurrently (AIGOV_REAPER_WORKERS).
	Workers int
	// SessionsMax bounds the live sessions the reaper holds in memory
	// (AIGOV_REAPER_SESSIONS_MAX); zero means DefaultSessionsMax. With more
	// in the bucket the in-memory view is dropped and every verified
	// request reads its session from the bucket, until a reload a minute
	// later finds at most this many.
	SessionsMax int
	// RevocationsMax bounds the revocation keys held in memory
	// (AIGOV_REAPER_REVOCATIONS_MAX); zero means DefaultRevocationsMax.
	// Above it requests read the revocation bucket instead.
	RevocationsMax int
	// Limits override MaxAge and IdleTimeout per issuer, principal type and
	// group, read from the JSON file AIGOV_REAPER_CONFIG names.
	Limits []Limit
	// TTLGrace is added to a session record's due time to form its per-key
	// TTL (AIGOV_REAPER_TTL_GRACE): the expiry pass ends sessions; the TTL
	// only clears a record left behind by an outage longer than the grace.
	// Zero (the default) sets each record's TTL to the bucket's retention,
	// which always exceeds the idle timeout: a record then outlives its
	// session's due time by at least retention minus idle timeout, so a
	// reaper outage shorter than that loses no expiry. A record that lapses
	// anyway (a longer outage, or a short grace) leaves a purge marker the
	// expiry pass turns into a session_expired revocation (see Sweep).
	TTLGrace time.Duration
	// TouchGranularity coalesces writes (AIGOV_REAPER_TOUCH_GRANULARITY):
	// a request presenting a token the session already knows does not
	// rewrite the record when its last_seen is younger than this. Idle
	// expiry may then come up to this much early, never late. Zero writes
	// every request. It must be at most a tenth of every idle timeout.
	TouchGranularity time.Duration
}

// retention is how long the sessions bucket keeps a key not written: the
// topology's, which no setting changes.
var retention = topology.New("").EventMaxAge

// minTTLGrace is the least non-zero TTLGrace: the server's per-message TTL
// counts in whole seconds.
const minTTLGrace = time.Second

// LoadConfig reads the reaper's variables, recording every violation in e
// so that the caller reports them all at once with e.Err().
func LoadConfig(e *servicekit.Env) Config {
	c := Config{
		MaxAge:      e.Duration("AIGOV_SESSION_MAX_AGE"),
		IdleTimeout: e.Duration("AIGOV_SESSION_IDLE_TIMEOUT"),
		Interval:    e.Duration("AIGOV_REAPER_INTERVAL"),
		MaxScan:     e.Int("AIGOV_REAPER_MAX_SCAN"),
		Workers:     e.Int("AIGOV_REAPER_WORKERS"),
		SessionsMax: e.Int("AIGOV_REAPER_SESSIONS_MAX"),

		RevocationsMax: e.Int("AIGOV_REAPER_REVOCATIONS_MAX"),
		TTLGrace:       e.Duration("AIGOV_REAPER_TTL_GRACE"),

		TouchGranularity: e.DurationOr("AIGOV_REAPER_TOUCH_GRANULARITY", -1),
	}
	if path := e.String("AIGOV_REAPER_CONFIG"); path != "" {
		limits, err := LoadLimits(path)
		if err != nil {
			e.Fail("AIGOV_REAPER_CONFIG: %v", err)
		}
		c.Limits = limits
	}
	if c.TouchGranularity == -1 {
		// Unset: the default, shrunk to a tenth of the shortest idle
		// timeout so that short test and demo timeouts stay valid.
		c.TouchGranularity = DefaultTouchGranularity
		for _, d := range c.idleTimeouts() {
			c.TouchGranularity = min(c.TouchGranularity, d/touchGranularityDivisor)
		}
	}
	for _, err := range c.violations() {
		e.Fail("%w", err)
	}
	return c
}

// validate checks a Config, however it was built: LoadConfig reports its
// violations with the others, New refuses to start with any.
func (c Config) validate() error { return errors.Join(c.violations()...) }

// violations are every bound the configuration breaks, each naming its
// variable: one set of bounds, whether the Config came from the
// environment or from code.
func (c Config) violations() []error {
	var errs []error
	if c.MaxAge <= 0 {
		errs = append(errs, errors.New("AIGOV_SESSION_MAX_AGE must be positive"))
	}
	if c.IdleTimeout <= 0 {
		errs = append(errs, errors.New("AIGOV_SESSION_IDLE_TIMEOUT must be positive"))
	}
	// The sessions bucket forgets a key not written for its retention; a
	// longer idle timeout would let idle sessions vanish without being ended.
	if c.IdleTimeout >= retention {
		errs = append(errs, fmt.Errorf("AIGOV_SESSION_IDLE_TIMEOUT=%s must be shorter than the sessions bucket's retention %s", c.IdleTimeout, retention))
	}
	if c.Interval < MinInterval {
		errs = append(errs, fmt.Errorf("AIGOV_REAPER_INTERVAL=%s must be at least %s", c.Interval, MinInterval))
	}
	if c.TTLGrace != 0 && c.TTLGrace < minTTLGrace {
		errs = append(errs, fmt.Errorf("AIGOV_REAPER_TTL_GRACE=%s must be 0 (the bucket's retention) or at least %s", c.TTLGrace, minTTLGrace))
	}
	if err := c.checkGranularity(); err != nil {
		errs = append(errs, fmt.Errorf("AIGOV_REAPER_TOUCH_GRANULARITY: %w", err))
	}
	if c.MaxScan < 1 {
		errs = append(errs, fmt.Errorf("AIGOV_REAPER_MAX_SCAN=%d must be at least 1", c.MaxScan))
	}
	if c.SessionsMax < 0 || c.RevocationsMax < 0 {
		errs = append(errs, errors.New("AIGOV_REAPER_SESSIONS_MAX and AIGOV_REAPER_REVOCATIONS_MAX must not be negative"))
	}
	return errs
}

// checkGranularity keeps the write-coalescing granularity at most a tenth
// of the default idle timeout and of every rule's.
func (c Config) checkGranularity() error {
	if c.TouchGranularity < 0 {
		return fmt.Errorf("touch granularity %s is negative", c.TouchGranularity)
	}
	if c.TouchGranularity == 0 {
		return nil
	}
	for _, d := range c.idleTimeouts() {
		if c.TouchGranularity*touchGranularityDivisor > d {
			return fmt.Errorf("touch granularity %s must be at most a tenth of the idle timeout %s", c.TouchGranularity, d)
		}
	}
	return nil
}

// idleTimeouts are the positive idle timeouts: the default and each rule's.
func (c Config) idleTimeouts() []time.Duration {
	var out []time.Duration
	if c.IdleTimeout > 0 {
		out = append(out, c.IdleTimeout)
	}
	for _, l := range c.Limits {
		if l.IdleTimeout > 0 {
			out = append(out, time.Duration(l.IdleTimeout))
		}
	}
	return out
}
