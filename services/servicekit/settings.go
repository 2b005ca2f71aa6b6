package servicekit

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Setting declares one configuration variable a service reads: its name
// (or the names of a group read together), its default, its bounds, and
// what it means. A service declares every setting it reads (Env.Declare);
// the Env getters take the default and the bounds from the declaration,
// and the configuration reference (docs/configuration.md) and the
// service's -h are generated from the same declarations.
type Setting struct {
	Names []string `json:"names"`
	// Value is the typed default the getters return when the variable is
	// unset: a string (Env.String), int (Int), bool (Bool), time.Duration
	// (Duration, SignedDuration) or []string (List); nil is the zero value.
	Value any `json:"-"`
	// Min and Max bound an int or a duration (nil: no bound); a value
	// outside them is a violation naming the variable.
	Min any `json:"-"`
	Max any `json:"-"`
	// Default is how the reference shows the default when Value alone
	// does not say it (a default computed at load time, a note); empty
	// shows Value.
	Default string `json:"default,omitempty"`
	Doc     string `json:"doc"`
	// Required settings must be set (each of Names), or the service
	// refuses to start (Env.Declare records the violation).
	Required bool `json:"required,omitempty"`
}

// MarshalJSON writes what the reference shows: the default and the bounds
// as text.
func (st Setting) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		Names    []string `json:"names"`
		Default  string   `json:"default,omitempty"`
		Bounds   string   `json:"bounds,omitempty"`
		Required bool     `json:"required,omitempty"`
		Doc      string   `json:"doc"`
	}{st.Names, st.DefaultText(), st.BoundsText(), st.Required, st.Doc})
}

// DefaultText is the default as the reference shows it (Markdown).
func (st Setting) DefaultText() string {
	if st.Default != "" {
		return st.Default
	}
	if v := formatValue(st.Value); v != "" {
		return "`" + v + "`"
	}
	return "—"
}

// BoundsText is the bounds as the reference shows them, empty for none.
func (st Setting) BoundsText() string {
	lo, hi := formatValue(st.Min), formatValue(st.Max)
	switch {
	case lo != "" && hi != "":
		return "`" + lo + "` to `" + hi + "`"
	case lo != "":
		return "at least `" + lo + "`"
	case hi != "":
		return "at most `" + hi + "`"
	}
	return ""
}

// formatValue writes a declared value as the variable would be set.
func formatValue(v any) string {
	switch v := v.(type) {
	case nil:
		return ""
	case time.Duration:
		return FormatDuration(v)
	case []string:
		return strings.Join(v, ",")
	default:
		return fmt.Sprint(v)
	}
}

// FormatDuration writes d as one would set it: 24h, 2m, 500ms, 0 (where
// time.Duration's String writes 24h0m0s).
func FormatDuration(d time.Duration) string {
	if d == 0 {
		return "0"
	}
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// Settings is a service's declared settings by section, in the order the
// reference shows them: "every service", then shared groups, then its own.
type Settings struct {
	Service  string    `json:"service"`
	Sections []Section `json:"sections"`
}

// Section is one table of the reference.
type Section struct {
	Title    string    `json:"title"`
	Settings []Setting `json:"settings"`
}

// Require marks the named settings of sec required, for a service that
// cannot start without them although other services sharing the section
// can (the signing key, the trust file).
func (sec Section) Require(names ...string) Section {
	out := sec
	out.Settings = slices.Clone(sec.Settings)
	for _, n := range names {
		found := false
		for i, st := range out.Settings {
			if slices.Contains(st.Names, n) {
				out.Settings[i].Required, found = true, true
			}
		}
		if !found {
			// A programming error: the declaration would silently require nothing.
			panic(fmt.Sprintf("servicekit: Require(%q): no such setting in section %q", n, sec.Title))
		}
	}
	return out
}

// Names lists every declared variable.
func (s Settings) Names() []string {
	var out []string
	for _, sec := range s.Sections {
		for _, st := range sec.Settings {
			out = append(out, st.Names...)
		}
	}
	return out
}

// Declare tells e which variables the service declares, with their
// defaults and bounds: from then on, reading any other is a violation Err
// reports, so a setting cannot be added without its declaration (and so
// its documentation). A required setting left unset is a violation too.
// Declaring a variable again changes nothing: a service's LoadConfig
// declares its settings for the tests that call it alone.
func (e *Env) Declare(s Settings) {
	if e.declared == nil {
		e.declared = map[string]Setting{}
	}
	for _, sec := range s.Sections {
		for _, st := range sec.Settings {
			for _, n := range st.Names {
				if _, again := e.declared[n]; again {
					continue
				}
				e.declared[n] = st
				if _, ok := e.raw(n); st.Required && !ok {
					e.errs = append(e.errs, fmt.Errorf("%s is required", n))
				}
			}
		}
	}
}

// read notes that key was read, and records a violation when the service
// declared its settings and key is not among them.
func (e *Env) read(key string) {
	if _, ok := e.declared[key]; ok || e.declared == nil || slices.Contains(e.undeclared, key) {
		return
	}
	e.undeclared = append(e.undeclared, key)
	e.errs = append(e.errs, fmt.Errorf("%s is read but not declared among the service's settings", key))
}

// WriteHelp prints the settings as a table, for -h.
func (s Settings) WriteHelp(w io.Writer) {
	fmt.Fprintf(w, "%s reads its configuration from the environment (docs/configuration.md):\n", s.Service)
	for _, sec := range s.Sections {
		fmt.Fprintf(w, "\n%s:\n", sec.Title)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		for _, st := range sec.Settings {
			def := st.DefaultText()
			if st.Required {
				def = "required"
			}
			if b := st.BoundsText(); b != "" {
				def += " (" + b + ")"
			}
			fmt.Fprintf(tw, "  %s\t%s\n", strings.Join(st.Names, ", "), plain(def))
		}
		tw.Flush()
	}
}

// WriteJSON prints the settings as JSON, for the reference's generator.
func (s Settings) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// plain drops the Markdown code ticks of a default for the terminal.
func plain(s string) string { return strings.ReplaceAll(s, "`", "") }
