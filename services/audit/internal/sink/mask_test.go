package sink

import (
	"strings"
	"testing"

	"github.com/aigov/aigov/schemas"
)

// TestMaskCoversEveryKeySpelling: no spelling or repetition of the keys on
// the way to a masked field carries its value into the rows: the decoders
// match keys ignoring case and take the last of repeated keys, and the
// stored event must not keep a shadowed copy either.
func TestMaskCoversEveryKeySpelling(t *testing.T) {
	t.Parallel()
	m, err := newMasker([]string{"prompt"}, MaskHash, testPseudonymizer(t))
	if err != nil {
		t.Fatal(err)
	}
	typ := `"type":"` + schemas.TypeDecision + `"`
	env := `{"specversion":"1.0","id":"e1","source":"s",` + typ + `,"time":"2026-11-25T10:15:30.25Z",`
	withPrompt := decisionN(4)
	withPrompt.Context = map[string]any{"prompt": "secret plan", "epochs": 3}
	dl := `{"specversion":"1.0","id":"d1","source":"aigov/audit","type":"x","Type":"` + schemas.TypeDeadLetter +
		`","time":"2026-11-25T10:15:30Z","data":{"kind":"poison","stream":"S","data":` +
		`"{\"data\":{\"context\":{\"prompt\":\"secret plan\"}}}"}}`
	cases := []struct {
		name     string
		raw      string
		decision bool
	}{
		{"plain", string(encode(t, "e1", schemas.TypeDecision, decidedAt, withPrompt)), true},
		{"Context key", env + `"data":{"request_id":"r","decision":"allow","Context":{"prompt":"secret plan"}}}`, true},
		{"Data key", env + `"Data":{"request_id":"r","decision":"allow","context":{"prompt":"secret plan"}}}`, true},
		{"escaped field name", env + `"data":{"request_id":"r","decision":"allow","context":{"pr\u006fmpt":"secret plan"}}}`, true},
		{"field name in another case", env + `"data":{"request_id":"r","decision":"allow","context":{"Prompt":"secret plan"}}}`, true},
		{"shadowed context", env + `"data":{"request_id":"r","decision":"allow","context":{"prompt":"secret plan"},"context":{}}}`, true},
		{"context then Context", env + `"data":{"request_id":"r","decision":"allow","context":{},"Context":{"prompt":"secret plan"}}}`, true},
		{"CONTEXT then Context", env + `"data":{"request_id":"r","decision":"allow","CONTEXT":{},"Context":{"prompt":"secret plan"}}}`, true},
		{"data then Data", env + `"data":{"request_id":"r","decision":"allow"},"Data":{"request_id":"r","decision":"allow","context":{"prompt":"secret plan"}}}`, true},
		{"shadowed data", env + `"data":{"request_id":"r","decision":"allow","context":{"prompt":"secret plan"}},"data":{"request_id":"r","decision":"allow"}}`, true},
		{"dead letter named by a Type key", dl, false},
	}
	md := meta{Subject: "aigov.decision.model.retrain", Stream: "AIGOV_DECISIONS", Seq: 9}
	for _, c := range cases {
		// Many runs: the masker walks maps, whose order varies.
		for range 20 {
			got := decode(m.event([]byte(c.raw)), md, "audit-decisions", false)
			if c.decision && got.decision == nil {
				t.Fatalf("%s: not decoded as a decision: %s", c.name, got.log.InvalidReason)
			}
			if strings.Contains(got.log.Data, "secret plan") ||
				(got.decision != nil && strings.Contains(got.decision.Context, "secret plan")) {
				t.Fatalf("%s: the masked value reached the rows: %s", c.name, got.log.Data)
			}
		}
	}
}

func TestContainsFold(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		s, w string
		want bool
	}{
		{`{"prompt":1}`, "prompt", true},
		{`{"PROMPT":1}`, "prompt", true},
		{`{"pRoMpT":1}`, "prompt", true},
		{`{"promp":1, "p": "Prompx", "xprompt"}`, "prompt", true},
		{`{"promp":1, "p": "Prompx"}`, "prompt", false},
		{`ppppppppprompt`, "prompt", true},
		{`PPPPPPPPPROMPT`, "prompt", true},
		{`pPpPpPpPpromp`, "prompt", false},
		{``, "prompt", false},
		{`prom`, "prompt", false},
		{`{"dataset_path":1}`, "dataset_path", true},
		{`{"_x":1}`, "_x", true},
	} {
		if got := containsFold([]byte(c.s), c.w); got != c.want {
			t.Errorf("containsFold(%q, %q) = %v, want %v", c.s, c.w, got, c.want)
		}
	}
}

// BenchmarkDecodeMasked is the writer's decoding of one decision with
// masking configured: an event whose context holds a masked field (parsed,
// masked and re-encoded), and one that names none (scanned only).
func BenchmarkDecodeMasked(b *testing.B) {
	m, err := newMasker([]string{"prompt"}, MaskHash, testPseudonymizer(b))
	if err != nil {
		b.Fatal(err)
	}
	withPrompt := decisionN(4)
	withPrompt.Context = map[string]any{"prompt": "summarise the quarterly plan", "epochs": 3}
	md := meta{Subject: "aigov.decision.model.retrain", Stream: "AIGOV_DECISIONS", Seq: 9}
	for _, c := range []struct {
		name string
		raw  []byte
	}{
		{"field present", encode(b, "e1", schemas.TypeDecision, decidedAt, withPrompt)},
		{"field absent", encode(b, "e2", schemas.TypeDecision, decidedAt, decisionN(5))},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if d := decode(m.event(c.raw), md, "audit-decisions", false); d.decision == nil {
					b.Fatal("not a decision")
				}
			}
		})
	}
}
