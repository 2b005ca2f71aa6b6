package sessions

import (
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/aigov/aigov/schemas"
)

// Record is a live session as the reaper keeps it: JSON under its session
// key in the sessions bucket. It is deleted when the session ends.
type Record struct {
	// SessionKey is schemas.SessionKey of the session, also the KV key.
	SessionKey string `json:"session_key"`
	// Issuer and Subject identify the principal at its IdP.
	Issuer  string `json:"issuer"`
	Subject string `json:"subject"`
	// PrincipalID is the issuer-scoped principal id (schemas.PrincipalID).
	PrincipalID string `json:"principal_id"`
	// PrincipalType and Groups select the session's limits (Config.Limits).
	PrincipalType string   `json:"principal_type,omitempty"`
	Groups        []string `json:"groups,omitempty"`
	// SessionID is the IdP's `sid`, when it sends one.
	SessionID string `json:"sid,omitempty"`
	// AuthTime is the token's auth_time, when it has one; max age is
	// measured from it.
	AuthTime *time.Time `json:"auth_time,omitempty"`
	// FirstSeen is when the reaper first saw the session; max age is
	// measured from it when there is no auth_time.
	FirstSeen time.Time `json:"first_seen"`
	// LastSeen is when the reaper last saw a request of the session; the
	// idle timeout is measured from it.
	LastSeen time.Time `json:"last_seen"`
	// LastTokenFingerprint is schemas.Fingerprint of the latest token.
	LastTokenFingerprint string `json:"last_token_fingerprint"`
	// LastRequestID is the latest request counted, so that a redelivered
	// verified event is not counted twice.
	LastRequestID string `json:"last_request_id"`
	// TokenCount is how many verified requests of this session were
	// written; requests coalesced by Config.TouchGranularity are not
	// counted. A redelivered event is not counted again when it follows its
	// first delivery directly (LastRequestID), which covers a crash between
	// the write and the ack.
	TokenCount int64 `json:"token_count"`
	// TokenFingerprints are the distinct tokens seen, newest last, at most
	// maxTokens: the session's issuance and refresh footprint.
	TokenFingerprints []string `json:"token_fingerprints,omitempty"`
}

// maxTokens bounds the token fingerprints a record keeps.
const maxTokens = 32

// newToken reports whether fp is a token not seen in the session yet.
func (r Record) newToken(fp string) bool {
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
		FirstSeen:            now,
		LastSeen:             now,
		LastTokenFingerprint: v.TokenFingerprint,
		LastRequestID:        v.RequestID,
		TokenCount:           1,
	}
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
func (r *Record) seen(v schemas.Verified, now time.Time) bool {
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
	if r.newToken(v.TokenFingerprint) {
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

// Expired reports whether the session is over at now, and why: max age
// (schemas.ReasonMaxAge) wins over the idle timeout (schemas.ReasonIdle).
func (r Record) Expired(now time.Time, maxAge, idle time.Duration) (string, bool) {
	start := r.FirstSeen
	if r.AuthTime != nil {
		start = *r.AuthTime
	}
	switch {
	case now.Sub(start) >= maxAge:
		return schemas.ReasonMaxAge, true
	case now.Sub(r.LastSeen) >= idle:
		return schemas.ReasonIdle, true
	default:
		return "", false
	}
}

// event is the session event describing the record.
func (r Record) event(reason, requestID string) schemas.SessionEvent {
	return schemas.SessionEvent{
		SessionKey:       r.SessionKey,
		Issuer:           r.Issuer,
		Subject:          r.Subject,
		PrincipalID:      r.PrincipalID,
		SessionID:        r.SessionID,
		AuthTime:         r.AuthTime,
		FirstSeen:        r.FirstSeen,
		LastSeen:         r.LastSeen,
		Reason:           reason,
		RequestID:        requestID,
		TokenFingerprint: r.LastTokenFingerprint,
	}
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
