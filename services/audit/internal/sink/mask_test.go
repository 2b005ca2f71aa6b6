package sink

import (
	"reflect"
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
)

// TestDecodeMaskedAgrees: decodeMasked, which skips the masker for
// decisions whose context names no masked field, writes exactly what
// masking the whole event and then decoding it writes; and no spelling of
// a masked field's key gets its value past the mask.
func TestDecodeMaskedAgrees(t *testing.T) {
	t.Parallel()
	m, err := newMasker([]string{"prompt"}, MaskHash)
	if err != nil {
		t.Fatal(err)
	}
	typ := `"type":"` + schemas.TypeDecision + `"`
	env := `{"specversion":"1.0","id":"e1","source":"s",` + typ + `,"time":"2026-11-25T10:15:30.25Z",`
	plain := decisionN(3)
	withPrompt := decisionN(4)
	withPrompt.Context = map[string]any{"prompt": "secret plan", "epochs": 3}
	cases := []struct {
		name   string
		raw    []byte
		masked bool // the stored event must not hold the secret
	}{
		{"no masked field", encode(t, "e0", schemas.TypeDecision, decidedAt, plain), false},
		{"masked field", encode(t, "e1", schemas.TypeDecision, decidedAt, withPrompt), true},
		{"field name elsewhere only", []byte(env + `"data":{"request_id":"r","decision":"allow","reason":"prompt","context":{"x":1}}}`), false},
		{"Context key in another case", []byte(env + `"data":{"request_id":"r","decision":"allow","Context":{"prompt":"secret plan"}}}`), true},
		{"Data key in another case", []byte(env + `"Data":{"request_id":"r","decision":"allow","context":{"prompt":"secret plan"}}}`), true},
		{"escaped key", []byte(env + `"data":{"request_id":"r","decision":"allow","context":{"pr\u006fmpt":"secret plan"}}}`), true},
	}
	md := meta{Subject: "aigov.decision.model.retrain", Stream: "AIGOV_DECISIONS", Seq: 9}
	for _, c := range cases {
		got := decodeMasked(c.raw, md, "audit-decisions", false, m)
		want := decode(m.event(c.raw), md, "audit-decisions", false)
		if !reflect.DeepEqual(normalizeDecoded(got), normalizeDecoded(want)) {
			t.Errorf("%s:\n got %+v\nwant %+v", c.name, got, want)
		}
		if got.decision == nil {
			t.Fatalf("%s: not decoded as a decision: %+v", c.name, got.log)
		}
		leaked := strings.Contains(got.log.Data, "secret plan") || strings.Contains(got.decision.Context, "secret plan")
		if c.masked && leaked {
			t.Errorf("%s: the masked value reached the rows: %s", c.name, got.log.Data)
		}
	}
}

// normalizeDecoded compares decoded rows by value.
func normalizeDecoded(d decoded) decoded {
	if d.decision != nil {
		r := normalize(*d.decision)
		d.decision = &r
	}
	return d
}
