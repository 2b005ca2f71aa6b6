package sink

import (
	"errors"
	"reflect"
	"testing"

	"github.com/aigov/aigov/schemas"
)

// TestParseEnvelopeAsSchemas: the writer's envelope decoder (goccy/go-json)
// accepts and rejects exactly what schemas.ParseEvent (encoding/json) does.
func TestParseEnvelopeAsSchemas(t *testing.T) {
	t.Parallel()
	docs := []string{
		`{"specversion":"1.0","id":"a","source":"s","type":"t","time":"2026-11-25T10:00:00.123456Z","data":{"x":1}}`,
		`{"SpecVersion":"1.0","ID":"a","Source":"s","TYPE":"t","time":"2026-11-25T10:00:00Z","data":{"x":1}}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","time":"2026-11-25T10:00:00Z","data":{"x":1},"extra":[1,{"y":null}]}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","time":"2026-11-25T10:00:00Z","data":null}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","time":"2026-11-25T10:00:00Z"}`,
		`{"specversion":"0.3","id":"a","source":"s","type":"t","time":"2026-11-25T10:00:00Z","data":{}}`,
		`{"specversion":"1.0","id":"","source":"s","type":"t","time":"2026-11-25T10:00:00Z","data":{}}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","time":"yesterday","data":{}}`,
		`{"specversion":"1.0","id":"a","source":"s","type":7,"time":"2026-11-25T10:00:00Z","data":{}}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","time":"2026-11-25T10:00:00Z","data":{"x":1}`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","time":"2026-11-25T10:00:00Z","data":{"x":1}} trailing`,
		`{"specversion":"1.0","id":"a","source":"s","type":"t","time":"2026-11-25T10:00:00Z","data":{"x":tru}}`,
		`[]`, `null`, `not json`, ``,
	}
	for _, doc := range docs {
		want, wantErr := schemas.ParseEvent([]byte(doc))
		got, gotErr := parseEnvelope([]byte(doc))
		if (wantErr == nil) != (gotErr == nil) {
			t.Errorf("%s: schemas.ParseEvent error %v, parseEnvelope error %v", doc, wantErr, gotErr)
			continue
		}
		if gotErr != nil {
			if !errors.Is(gotErr, schemas.ErrInvalidEvent) {
				t.Errorf("%s: error %v does not wrap ErrInvalidEvent", doc, gotErr)
			}
			continue
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s: parseEnvelope = %+v, want %+v", doc, got, want)
		}
	}
}

// TestDecisionBodyMatches: decisionBody has every encoded field of
// schemas.Decision, with the same JSON name and type, except the context
// it keeps raw. Fields never encoded (json:"-", the reply-only wrapped
// key) are not in a stored decision, so not in decisionBody.
func TestDecisionBodyMatches(t *testing.T) {
	t.Parallel()
	encoded := func(typ reflect.Type) []reflect.StructField {
		var out []reflect.StructField
		for i := range typ.NumField() {
			if f := typ.Field(i); f.Tag.Get("json") != "-" {
				out = append(out, f)
			}
		}
		return out
	}
	want, got := encoded(reflect.TypeOf(schemas.Decision{})), encoded(reflect.TypeOf(decisionBody{}))
	if len(want) != len(got) {
		t.Fatalf("decisionBody has %d fields, schemas.Decision %d", len(got), len(want))
	}
	for i := range want {
		w, g := want[i], got[i]
		if w.Name != g.Name || w.Tag.Get("json") != g.Tag.Get("json") {
			t.Errorf("field %d: decisionBody %s %q, schemas.Decision %s %q", i, g.Name, g.Tag.Get("json"), w.Name, w.Tag.Get("json"))
		}
		if w.Name != "Context" && w.Type != g.Type {
			t.Errorf("field %s: decisionBody type %s, schemas.Decision %s", w.Name, g.Type, w.Type)
		}
	}
}

