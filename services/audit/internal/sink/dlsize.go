package sink

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/aigov/aigov/schemas"
)

// deadLetterHeadroom is what a dead letter's headers (its Nats-Msg-Id) may
// take of the stream's MaxMsgSize, which bounds headers and body together.
const deadLetterHeadroom = 4 << 10

// deadLetterEvent encodes dl's event in at most limit bytes. A body that
// does not fit is cut (at a character, or a base64 quantum) to what does,
// and its original size is recorded in DataBytes and the reason: a dead
// letter the stream refuses would be retried without end, and the message
// it reports never audited.
func deadLetterEvent(id string, dl schemas.DeadLetter, at time.Time, limit int) ([]byte, error) {
	raw, err := encodeDeadLetter(id, dl, at)
	if err != nil || len(raw) <= limit {
		return raw, err
	}
	size := len(dl.Data)
	if dl.DataBase64 != "" {
		size = base64.StdEncoding.DecodedLen(len(dl.DataBase64)) - strings.Count(dl.DataBase64[max(0, len(dl.DataBase64)-2):], "=")
	}
	body, b64 := dl.Data, dl.DataBase64
	dl.Data, dl.DataBase64, dl.DataBytes = "", "", size
	dl.Reason = truncate(dl.Reason, 1000) + fmt.Sprintf(" (data truncated: the body was %d bytes)", size)
	bare, err := encodeDeadLetter(id, dl, at)
	if err != nil {
		return nil, err
	}
	// What the body may take once encoded; a few bytes for its field name.
	budget := limit - len(bare) - len(`,"data_base64":""`)
	if budget > 0 {
		if b64 != "" {
			dl.DataBase64 = b64[:min(len(b64), budget/4*4)]
		} else {
			dl.Data = jsonPrefix(body, budget)
		}
	}
	return encodeDeadLetter(id, dl, at)
}

func encodeDeadLetter(id string, dl schemas.DeadLetter, at time.Time) ([]byte, error) {
	ev, err := schemas.NewEvent(id, "aigov/audit", schemas.TypeDeadLetter, at, dl)
	if err != nil {
		return nil, err
	}
	raw, err := json.Marshal(ev)
	if err != nil {
		return nil, fmt.Errorf("encode dead letter: %w", err)
	}
	return raw, nil
}

// jsonPrefix is the longest prefix of the valid UTF-8 s, cut at a
// character, that encoding/json writes as a string in at most n bytes
// (quotes excluded).
func jsonPrefix(s string, n int) string {
	used := 0
	for i, r := range s {
		w := jsonWidth(r)
		if used+w > n {
			return s[:i]
		}
		used += w
	}
	return s
}

// jsonWidth is how many bytes encoding/json writes for r inside a string
// (with its default HTML escaping), or more: an overestimate only cuts a
// little more.
func jsonWidth(r rune) int {
	switch {
	case r == '"' || r == '\\' || r == '\n' || r == '\r' || r == '\t':
		return 2
	case r < 0x20 || r == '<' || r == '>' || r == '&' || r == '\u2028' || r == '\u2029' || r == utf8.RuneError:
		return 6
	}
	return utf8.RuneLen(r)
}
