package sessions

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"
)

// MaxLimitRules bounds the rules of a limits file.
const MaxLimitRules = 1000

// Limit is one rule of the limits file (AIGOV_REAPER_CONFIG). Empty
// selector fields match anything; the first rule matching a session wins,
// and a zero duration keeps the default (AIGOV_SESSION_MAX_AGE,
// AIGOV_SESSION_IDLE_TIMEOUT).
type Limit struct {
	// Issuer is the exact issuer URL the rule applies to.
	Issuer string `json:"issuer,omitempty"`
	// PrincipalType is User or Workload.
	PrincipalType string `json:"principal_type,omitempty"`
	// Group is a groups claim value the principal must have.
	Group string `json:"group,omitempty"`
	// MaxAge bounds the session from auth_time (or first seen).
	MaxAge Duration `json:"max_age,omitempty"`
	// IdleTimeout ends the session after this long without a request.
	IdleTimeout Duration `json:"idle_timeout,omitempty"`
}

// Duration is a time.Duration written as a Go duration string ("90m").
type Duration time.Duration

// UnmarshalJSON reads a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string such as \"90m\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %s is negative", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// limitsFile is the JSON document AIGOV_REAPER_CONFIG names.
type limitsFile struct {
	Limits []Limit `json:"limits"`
}

// LoadLimits reads the limits file at path.
func LoadLimits(path string) ([]Limit, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read reaper config %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f limitsFile
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse reaper config %s: %w", path, err)
	}
	if len(f.Limits) > MaxLimitRules {
		return nil, fmt.Errorf("reaper config %s: %d limit rules, at most %d", path, len(f.Limits), MaxLimitRules)
	}
	var errs []error
	for i, l := range f.Limits {
		if l.PrincipalType != "" && l.PrincipalType != "User" && l.PrincipalType != "Workload" {
			errs = append(errs, fmt.Errorf("limits[%d].principal_type %q must be User or Workload", i, l.PrincipalType))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("reaper config %s: %w", path, err)
	}
	return f.Limits, nil
}

// limitsFor returns the max age and idle timeout of a session: those of
// the first matching rule, else the defaults.
func (c Config) limitsFor(r Record) (maxAge, idle time.Duration) {
	maxAge, idle = c.MaxAge, c.IdleTimeout
	for _, l := range c.Limits {
		if (l.Issuer != "" && l.Issuer != r.Issuer) ||
			(l.PrincipalType != "" && l.PrincipalType != r.PrincipalType) ||
			(l.Group != "" && !slices.Contains(r.Groups, l.Group)) {
			continue
		}
		if l.MaxAge > 0 {
			maxAge = time.Duration(l.MaxAge)
		}
		if l.IdleTimeout > 0 {
			idle = time.Duration(l.IdleTimeout)
		}
		return maxAge, idle
	}
	return maxAge, idle
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
	start := r.FirstSeen
	if r.AuthTime != nil {
		start = *r.AuthTime
	}
	if c.TTLGrace == 0 {
		return c.Topology().EventMaxAge
	}
	left := min(start.Add(maxAge).Sub(now), r.LastSeen.Add(idle).Sub(now))
	return max(left, 0) + c.TTLGrace
}
