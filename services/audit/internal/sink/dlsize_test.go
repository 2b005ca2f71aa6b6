package sink

import (
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/aigov/aigov/schemas"
)

// A dead letter's body is cut to fit, text at a character and base64 at a
// quantum, with the original size recorded; one that fits is untouched.
func TestDeadLetterEventFits(t *testing.T) {
	t.Parallel()
	const limit = 64 << 10
	bin := make([]byte, 100<<10)
	for i := range bin {
		bin[i] = byte(i*7) | 0x80
	}
	for _, tc := range []struct {
		name string
		dl   schemas.DeadLetter
		size int
	}{
		{"escaped text", schemas.DeadLetter{Data: strings.Repeat("<é\u2028\"", 20<<10)}, 20 << 10 * 7},
		{"base64", schemas.DeadLetter{DataBase64: base64.StdEncoding.EncodeToString(bin)}, len(bin)},
		{"fits", schemas.DeadLetter{Data: "small"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.dl.Kind, tc.dl.Stream, tc.dl.Reason = schemas.DeadLetterPoison, "AIGOV_DECISIONS", "test"
			raw, err := deadLetterEvent("id", tc.dl, time.Now(), limit)
			if err != nil {
				t.Fatal(err)
			}
			if len(raw) > limit {
				t.Fatalf("%d bytes, want at most %d", len(raw), limit)
			}
			ev, err := schemas.ParseEvent(raw)
			if err != nil {
				t.Fatal(err)
			}
			var got schemas.DeadLetter
			if err := ev.DecodeData(&got); err != nil {
				t.Fatal(err)
			}
			if got.DataBytes != tc.size {
				t.Errorf("data_bytes %d, want %d", got.DataBytes, tc.size)
			}
			if tc.size == 0 {
				if got.Data != tc.dl.Data || strings.Contains(got.Reason, "truncated") {
					t.Errorf("a dead letter that fits was changed: %+v", got)
				}
				return
			}
			if !strings.HasPrefix(tc.dl.Data, got.Data) || !strings.HasPrefix(tc.dl.DataBase64, got.DataBase64) ||
				len(got.Data)+len(got.DataBase64) < limit/8 || !strings.Contains(got.Reason, "truncated") {
				t.Errorf("cut to %d+%d bytes (%q): want a prefix of the body, most of the limit, and the reason saying so",
					len(got.Data), len(got.DataBase64), got.Reason)
			}
			if got.DataBase64 != "" {
				if _, err := base64.StdEncoding.DecodeString(got.DataBase64); err != nil {
					t.Errorf("cut base64 does not decode: %v", err)
				}
			}
		})
	}
}
