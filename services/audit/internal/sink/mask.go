package sink

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	gojson "github.com/goccy/go-json"

	"github.com/aigov/aigov/schemas"
	"github.com/aigov/aigov/services/audit/privacy"
)

// Masking modes (AIGOV_AUDIT_MASK_MODE).
const (
	// MaskHash replaces a value with "hmac-sha256:<hex>", the keyed
	// pseudonym of its JSON text (privacy.Pseudonymizer.Value), so equal
	// values still compare equal in SQL without being readable, and a
	// dictionary attack needs the pseudonym key (AIGOV_AUDIT_PSEUDONYM_KEY).
	MaskHash = "hash"
	// MaskRedact replaces a value with "***".
	MaskRedact = "redact"
)

// masker hides configured context fields of an event before anything is
// persisted: the row hash, the raw log and the typed tables all see the
// masked event only.
type masker struct {
	fields map[string]bool // lower case
	lower  []string        // the same names, for scanning
	mode   string
	pseud  privacy.Pseudonymizer
}

// errNoPseudonymKey is newMasker's error for hash masking without a key.
var errNoPseudonymKey = errors.New("mask mode hash needs a pseudonym key (AIGOV_AUDIT_PSEUDONYM_KEY): an unkeyed hash of an email is reversed by a dictionary")

func newMasker(fields []string, mode string, pseud privacy.Pseudonymizer) (masker, error) {
	if mode != MaskHash && mode != MaskRedact {
		return masker{}, fmt.Errorf("mask mode %q must be %s or %s", mode, MaskHash, MaskRedact)
	}
	m := masker{fields: map[string]bool{}, mode: mode, pseud: pseud}
	for _, f := range fields {
		if f = asciiLower(strings.TrimSpace(f)); f != "" && !m.fields[f] {
			m.fields[f] = true
			m.lower = append(m.lower, f)
		}
	}
	if len(m.fields) > 0 && mode == MaskHash && !pseud.Enabled() {
		return masker{}, errNoPseudonymKey
	}
	return m, nil
}

func (m masker) value(raw json.RawMessage) json.RawMessage {
	if m.mode == MaskRedact {
		return json.RawMessage(`"***"`)
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		buf.Reset()
		buf.Write(raw)
	}
	return json.RawMessage(`"` + m.pseud.Value(buf.Bytes()) + `"`)
}

// event masks the fields of data.context in a CloudEvent, and of the
// original event a dead letter carries. The decoders match keys ignoring
// case and take the last of repeated keys, so every key that is "data" or
// "context" ignoring case is masked, whichever one a reader takes; and an
// event that may hold a masked field is always re-encoded, which keeps one
// copy of a repeated key, so no shadowed copy stays in the stored bytes.
// It returns raw unchanged when no field can be masked or raw is not a JSON
// object.
func (m masker) event(raw []byte) []byte {
	if len(m.fields) == 0 || !m.mayHold(raw) {
		return raw
	}
	var ev map[string]json.RawMessage
	if gojson.Unmarshal(raw, &ev) != nil {
		return raw
	}
	deadLetter := isDeadLetter(ev)
	for dk, dv := range ev {
		if !strings.EqualFold(dk, "data") {
			continue
		}
		var data map[string]json.RawMessage
		if gojson.Unmarshal(dv, &data) != nil {
			continue
		}
		for k, v := range data {
			switch {
			case strings.EqualFold(k, "context"):
				if masked, ok := m.context(v); ok {
					data[k] = masked
				}
			case deadLetter && strings.EqualFold(k, "data"):
				// A dead letter's original body is an event too.
				var s string
				if gojson.Unmarshal(v, &s) == nil {
					if b, err := gojson.Marshal(string(m.event([]byte(s)))); err == nil {
						data[k] = b
					}
				}
			}
		}
		if d, err := gojson.Marshal(data); err == nil {
			ev[dk] = d
		}
	}
	out, err := gojson.Marshal(ev)
	if err != nil {
		return raw
	}
	return out
}

// isDeadLetter reports whether any key that is "type" ignoring case names
// the dead-letter type.
func isDeadLetter(ev map[string]json.RawMessage) bool {
	for k, v := range ev {
		var t string
		if strings.EqualFold(k, "type") && gojson.Unmarshal(v, &t) == nil && t == schemas.TypeDeadLetter {
			return true
		}
	}
	return false
}

// mayHold reports whether raw may hold a masked field: it names one in
// any case, or holds a \u escape, which could spell one. Most events do
// neither, and this saves parsing them.
func (m masker) mayHold(raw []byte) bool {
	if len(m.fields) == 0 {
		return false
	}
	for _, f := range m.lower {
		if containsFold(raw, f) {
			return true
		}
	}
	return bytes.Contains(raw, []byte(`\u`))
}

// asciiLower lower-cases the ASCII letters of s. Field names match context
// keys ignoring ASCII case only: the same rule mayHold scans with.
func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// containsFold reports whether s contains the ASCII-lower-case word w
// ignoring ASCII case.
func containsFold(s []byte, w string) bool {
	n := len(w)
	if n == 0 {
		return true
	}
	lo, up := w[0], w[0]
	if lo >= 'a' && lo <= 'z' {
		up = lo - 'a' + 'A'
	}
	nextUp := -1 // the next upper-case first letter at or after i; -2: none left
	for i := 0; i+n <= len(s); i++ {
		j := bytes.IndexByte(s[i:], lo)
		if j >= 0 {
			j += i
		}
		if up != lo && nextUp != -2 {
			if nextUp < i {
				if k := bytes.IndexByte(s[i:], up); k < 0 {
					nextUp = -2
				} else {
					nextUp = i + k
				}
			}
			if nextUp >= 0 && (j < 0 || nextUp < j) {
				j = nextUp
			}
		}
		if j < 0 || j+n > len(s) {
			return false
		}
		i = j
		if equalFoldASCII(s[i:i+n], w) {
			return true
		}
	}
	return false
}

// equalFoldASCII reports whether b is the ASCII-lower-case w in any case.
func equalFoldASCII(b []byte, w string) bool {
	for k := range b {
		c := b[k]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != w[k] {
			return false
		}
	}
	return true
}

func (m masker) context(raw json.RawMessage) (json.RawMessage, bool) {
	var c map[string]json.RawMessage
	if gojson.Unmarshal(raw, &c) != nil {
		return nil, false
	}
	changed := false
	for k, v := range c {
		if m.fields[asciiLower(k)] {
			c[k], changed = m.value(v), true
		}
	}
	if !changed {
		return nil, false
	}
	out, err := gojson.Marshal(c)
	if err != nil {
		return nil, false
	}
	return out, true
}
