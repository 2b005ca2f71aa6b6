package sessions

import (
	"time"

	"github.com/aigov/aigov/services/servicekit/sessionlimits"
)

// The limits file's shape and rules are shared with authn and policy,
// which check max age too (package sessionlimits).
type (
	// Limit is one rule of the limits file (AIGOV_REAPER_CONFIG).
	Limit = sessionlimits.Limit
	// Duration is a time.Duration written as a Go duration string.
	Duration = sessionlimits.Duration
)

// MaxLimitRules bounds the rules of a limits file.
const MaxLimitRules = sessionlimits.MaxRules

// LoadLimits reads the limits file at path.
func LoadLimits(path string) ([]Limit, error) { return sessionlimits.Load(path) }

// limits are the reaper's defaults with the rules of its limits file.
func (c Config) limits() sessionlimits.Limits {
	return sessionlimits.Limits{MaxAge: c.MaxAge, IdleTimeout: c.IdleTimeout, Rules: c.Limits}
}

// limitsFor returns the max age and idle timeout of a session: those of
// the first matching rule, else the defaults.
func (c Config) limitsFor(r Record) (maxAge, idle time.Duration) {
	return c.limits().For(r.Issuer, r.PrincipalType, r.Groups)
}

// expired applies the session's limits to its record at now.
func (c Config) expired(r Record, now time.Time) (reason string, maxAge, idle time.Duration, ok bool) {
	maxAge, idle = c.limitsFor(r)
	reason, ok = r.Expired(now, maxAge, idle)
	return reason, maxAge, idle, ok
}

// recordTTL is the per-key TTL of a session record written at now: until
// the session is due to end, plus TTLGrace so that the expiry pass, not the
// TTL, ends it even across a reaper outage shorter than the grace; with no
// grace, the bucket's retention.
func (c Config) recordTTL(r Record, now time.Time) time.Duration {
	maxAge, idle := c.limitsFor(r)
	start := r.Start()
	if c.TTLGrace == 0 {
		return retention
	}
	left := min(start.Add(maxAge).Sub(now), r.LastSeen.Add(idle).Sub(now))
	return max(left, 0) + c.TTLGrace
}
