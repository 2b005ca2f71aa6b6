package schemas_test

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
)

var (
	uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
	uuidV5 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

func TestParseEventErrors(t *testing.T) {
	t.Parallel()
	valid := map[string]any{
		"specversion": "1.0", "id": "req-1", "source": "platform", "type": schemas.TypeRequest,
		"time": "2026-11-25T10:00:00Z", "data": map[string]any{"action": "model.retrain"},
	}
	with := func(k string, v any) string {
		m := map[string]any{}
		for kk, vv := range valid {
			m[kk] = vv
		}
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
		b, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	cases := []struct {
		name string
		doc  string
		want []string // substrings of the error
	}{
		{"not JSON", `{"specversion":`, []string{"not a CloudEvent JSON document"}},
		{"JSON array", `[1,2]`, []string{"not a CloudEvent JSON document"}},
		{"wrong field type", with("id", 5), []string{"not a CloudEvent JSON document"}},
		{"wrong specversion", with("specversion", "0.3"), []string{`specversion "0.3"`}},
		{"missing specversion", with("specversion", nil), []string{`specversion ""`}},
		{"missing id", with("id", nil), []string{"id"}},
		{"id too long", with("id", strings.Repeat("x", schemas.MaxIDLength+1)), []string{"id longer than 128"}},
		{"missing source", with("source", nil), []string{"source"}},
		{"missing type", with("type", nil), []string{"type"}},
		{"missing data", with("data", nil), []string{"data"}},
		{"null data", strings.Replace(with("data", nil), `{`, `{"data":null,`, 1), []string{"data"}},
		{"everything missing", `{}`, []string{"specversion", "id", "source", "type", "data"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := schemas.ParseEvent([]byte(tc.doc))
			if err == nil {
				t.Fatalf("ParseEvent accepted %s", tc.doc)
			}
			if !errors.Is(err, schemas.ErrInvalidEvent) {
				t.Errorf("error %v does not wrap ErrInvalidEvent", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}

	t.Run("valid", func(t *testing.T) {
		t.Parallel()
		ev, err := schemas.ParseEvent([]byte(with("id", strings.Repeat("x", schemas.MaxIDLength))))
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type != schemas.TypeRequest || ev.Source != "platform" || !ev.Time.Equal(time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)) {
			t.Fatalf("parsed %+v", ev)
		}
	})
}

func TestDecodeData(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		data string
		ok   bool
	}{
		{"valid", `{"action":"model.retrain","resource":{"type":"Model","id":"m"}}`, true},
		{"unknown top-level field", `{"action":"model.retrain","resource":{"type":"Model","id":"m"},"actor":"x"}`, false},
		{"unknown nested field", `{"action":"model.retrain","resource":{"type":"Model","id":"m","stage":"production"}}`, false},
		{"wrong type", `{"action":5,"resource":{"type":"Model","id":"m"}}`, false},
		{"truncated", `{"action":"model.retrain"`, false},
		{"not an object", `"model.retrain"`, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var req schemas.Request
			err := schemas.Event{Type: schemas.TypeRequest, Data: json.RawMessage(tc.data)}.DecodeData(&req)
			if tc.ok {
				if err != nil {
					t.Fatal(err)
				}
				if req.Action != "model.retrain" || req.Resource != (schemas.Resource{Type: "Model", ID: "m"}) {
					t.Fatalf("decoded %+v", req)
				}
				return
			}
			if err == nil {
				t.Fatalf("DecodeData accepted %s", tc.data)
			}
			if !errors.Is(err, schemas.ErrInvalidEvent) || !strings.Contains(err.Error(), schemas.TypeRequest) {
				t.Errorf("error %v should wrap ErrInvalidEvent and name the type", err)
			}
		})
	}
}

func TestNewEvent(t *testing.T) {
	t.Parallel()
	local := time.Date(2026, 11, 25, 12, 0, 0, 0, time.FixedZone("CET", 3600))
	ev, err := schemas.NewEvent("", "src", schemas.TypeRequest, local, minRequest())
	if err != nil {
		t.Fatal(err)
	}
	if !uuidV4.MatchString(ev.ID) {
		t.Errorf("generated id %q is not a v4 UUID", ev.ID)
	}
	if ev.Time.Location() != time.UTC || !ev.Time.Equal(local) {
		t.Errorf("time = %v, want %v in UTC", ev.Time, local)
	}
	if ev.SpecVersion != schemas.SpecVersion || ev.DataContentType != "application/json" {
		t.Errorf("envelope %+v", ev)
	}
	ev2, err := schemas.NewEvent("fixed", "src", schemas.TypeRequest, local, minRequest())
	if err != nil || ev2.ID != "fixed" {
		t.Errorf("NewEvent with id: %+v, %v", ev2, err)
	}
	if _, err := schemas.NewEvent("", "src", schemas.TypeRequest, local, make(chan int)); err == nil {
		t.Error("NewEvent encoded a channel")
	}
}

func TestNewIDUnique(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 1000 {
		id := schemas.NewID()
		if !uuidV4.MatchString(id) {
			t.Fatalf("NewID() = %q, not a v4 UUID", id)
		}
		if seen[id] {
			t.Fatalf("NewID() repeated %q", id)
		}
		seen[id] = true
	}
}

func TestDerivedID(t *testing.T) {
	t.Parallel()
	// Pinned: changing the derivation would make a redelivery after an
	// upgrade escape de-duplication. Computed independently as the first
	// 16 bytes of SHA-256("decision\x00req-1") with UUID v5 bits set.
	if got, want := schemas.DerivedID("req-1", "decision"), "d87e35ce-a6d0-5f9b-a779-11cedaab4b49"; got != want {
		t.Errorf("DerivedID(req-1, decision) = %s, want %s", got, want)
	}
	seen := map[string]string{}
	for _, parent := range []string{"req-1", "req-2", "", strings.Repeat("r", 128)} {
		for _, kind := range []string{"decision", "verified", "session.started", ""} {
			id := schemas.DerivedID(parent, kind)
			if id != schemas.DerivedID(parent, kind) {
				t.Fatalf("DerivedID(%q, %q) is not stable", parent, kind)
			}
			if !uuidV5.MatchString(id) {
				t.Errorf("DerivedID(%q, %q) = %q, not UUID shaped (version 5, RFC 4122 variant)", parent, kind, id)
			}
			key := parent + "|" + kind
			if prev, dup := seen[id]; dup {
				t.Errorf("DerivedID collision: %s and %s", prev, key)
			}
			seen[id] = key
		}
	}
	// The separator keeps (parent, kind) pairs apart that concatenate alike.
	if schemas.DerivedID("b", "a") == schemas.DerivedID("", "ab") {
		t.Error("DerivedID does not separate kind from parent")
	}
}

func TestFingerprint(t *testing.T) {
	t.Parallel()
	if got, want := schemas.Fingerprint("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"; got != want {
		t.Errorf("Fingerprint(abc) = %s, want %s", got, want)
	}
	if fp := schemas.Fingerprint(token); strings.Contains(fp, token) || len(fp) != 64 {
		t.Errorf("Fingerprint(token) = %s", fp)
	}
}

func TestSessionKey(t *testing.T) {
	t.Parallel()
	login := time.Unix(1700000000, 0)
	relogin := login.Add(time.Hour)
	// Pinned values computed independently: hex of the first 16 bytes of
	// SHA-256(issuer NUL scope). The sid and auth_time keys are those of
	// earlier releases: live sessions and revocations keep their keys.
	pinned := []struct {
		name string
		p    schemas.Principal
		want string
	}{
		{"sid", schemas.Principal{SessionID: "s1", Subject: "alice"}, "9722a3b9242535e33fc57aa80c1e0e51"},
		{"auth_time", schemas.Principal{Subject: "alice", AuthTime: &login}, "3deb254856bb580d7feae9164eea5d2a"},
		{"iat", schemas.Principal{Subject: "alice", IssuedAt: login}, "9f7d0b920397635d2ba956f783cd4be2"},
		{"exp", schemas.Principal{Subject: "alice", ExpiresAt: login}, "ede94e9494afe47ead19387be66c8179"},
	}
	for _, p := range pinned {
		p.p.Issuer = "https://idp"
		if got := schemas.SessionKey(p.p); got != p.want {
			t.Errorf("%s: SessionKey(%+v) = %s, want %s", p.name, p.p, got, p.want)
		}
	}

	type claims struct {
		iss, sid, sub string
		authTime      *time.Time
		iat           time.Time
	}
	cases := []struct {
		name string
		a, b claims
		same bool
	}{
		{"sid wins over subject and auth_time", claims{"https://idp", "s1", "alice", &login, login}, claims{"https://idp", "s1", "bob", &relogin, relogin}, true},
		{"different sids differ", claims{"https://idp", "s1", "alice", nil, login}, claims{"https://idp", "s2", "alice", nil, login}, false},
		{"same sid at two issuers differs", claims{"https://idp", "s1", "alice", nil, login}, claims{"https://other", "s1", "alice", nil, login}, false},
		{"no sid: a new login is a new session", claims{"https://idp", "", "alice", &login, login}, claims{"https://idp", "", "alice", &relogin, relogin}, false},
		{"no sid: a refresh of the same login is the same session", claims{"https://idp", "", "alice", &login, login}, claims{"https://idp", "", "alice", timePtr(login), relogin}, true},
		{"no sid, no auth_time: the same token is the same session", claims{"https://idp", "", "alice", nil, login}, claims{"https://idp", "", "alice", nil, login}, true},
		{"no sid, no auth_time: a new token is a new session", claims{"https://idp", "", "alice", nil, login}, claims{"https://idp", "", "alice", nil, relogin}, false},
		{"no sid, no auth_time: subjects differ", claims{"https://idp", "", "alice", nil, login}, claims{"https://idp", "", "bob", nil, login}, false},
		{"per-token differs from auth_time session", claims{"https://idp", "", "alice", nil, login}, claims{"https://idp", "", "alice", &login, login}, false},
		{"a sid named like a subject stays apart", claims{"https://idp", "alice", "x", nil, login}, claims{"https://idp", "", "alice", nil, login}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ka := schemas.SessionKey(schemas.Principal{Issuer: tc.a.iss, SessionID: tc.a.sid, Subject: tc.a.sub, AuthTime: tc.a.authTime, IssuedAt: tc.a.iat})
			kb := schemas.SessionKey(schemas.Principal{Issuer: tc.b.iss, SessionID: tc.b.sid, Subject: tc.b.sub, AuthTime: tc.b.authTime, IssuedAt: tc.b.iat})
			if (ka == kb) != tc.same {
				t.Errorf("keys %s and %s: same=%v, want %v", ka, kb, ka == kb, tc.same)
			}
			for _, k := range []string{ka, kb} {
				if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(k) {
					t.Errorf("key %q is not 32 hex digits", k)
				}
			}
		})
	}
}

func TestSessionStart(t *testing.T) {
	t.Parallel()
	login := time.Unix(1700000000, 0)
	iat := login.Add(time.Hour)
	cases := []struct {
		name string
		p    schemas.Principal
		want time.Time
		ok   bool
	}{
		{"auth_time", schemas.Principal{SessionID: "s1", AuthTime: &login, IssuedAt: iat}, login, true},
		{"auth_time without sid", schemas.Principal{AuthTime: &login, IssuedAt: iat}, login, true},
		{"per-token session starts at iat", schemas.Principal{IssuedAt: iat}, iat, true},
		{"sid without auth_time: only the reaper knows", schemas.Principal{SessionID: "s1", IssuedAt: iat}, time.Time{}, false},
		{"nothing", schemas.Principal{}, time.Time{}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, ok := schemas.SessionStart(tc.p)
			if ok != tc.ok || !got.Equal(tc.want) {
				t.Errorf("SessionStart = %v, %v; want %v, %v", got, ok, tc.want, tc.ok)
			}
		})
	}
}
