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

// TestDecisionBodyMatches: decisionBody has every field of schemas.Decision,
// with the same JSON name and type, except the context it keeps raw.
func TestDecisionBodyMatches(t *testing.T) {
	t.Parallel()
	want, got := reflect.TypeOf(schemas.Decision{}), reflect.TypeOf(decisionBody{})
	if want.NumField() != got.NumField() {
		t.Fatalf("decisionBody has %d fields, schemas.Decision %d", got.NumField(), want.NumField())
	}
	for i := range want.NumField() {
		w, g := want.Field(i), got.Field(i)
		if w.Name != g.Name || w.Tag.Get("json") != g.Tag.Get("json") {
			t.Errorf("field %d: decisionBody %s %q, schemas.Decision %s %q", i, g.Name, g.Tag.Get("json"), w.Name, w.Tag.Get("json"))
		}
		if w.Name != "Context" && w.Type != g.Type {
			t.Errorf("field %s: decisionBody type %s, schemas.Decision %s", w.Name, g.Type, w.Type)
		}
	}
}
