package sink

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/aigov/aigov/schemas"
)

// Masking modes (AIGOV_AUDIT_MASK_MODE).
const (
	// MaskHash replaces a value with "sha256:<hex>" of its JSON text, so
	// equal values still compare equal in SQL without being readable.
	MaskHash = "hash"
	// MaskRedact replaces a value with "***".
	MaskRedact = "redact"
)

// masker hides configured context fields of an event before anything is
// persisted: the row hash, the raw log and the typed tables all see the
// masked event only.
type masker struct {
	fields map[string]bool
	mode   string
}

func newMasker(fields []string, mode string) (masker, error) {
	if mode != MaskHash && mode != MaskRedact {
		return masker{}, fmt.Errorf("mask mode %q must be %s or %s", mode, MaskHash, MaskRedact)
	}
	m := masker{fields: map[string]bool{}, mode: mode}
	for _, f := range fields {
		if f = strings.TrimSpace(f); f != "" {
			m.fields[f] = true
		}
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
	sum := sha256.Sum256(buf.Bytes())
	return json.RawMessage(`"sha256:` + hex.EncodeToString(sum[:]) + `"`)
}

// event masks the fields of data.context in a CloudEvent, and of the
// original event a dead letter carries. It returns raw unchanged when
// nothing is masked or raw is not a JSON object. Keys are found as the
// decoders find them, ignoring case, so "Data" or "Context" cannot carry a
// field past the mask.
func (m masker) event(raw []byte) []byte {
	if len(m.fields) == 0 || !m.mayHold(raw) {
		return raw
	}
	var ev map[string]json.RawMessage
	if json.Unmarshal(raw, &ev) != nil {
		return raw
	}
	dataKey, ok := keyOf(ev, "data")
	if !ok {
		return raw
	}
	var data map[string]json.RawMessage
	if json.Unmarshal(ev[dataKey], &data) != nil {
		return raw
	}
	changed := false
	if k, ok := keyOf(data, "context"); ok {
		if masked, ok := m.context(data[k]); ok {
			data[k], changed = masked, true
		}
	}
	// A dead letter's original body is an event too.
	if k, ok := keyOf(data, "data"); ok && isDeadLetter(ev) {
		var s string
		if json.Unmarshal(data[k], &s) == nil {
			if masked := m.event([]byte(s)); !bytes.Equal(masked, []byte(s)) {
				b, _ := json.Marshal(string(masked))
				data[k], changed = b, true
			}
		}
	}
	if !changed {
		return raw
	}
	d, err := json.Marshal(data)
	if err != nil {
		return raw
	}
	ev[dataKey] = d
	out, err := json.Marshal(ev)
	if err != nil {
		return raw
	}
	return out
}

// keyOf finds the key of obj that a decoder would read as field name:
// the exact name if present, else one equal to it ignoring case.
func keyOf(obj map[string]json.RawMessage, name string) (string, bool) {
	if _, ok := obj[name]; ok {
		return name, true
	}
	for k := range obj {
		if strings.EqualFold(k, name) {
			return k, true
		}
	}
	return "", false
}

func isDeadLetter(ev map[string]json.RawMessage) bool {
	k, ok := keyOf(ev, "type")
	if !ok {
		return false
	}
	var t string
	return json.Unmarshal(ev[k], &t) == nil && t == schemas.TypeDeadLetter
}

// mayHold reports whether raw may hold a masked field: it names one, or
// holds a \u escape, which could spell one. Most events do neither, and
// this saves parsing them.
func (m masker) mayHold(raw []byte) bool {
	for f := range m.fields {
		if bytes.Contains(raw, []byte(f)) {
			return true
		}
	}
	return len(m.fields) > 0 && bytes.Contains(raw, []byte(`\u`))
}

func (m masker) context(raw json.RawMessage) (json.RawMessage, bool) {
	var c map[string]json.RawMessage
	if json.Unmarshal(raw, &c) != nil {
		return nil, false
	}
	changed := false
	for k, v := range c {
		if m.fields[k] {
			c[k], changed = m.value(v), true
		}
	}
	if !changed {
		return nil, false
	}
	out, err := json.Marshal(c)
	if err != nil {
		return nil, false
	}
	return out, true
}
