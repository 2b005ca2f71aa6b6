package sink

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
)

// decidedAt has sub-second precision on purpose: it must survive as
// event_time_us although DateTime holds whole seconds.
var decidedAt = time.Date(2026, 11, 25, 10, 15, 30, 123456789, time.UTC)

func fixtureDecision(requestID string) schemas.Decision {
	auth := decidedAt.Add(-time.Hour)
	verified := decidedAt.Add(-300 * time.Microsecond)
	return schemas.Decision{
		RequestID: requestID,
		Action:    "model.retrain",
		Resource:  schemas.Resource{Type: "Model", ID: "fraud-detector"},
		Context:   map[string]any{"environment": "staging", "epochs": 12},
		Principal: &schemas.Principal{
			ID: schemas.PrincipalID("https://idp.example", "alice"), Type: schemas.PrincipalUser,
			Issuer: "https://idp.example", Subject: "alice", Email: "alice@example.com",
			Groups: []string{"data-scientists", "ml-readers"}, Scopes: []string{"openid", "aigov"},
			SessionID: "sid-1", AuthTime: &auth, IssuedAt: auth, ExpiresAt: auth.Add(2 * time.Hour),
		},
		Decision:         schemas.Allow,
		Stage:            schemas.StagePolicy,
		PolicyIDs:        []string{"retrain-by-scientists"},
		PolicyVersion:    "sha256:abc",
		SessionKey:       "sk-1",
		TokenFingerprint: schemas.Fingerprint("token"),
		Timings: schemas.Timings{
			ReceivedAt: decidedAt.Add(-time.Millisecond), VerifiedAt: &verified, DecidedAt: decidedAt,
			AuthnMicros: 700, PolicyMicros: 300, TotalMicros: 1000,
		},
	}
}

