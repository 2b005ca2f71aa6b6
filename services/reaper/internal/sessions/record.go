package sessions

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/servicekit/killswitch"
)

// Record is a live session as the reaper keeps it; the kill switch reads
// the same record, so its shape is defined once, there.
type Record = killswitch.Session

// maxTokens bounds the token fingerprints a record keeps.
const maxTokens = 32

// newToken reports whether fp is a token not seen in the session yet.
func newToken(r Record, fp string) bool {
	return fp != "" && fp != r.LastTokenFingerprint && !slices.Contains(r.TokenFingerprints, fp)
}

// newRecord starts the record of a session first seen at now.
func newRecord(v schemas.Verified, now time.Time) Record {
	p := v.Principal
	return Record{
		SessionKey:           v.SessionKey,
		Issuer:               p.Issuer,
		Subject:              p.Subject,
		PrincipalID:          p.ID,
		PrincipalType:        p.Type,
		Groups:               p.Groups,
		TokenFingerprints:    fps(v.TokenFingerprint),
		SessionID:            p.SessionID,
		AuthTime:             authTime(p.AuthTime),
		IssuedAt:             tokenStart(p),
		FirstSeen:            now,
		LastSeen:             now,
		LastTokenFingerprint: v.TokenFingerprint,
		LastRequestID:        v.RequestID,
		TokenCount:           1,
	}
}

// tokenStart is the iat of a session that is one token (schemas.SessionKey:
// no sid, no auth_time), from which max age counts; nil otherwise.
func tokenStart(p schemas.Principal) *time.Time {
	if p.SessionID != "" || authTime(p.AuthTime) != nil {
		return nil
	}
	start, ok := schemas.SessionStart(p)
	if !ok {
		return nil
	}
	u := start.UTC()
	return &u
}

// authTime normalises an absent or zero auth_time to nil.
func authTime(t *time.Time) *time.Time {
	if t == nil || t.IsZero() {
		return nil
	}
	u := t.UTC()
	return &u
}

// seen records one more verified request of the session at now. It reports
// false when the request is the one counted last: a redelivery.
func seen(r *Record, v schemas.Verified, now time.Time) bool {
	if v.RequestID == r.LastRequestID {
		return false
	}
	if now.After(r.LastSeen) {
		r.LastSeen = now
	}
	// The first auth_time seen stays: max age bounds the session from its
	// start, and a later re-authentication in the same IdP session does not
	// extend it.
	if r.AuthTime == nil {
		r.AuthTime = authTime(v.Principal.AuthTime)
	}
	if newToken(*r, v.TokenFingerprint) {
		r.TokenFingerprints = append(r.TokenFingerprints, v.TokenFingerprint)
		if len(r.TokenFingerprints) > maxTokens {
			r.TokenFingerprints = slices.Clone(r.TokenFingerprints[len(r.TokenFingerprints)-maxTokens:])
		}
	}
	r.LastTokenFingerprint = v.TokenFingerprint
	r.LastRequestID = v.RequestID
	r.TokenCount++
	return true
}

func decodeRecord(key string, b []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, fmt.Errorf("decode session record %s: %w", key, err)
	}
	if r.SessionKey != key {
		return Record{}, fmt.Errorf("decode session record %s: it names session %q", key, r.SessionKey)
	}
	return r, nil
}

func fps(fp string) []string {
	if fp == "" {
		return nil
	}
	return []string{fp}
}
