package servicekit

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
)

// Setting declares one configuration variable a service reads: its name
// (or the names of a group read together), its default as the reference
// shows it, and what it means. A service declares every setting it reads
// (Env.Declare); the configuration reference (docs/configuration.md) and
// the service's -h are generated from the declarations.
type Setting struct {
	Names   []string `json:"names"`
	Default string   `json:"default,omitempty"`
	Doc     string   `json:"doc"`
	// Required settings must be set (each of Names), or the service
	// refuses to start (Env.Declare records the violation).
	Required bool `json:"required,omitempty"`
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

// Declare tells e which variables the service declares: from then on,
// reading any other is a violation Err reports, so a setting cannot be
// added without its declaration (and so its documentation).
func (e *Env) Declare(s Settings) {
	if e.declared == nil {
		e.declared = map[string]bool{}
	}
	for _, n := range s.Names() {
		e.declared[n] = true
	}
	for _, sec := range s.Sections {
		for _, st := range sec.Settings {
			if !st.Required {
				continue
			}
			for _, n := range st.Names {
				if _, ok := e.raw(n); !ok {
					e.errs = append(e.errs, fmt.Errorf("%s is required", n))
				}
			}
		}
	}
}

// read notes that key was read, and records a violation when the service
// declared its settings and key is not among them.
func (e *Env) read(key string) {
	if e.declared == nil || e.declared[key] || slices.Contains(e.undeclared, key) {
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
			def := st.Default
			if def == "" {
				def = "-"
			}
			if st.Required {
				def = "required"
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