func encode(t testing.TB, id, typ string, at time.Time, data any) []byte {
	t.Helper()
	ev, err := schemas.NewEvent(id, "aigov/policy", typ, at, data)
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// expectedDecision is the row the writer must produce for d.
func expectedDecision(d schemas.Decision, eventID, subject string, seq uint64) decisionRow {
	row := decisionRow{
		EventID: eventID, RequestID: d.RequestID, Source: "aigov/policy",
		Time: d.Timings.DecidedAt.Truncate(time.Second), TimeUS: uint64(d.Timings.DecidedAt.UnixMicro()),
		ReceivedAt: d.Timings.ReceivedAt.Truncate(time.Second), Action: d.Action,
		ResourceType: d.Resource.Type, ResourceID: d.Resource.ID,
		Groups: []string{}, Scopes: []string{},
		Decision: d.Decision, Code: string(d.Code), Reason: d.Reason, Stage: d.Stage,
		PolicyIDs: nonNil(d.PolicyIDs), PolicyErrors: nonNil(d.PolicyErrors), PolicyVersion: d.PolicyVersion,
		SessionKey: d.SessionKey, TokenFingerprint: d.TokenFingerprint, Context: "{}",
		AuthnUS: uint64(d.Timings.AuthnMicros), PolicyUS: uint64(d.Timings.PolicyMicros), TotalUS: uint64(d.Timings.TotalMicros),
		NATSSubject: subject, Seq: seq,
	}
	if d.Context != nil {
		b, _ := json.Marshal(d.Context)
		row.Context = string(b)
	}
	if p := d.Principal; p != nil {
		row.PrincipalID, row.PrincipalType, row.Issuer, row.Subject, row.Email = p.ID, p.Type, p.Issuer, p.Subject, p.Email
		row.Groups, row.Scopes = nonNil(p.Groups), nonNil(p.Scopes)
	}
	return row
}

// normalize drops the sub-second part and location that DateTime cannot
// hold, the way a row read back from ClickHouse looks.
func normalize(r decisionRow) decisionRow {
	r.Time, r.ReceivedAt = r.Time.UTC().Truncate(time.Second), r.ReceivedAt.UTC().Truncate(time.Second)
	return r
}

func TestDecodeDecision(t *testing.T) {
	t.Parallel()
	md := meta{Subject: "aigov.decision.model.retrain", Stream: "AIGOV_DECISIONS", Seq: 7, Stored: decidedAt}
	full := fixtureDecision("req-1")

	deny := fixtureDecision("req-2")
	deny.Principal, deny.Decision, deny.Code, deny.Stage, deny.Reason = nil, schemas.Deny, schemas.CodeMissingToken, schemas.StageAuthn, "no token"
	deny.PolicyIDs, deny.Context, deny.Action = nil, nil, ""

	noDecidedAt := fixtureDecision("req-3")
	noDecidedAt.Timings.DecidedAt = time.Time{}
	noDecidedAt.Timings.ReceivedAt = time.Time{}

	cases := []struct {
		name string
		raw  []byte
		want func(decisionRow) decisionRow
		err  string
	}{
		{name: "allow with principal", raw: encode(t, "ev-1", schemas.TypeDecision, decidedAt, full),
			want: func(decisionRow) decisionRow { return expectedDecision(full, "ev-1", md.Subject, 7) }},
		{name: "authn deny without principal takes the action from the subject", raw: encode(t, "ev-2", schemas.TypeDecision, decidedAt, deny),
			want: func(decisionRow) decisionRow {
				r := expectedDecision(deny, "ev-2", md.Subject, 7)
				r.Action = "model.retrain"
				return r
			}},
		{name: "missing decided_at falls back to the event time", raw: encode(t, "ev-3", schemas.TypeDecision, decidedAt.Add(time.Second), noDecidedAt),
			want: func(decisionRow) decisionRow {
				r := expectedDecision(noDecidedAt, "ev-3", md.Subject, 7)
				at := decidedAt.Add(time.Second)
				r.Time, r.TimeUS, r.ReceivedAt = at, uint64(at.UnixMicro()), minTime
				return r
			}},
		{name: "unknown fields from a newer producer are accepted",
			raw: []byte(`{"specversion":"1.0","id":"ev-4","source":"s","type":"` + schemas.TypeDecision + `","time":"2026-11-25T10:15:30.5Z","data":{"request_id":"r4","decision":"deny","stage":"policy","future":1,"context":{"big":12345678901234567890}}}`),
			want: func(decisionRow) decisionRow {
				at := time.Date(2026, 11, 25, 10, 15, 30, 500000000, time.UTC)
				return decisionRow{EventID: "ev-4", RequestID: "r4", Source: "s", Time: at, TimeUS: uint64(at.UnixMicro()), ReceivedAt: minTime,
					Action: "model.retrain", Groups: []string{}, Scopes: []string{}, Decision: "deny", Stage: "policy",
					PolicyIDs: []string{}, PolicyErrors: []string{}, Context: `{"big":12345678901234567890}`, NATSSubject: md.Subject, Seq: 7}
			}},
		{name: "not JSON", raw: []byte("garbage\x00\xff"), err: "not a CloudEvent"},
		{name: "wrong type", raw: encode(t, "ev-5", schemas.TypeRequest, decidedAt, full), err: "on the decisions stream"},
		{name: "bad decision value", raw: encode(t, "ev-6", schemas.TypeDecision, decidedAt, func() schemas.Decision { d := full; d.Decision = "maybe"; return d }()), err: "neither allow nor deny"},
		{name: "no request id", raw: encode(t, "ev-7", schemas.TypeDecision, decidedAt, func() schemas.Decision { d := full; d.RequestID = ""; return d }()), err: "request_id"},
		{name: "time out of range", raw: encode(t, "ev-8", schemas.TypeDecision, time.Date(1969, 1, 1, 0, 0, 0, 0, time.UTC), full), err: "outside 1970..2105"},
		{name: "data of the wrong shape", raw: []byte(`{"specversion":"1.0","id":"e","source":"s","type":"` + schemas.TypeDecision + `","time":"2026-11-25T10:15:30Z","data":{"request_id":"r","decision":"allow","policy_ids":"x"}}`), err: "decision data"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got, ev, err := decodeDecision(c.raw, md)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) || !errors.Is(err, schemas.ErrInvalidEvent) {
					t.Fatalf("err = %v, want ErrInvalidEvent containing %q", err, c.err)
				}
				inv := invalidEvent(c.raw, md, err)
				if inv.Type != TypeInvalid || inv.Data != string(c.raw) || inv.InvalidReason == "" || inv.Seq != 7 || inv.EventID == "" {
					t.Fatalf("invalid event does not keep the message: %+v", inv)
				}
				return
			}
			if err != nil {
				t.Fatalf("decodeDecision: %v", err)
			}
			if want := normalize(c.want(got)); !reflect.DeepEqual(normalize(got), want) {
				t.Fatalf("row:\n got %+v\nwant %+v", got, want)
			}
			if ev.EventID != got.EventID || ev.Data != string(c.raw) || ev.Stream != md.Stream || ev.Seq != 7 || ev.Type != schemas.TypeDecision {
				t.Fatalf("event row: %+v", ev)
			}
		})
	}
}

