package schemas

import (
	"bytes"
	"testing"
	"time"
)

type benchData struct {
	Name    string            `json:"name"`
	Count   int               `json:"count"`
	Tags    map[string]string `json:"tags"`
	Note    string            `json:"note,omitempty"`
	Payload []byte            `json:"payload,omitempty"`
}

// NewEventMessage must produce exactly what NewEvent and EventMessage do:
// the signature covers these bytes and verifiers re-parse them.
func TestNewEventMessageSameBytes(t *testing.T) {
	at := time.Date(2026, 12, 3, 17, 4, 5, 123456789, time.FixedZone("x", 3600))
	odd := "a<b>&\"c\\d\n\u2028é\x7f"
	for _, c := range []struct {
		id, source, typ, subject string
		at                       time.Time
		data                     any
	}{
		{"id-1", "aigov/policy", TypeDecision, `Model::"m1"`, at, benchData{Name: "x", Count: 3, Tags: map[string]string{"b": "<2>", "a": "1"}}},
		{odd, odd, odd, odd, at, benchData{Name: odd, Note: odd, Payload: []byte{0, 1, 2}}},
		{"id-2", "src", TypeRequest, "", time.Time{}, map[string]any{"z": 1.5, "a": []any{"<", nil, true}}},
		{"id-3", "src", TypeRequest, "", at, nil},
		{"id-4", "src", TypeRequest, "s", at.In(time.UTC), "plain"},
	} {
		ev, err := NewEvent(c.id, c.source, c.typ, c.at, c.data)
		if err != nil {
			t.Fatal(err)
		}
		ev.Subject = c.subject
		want, err := EventMessage("subj.x", ev)
		if err != nil {
			t.Fatal(err)
		}
		got, err := NewEventMessage("subj.x", c.id, c.source, c.typ, c.subject, c.at, c.data)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Data, want.Data) {
			t.Errorf("body differs:\n got %s\nwant %s", got.Data, want.Data)
		}
		if got.Subject != want.Subject || got.Header.Get(HeaderMsgID) != want.Header.Get(HeaderMsgID) || len(got.Header) != len(want.Header) {
			t.Errorf("message differs: %v %v / %v %v", got.Subject, got.Header, want.Subject, want.Header)
		}
	}
	if m, err := NewEventMessage("s", "", "src", TypeRequest, "", at, 1); err != nil || m.Header.Get(HeaderMsgID) == "" {
		t.Errorf("empty id: %v, %v", m, err)
	}
	if _, err := NewEventMessage("s", "i", "src", TypeRequest, "", time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), 1); err == nil {
		t.Error("a time beyond year 9999 encoded")
	}
	if _, err := NewEventMessage("s", "i", "src", TypeRequest, "", at, func() {}); err == nil {
		t.Error("unencodable data encoded")
	}
}

var benchEventData = benchData{Name: "principal-17", Count: 42, Tags: map[string]string{"team": "ml", "env": "prod", "model": "llama-3-70b"},
	Note: "a decision's data is a few hundred bytes of nested fields, like this one, with some text in it to scan"}

func BenchmarkEventMessage(b *testing.B) {
	at := time.Now()
	b.Run("NewEvent+EventMessage", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			ev, err := NewEvent("0b6f3f4e-8d7c-4d8a-9c1e-6f5a4b3c2d1e", "aigov/policy", TypeDecision, at, benchEventData)
			if err != nil {
				b.Fatal(err)
			}
			ev.Subject = `Model::"m1"`
			if _, err := EventMessage("aigov.decision.model.invoke", ev); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("NewEventMessage", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := NewEventMessage("aigov.decision.model.invoke", "0b6f3f4e-8d7c-4d8a-9c1e-6f5a4b3c2d1e", "aigov/policy", TypeDecision, `Model::"m1"`, at, benchEventData); err != nil {
				b.Fatal(err)
			}
		}
	})
}
