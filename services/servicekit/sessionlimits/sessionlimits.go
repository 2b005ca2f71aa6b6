// Package sessionlimits is the one definition of how long an aigov session
// may live: the default limits, the per-issuer, principal type and group
// rules of the limits file (AIGOV_REAPER_CONFIG), and the max age check.
// The reaper uses it to end sessions; authn and policy use it to deny a
// request whose session is past its max age from the token alone, so the
// limit holds while no reaper is running.
package sessionlimits

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	"github.com/aigov/aigov/schemas"
)

// DefaultMaxAge is AIGOV_SESSION_MAX_AGE's default, the same in every
// service that reads it.
const DefaultMaxAge = 8 * time.Hour

// MaxRules bounds the rules of a limits file.
const MaxRules = 1000

// Limit is one rule of the limits file. Empty selector fields match
// anything; the first rule matching a session wins, and a zero duration
// keeps the default (AIGOV_SESSION_MAX_AGE, AIGOV_SESSION_IDLE_TIMEOUT).
type Limit struct {
	// Issuer is the exact issuer URL the rule applies to.
	Issuer string `json:"issuer,omitempty"`
	// PrincipalType is User or Workload.
	PrincipalType string `json:"principal_type,omitempty"`
	// Group is a groups claim value the principal must have.
	Group string `json:"group,omitempty"`
	// MaxAge bounds the session from its start (schemas.SessionStart, or
	// when the reaper first saw it).
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

// file is the JSON document of a limits file.
type file struct {
	Limits []Limit `json:"limits"`
}

// Load reads the limits file at path: {"limits": [Limit, ...]}.
func Load(path string) ([]Limit, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read reaper config %s: %w", path, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return nil, fmt.Errorf("parse reaper config %s: %w", path, err)
	}
	if len(f.Limits) > MaxRules {
		return nil, fmt.Errorf("reaper config %s: %d limit rules, at most %d", path, len(f.Limits), MaxRules)
	}
	var errs []error
	for i, l := range f.Limits {
		if l.PrincipalType != "" && l.PrincipalType != schemas.PrincipalUser && l.PrincipalType != schemas.PrincipalWorkload {
			errs = append(errs, fmt.Errorf("limits[%d].principal_type %q must be User or Workload", i, l.PrincipalType))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("reaper config %s: %w", path, err)
	}
	return f.Limits, nil
}

// Limits are the defaults with the rules that override them.
type Limits struct {
	// MaxAge and IdleTimeout apply where no rule sets them.
	MaxAge, IdleTimeout time.Duration
	// Rules are tried in order; the first match wins.
	Rules []Limit
}

// For returns the max age and idle timeout of a session of the principal
// issuer, principalType and groups name: those of the first matching rule,
// else the defaults.
func (l Limits) For(issuer, principalType string, groups []string) (maxAge, idle time.Duration) {
	maxAge, idle = l.MaxAge, l.IdleTimeout
	for _, r := range l.Rules {
		if (r.Issuer != "" && r.Issuer != issuer) ||
			(r.PrincipalType != "" && r.PrincipalType != principalType) ||
			(r.Group != "" && !slices.Contains(groups, r.Group)) {
			continue
		}
		if r.MaxAge > 0 {
			maxAge = time.Duration(r.MaxAge)
		}
		if r.IdleTimeout > 0 {
			idle = time.Duration(r.IdleTimeout)
		}
		return maxAge, idle
	}
	return maxAge, idle
}

// MaxAgeExceeded reports whether the session is over by max age at now, the
// session having started at start.
func MaxAgeExceeded(start, now time.Time, maxAge time.Duration) bool {
	return now.Sub(start) >= maxAge
}

// MaxAgeReason is the reason text of a session ended by max age.
func MaxAgeReason(maxAge time.Duration) string {
	return fmt.Sprintf("session exceeded max age %s", maxAge)
}

// CheckToken reports whether the principal's session is past its max age
// at now, judged from the token alone (schemas.SessionStart): the check
// authn and policy make on every request, so that max age holds while the
// reaper is down. It returns the max age that applied. A session whose
// token does not tell its start (a sid without auth_time) is never over
// here; only the reaper, which saw its first request, can end it.
func (l Limits) CheckToken(p schemas.Principal, now time.Time) (maxAge time.Duration, exceeded bool) {
	start, ok := schemas.SessionStart(p)
	if !ok || l.MaxAge <= 0 {
		return 0, false
	}
	maxAge, _ = l.For(p.Issuer, p.Type, p.Groups)
	return maxAge, MaxAgeExceeded(start, now, maxAge)
}