// TestQuickDecisionAgrees: the one-pass decode of a decision gives the row
// the two-pass path gives, and declines whatever that path rejects, so the
// fast path never changes what is written.
func TestQuickDecisionAgrees(t *testing.T) {
	t.Parallel()
	typ := `"type":"` + schemas.TypeDecision + `"`
	env := `{"specversion":"1.0","id":"e1","source":"s",` + typ + `,"time":"2026-11-25T10:15:30.25Z",`
	full := fixtureDecision("req-q")
	docs := []string{
		string(encode(t, "ev-1", schemas.TypeDecision, decidedAt, full)),
		string(encode(t, "ev-2", schemas.TypeDecision, decidedAt, decisionN(4))),
		env + `"data":{"request_id":"r","decision":"deny","stage":"authn","code":"token_expired"}}`,
		env + `"data":{"request_id":"r","decision":"allow","stage":"policy","context":{"big":12345678901234567890, "s" : [1, 2]}}}`,
		env + `"Data":{"Request_ID":"r","DECISION":"allow","stage":"policy"}}`,
		env + `"data":{"request_id":"r","decision":"allow","future":{"x":1}},"extension":"x"}`,
		// Rejected by the two-pass path, so declined by the quick one.
		env + `"data":{"request_id":"r","decision":"maybe"}}`,
		env + `"data":{"request_id":"","decision":"allow"}}`,
		env + `"data":{"request_id":"r","decision":"allow","policy_ids":"x"}}`,
		env + `"data":null}`,
		env + `"data":"text"}`,
		`{"specversion":"1.0","id":"e1","source":"s",` + typ + `,"time":"1969-01-01T00:00:00Z","data":{"request_id":"r","decision":"allow"}}`,
		`{"specversion":"0.3","id":"e1","source":"s",` + typ + `,"time":"2026-11-25T10:15:30Z","data":{"request_id":"r","decision":"allow"}}`,
		`{"specversion":"1.0","id":"","source":"s",` + typ + `,"time":"2026-11-25T10:15:30Z","data":{"request_id":"r","decision":"allow"}}`,
		`{"specversion":"1.0","id":"e1","source":"s","type":"dev.aigov.request","time":"2026-11-25T10:15:30Z","data":{"request_id":"r","decision":"allow"}}`,
		env + `"data":{"request_id":"r","decision":"allow"}} trailing`,
		env + `"data":{"request_id":"r","decision":"allow"}`,
		// A repeated data key: the last one counts, in both paths.
		env + `"data":{"request_id":"r","decision":"allow"},"data":{"decision":"deny"}}`,
		env + `"data":{"request_id":"r","decision":"allow","policy_ids":["p"]},"Data":{"request_id":"r2","decision":"deny"}}`,
		env + `"data":{"request_id":"r","decision":"allow"},"data":null}`,
		`not json`, ``,
	}
	md := meta{Subject: "aigov.decision.model.retrain", Stream: "AIGOV_DECISIONS", Seq: 3}
	accepted := 0
	for _, doc := range docs {
		var want decisionRow
		ev, err := parseEnvelope([]byte(doc))
		if err == nil {
			want, err = decisionOf(ev, md)
		}
		got, gotEv, ok := quickDecision([]byte(doc), md)
		if err != nil {
			if ok {
				t.Errorf("%s: quick path accepted what the two-pass path rejects (%v)", doc, err)
			}
			continue
		}
		if !ok {
			t.Errorf("%s: quick path declined a valid decision", doc)
			continue
		}
		accepted++
		if !reflect.DeepEqual(normalize(got), normalize(want)) {
			t.Errorf("%s:\nquick row    %+v\ntwo-pass row %+v", doc, got, want)
		}
		ev.Data = nil
		if !reflect.DeepEqual(gotEv, ev) {
			t.Errorf("%s: quick envelope %+v, two-pass %+v", doc, gotEv, ev)
		}
	}
	if accepted != 7 {
		t.Errorf("%d documents accepted, want the 7 valid ones", accepted)
	}
}