func TestInvalidEventIDIsStablePerMessage(t *testing.T) {
	t.Parallel()
	md := meta{Subject: "aigov.decision.x", Stream: "S", Seq: 1, Stored: decidedAt}
	a := invalidEvent([]byte("x"), md, errors.New("bad"))
	if b := invalidEvent([]byte("x"), md, errors.New("bad")); a.EventID != b.EventID {
		t.Fatal("a redelivered invalid message must keep its event id")
	}
	md.Seq = 2
	if c := invalidEvent([]byte("x"), md, errors.New("bad")); c.EventID == a.EventID {
		t.Fatal("two invalid messages must not share an event id")
	}
}

func TestDecodeSession(t *testing.T) {
	t.Parallel()
	auth := decidedAt.Add(-time.Hour)
	s := schemas.SessionEvent{
		SessionKey: "sk", Issuer: "https://idp", Subject: "alice", PrincipalID: "https://idp#alice", SessionID: "sid",
		AuthTime: &auth, FirstSeen: auth, LastSeen: decidedAt, Reason: "kill switch", By: "rita", RequestID: "r1", TokenFingerprint: "fp",
	}
	md := meta{Subject: "aigov.session.revoked", Stream: "AIGOV_SESSIONS", Seq: 3}
	got, ev, err := decodeSession(encode(t, "se-1", schemas.TypeSessionRevoked, decidedAt, s), md)
	if err != nil {
		t.Fatalf("decodeSession: %v", err)
	}
	want := sessionRow{
		EventID: "se-1", Type: "revoked", SessionKey: "sk", Issuer: "https://idp", Subject: "alice", PrincipalID: "https://idp#alice",
		SID: "sid", Reason: "kill switch", By: "rita", RequestID: "r1", TokenFingerprint: "fp", AuthTime: &auth,
		FirstSeen: auth, LastSeen: decidedAt, Time: decidedAt, TimeUS: uint64(decidedAt.UnixMicro()), NATSSubject: md.Subject, Seq: 3,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("row:\n got %+v\nwant %+v", got, want)
	}
	if ev.EventID != "se-1" || ev.Type != schemas.TypeSessionRevoked {
		t.Fatalf("event row: %+v", ev)
	}

	s.AuthTime = nil
	got, _, err = decodeSession(encode(t, "se-2", schemas.TypeSessionStarted, decidedAt, s), meta{Subject: "aigov.session.started"})
	if err != nil || got.AuthTime != nil || got.Type != "started" {
		t.Fatalf("without auth_time: %+v, %v", got, err)
	}

	for name, raw := range map[string][]byte{
		"garbage":        []byte("{"),
		"decision type":  encode(t, "se-3", schemas.TypeDecision, decidedAt, s),
		"no session key": encode(t, "se-4", schemas.TypeSessionExpired, decidedAt, schemas.SessionEvent{Subject: "x"}),
	} {
		if _, _, err := decodeSession(raw, md); !errors.Is(err, schemas.ErrInvalidEvent) {
			t.Errorf("%s: err = %v, want ErrInvalidEvent", name, err)
		}
	}
}

func BenchmarkDecodeDecision(b *testing.B) {
	raw := encode(b, "ev", schemas.TypeDecision, decidedAt, fixtureDecision("req"))
	md := meta{Subject: "aigov.decision.model.retrain", Stream: "S", Seq: 1}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := decodeDecision(raw, md); err != nil {
			b.Fatal(err)
		}
	}
}
