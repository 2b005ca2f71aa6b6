package engine

import (
	"encoding/json"
	"math"
	"strconv"
	"time"

	"github.com/cedar-policy/cedar-go"

	"github.com/aigov/aigov/schemas"
)

// Trusted context keys. aigov sets them from the verified token and its own
// stores; whatever the requester put under these names is overwritten.
const (
	CtxScopes            = "scopes"
	CtxMFA               = "mfa"
	CtxSessionAgeSeconds = "session_age_seconds"
	CtxApprovals         = "approvals"
	CtxHourUTC           = "hour_utc"
	CtxWeekday           = "weekday"
)

// MaxContextDepth bounds how deeply nested objects and arrays are converted;
// a deeper value is passed to Cedar as its JSON text, so a hostile nesting
// cannot make conversion expensive and still cannot pass for a record.
const MaxContextDepth = 16

// contextRecord converts the requester's context to a Cedar record and sets
// the trusted fields over it.
//
// Conversion: strings, booleans, sets (from arrays) and records (from
// objects) map directly; integer numbers that fit in 64 bits become Long.
// Cedar has no floating point, so any other number (0.5, 1e3, 2^70) is
// passed as a String holding its JSON text: a policy comparing it with a
// Long then errors, which denies, rather than silently seeing no value.
// null is dropped, as Cedar has no null: `context has x` is false.
func contextRecord(reqCtx map[string]any, p schemas.Principal, now time.Time, approvals []string) cedar.Record {
	m := make(cedar.RecordMap, len(reqCtx)+6)
	for k, v := range reqCtx {
		if cv, ok := toValue(v, 1); ok {
			m[cedar.String(k)] = cv
		}
	}

	scopes := make([]cedar.Value, 0, len(p.Scopes))
	for _, s := range p.Scopes {
		scopes = append(scopes, cedar.String(s))
	}
	m[CtxScopes] = cedar.NewSet(scopes...)
	m[CtxMFA] = cedar.Boolean(p.MFA || schemas.AMRProvesMFA(p.AMR))
	m[CtxSessionAgeSeconds] = cedar.Long(sessionAge(p, now))
	utc := now.UTC()
	m[CtxHourUTC] = cedar.Long(utc.Hour())
	m[CtxWeekday] = cedar.String(weekdays[utc.Weekday()])
	// Approvals come from the approvals store only, never the requester.
	teams := make([]cedar.Value, 0, len(approvals))
	for _, t := range approvals {
		teams = append(teams, cedar.String(t))
	}
	m[CtxApprovals] = cedar.NewSet(teams...)
	return cedar.NewRecord(m)
}

// weekdays are lower-case English day names, indexed by time.Weekday.
var weekdays = [7]string{"sunday", "monday", "tuesday", "wednesday", "thursday", "friday", "saturday"}

// sessionAge is whole seconds since the session began as the token tells
// (schemas.SessionStart: auth_time, or the iat of a token without sid and
// auth_time, which is its own session); 0 when the token does not tell,
// and never negative when the IdP's clock runs ahead of ours.
func sessionAge(p schemas.Principal, now time.Time) int64 {
	start, ok := schemas.SessionStart(p)
	if !ok {
		return 0
	}
	return max(int64(now.Sub(start)/time.Second), 0)
}

// toValue converts one decoded JSON value. ok is false for a value that is
// dropped (null, or a Go type JSON decoding never yields).
func toValue(v any, depth int) (cedar.Value, bool) {
	if depth > MaxContextDepth {
		b, err := json.Marshal(v)
		if err != nil {
			return nil, false
		}
		return cedar.String(b), true
	}
	switch x := v.(type) {
	case nil:
		return nil, false
	case string:
		return cedar.String(x), true
	case bool:
		return cedar.Boolean(x), true
	case json.Number:
		if n, err := strconv.ParseInt(string(x), 10, 64); err == nil {
			return cedar.Long(n), true
		}
		return cedar.String(x), true
	case float64:
		// Only reached when the caller decoded without UseNumber.
		if x == math.Trunc(x) && math.Abs(x) < 1<<53 {
			return cedar.Long(int64(x)), true
		}
		return cedar.String(strconv.FormatFloat(x, 'g', -1, 64)), true
	case int:
		return cedar.Long(x), true
	case int64:
		return cedar.Long(x), true
	case []any:
		items := make([]cedar.Value, 0, len(x))
		for _, e := range x {
			if cv, ok := toValue(e, depth+1); ok {
				items = append(items, cv)
			}
		}
		return cedar.NewSet(items...), true
	case map[string]any:
		rm := make(cedar.RecordMap, len(x))
		for k, e := range x {
			if cv, ok := toValue(e, depth+1); ok {
				rm[cedar.String(k)] = cv
			}
		}
		return cedar.NewRecord(rm), true
	default:
		return nil, false
	}
}
