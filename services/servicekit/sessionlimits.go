package servicekit

import "github.com/aigov/aigov/services/servicekit/sessionlimits"

// LoadSessionLimits reads the session limits authn and policy enforce from
// the token alone (sessionlimits.Limits.CheckToken): AIGOV_SESSION_MAX_AGE
// and the rules of the limits file AIGOV_REAPER_CONFIG, the same settings
// and the same default the reaper reads, so that all three end a session at
// the same moment. The idle timeout is the reaper's alone: only it sees
// every request.
func LoadSessionLimits(e *Env) sessionlimits.Limits {
	l := sessionlimits.Limits{MaxAge: e.Duration("AIGOV_SESSION_MAX_AGE")}
	if l.MaxAge <= 0 {
		e.Fail("AIGOV_SESSION_MAX_AGE must be positive")
	}
	if path := e.String("AIGOV_REAPER_CONFIG"); path != "" {
		rules, err := sessionlimits.Load(path)
		if err != nil {
			e.Fail("AIGOV_REAPER_CONFIG: %v", err)
		}
		l.Rules = rules
	}
	return l
}
