package generate

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The markers of the settings reference in docs/configuration.md.
const (
	SettingsBegin = "<!-- settings: generated from each service's declared settings (-settings-json); make generate -->\n"
	SettingsEnd   = "<!-- end of settings -->"
)

// SettingsServices are the services whose declared settings the reference
// lists, in its order.
var SettingsServices = []string{"authn", "policy", "reaper", "audit", "gateway"}

// Declared is what a service prints with -settings-json.
type Declared struct {
	Service  string            `json:"service"`
	Sections []DeclaredSection `json:"sections"`
}

// DeclaredSection is one section of a service's declarations.
type DeclaredSection struct {
	Title    string            `json:"title"`
	Settings []DeclaredSetting `json:"settings"`
}

// DeclaredSetting is one declared setting.
type DeclaredSetting struct {
	Names    []string `json:"names"`
	Default  string   `json:"default"`
	Bounds   string   `json:"bounds"`
	Required bool     `json:"required"`
	Doc      string   `json:"doc"`
}

// DeclaredSettings builds each service of SettingsServices and returns what
// it declares (-settings-json): the services' main packages are not
// importable, and the binary is what reads the environment anyway.
func DeclaredSettings(ctx context.Context, root string) ([]Declared, error) {
	bin, err := os.MkdirTemp("", "aigov-settings-")
	if err != nil {
		return nil, fmt.Errorf("temp dir: %w", err)
	}
	defer os.RemoveAll(bin)
	args := []string{"build", "-o", bin + string(filepath.Separator)}
	for _, s := range SettingsServices {
		args = append(args, "./services/"+s)
	}
	build := exec.CommandContext(ctx, "go", args...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build the services: %w\n%s", err, out)
	}
	var all []Declared
	for _, s := range SettingsServices {
		out, err := exec.CommandContext(ctx, filepath.Join(bin, s), "-settings-json").Output()
		if err != nil {
			return nil, fmt.Errorf("%s -settings-json: %w", s, err)
		}
		var d Declared
		if err := json.Unmarshal(out, &d); err != nil {
			return nil, fmt.Errorf("%s -settings-json: %w", s, err)
		}
		all = append(all, d)
	}
	return all, nil
}

// Settings is the settings reference of docs/configuration.md: a table per
// section of declarations, a section several services share (every
// service's, the session limits) once, where it first appears, saying
// which of them require a setting.
func Settings(ctx context.Context, root string) ([]Output, error) {
	all, err := DeclaredSettings(ctx, root)
	if err != nil {
		return nil, err
	}
	// requiredBy[section][variable] are the services requiring it;
	// users[section] those that read the section.
	requiredBy, users := map[string]map[string][]string{}, map[string][]string{}
	for _, d := range all {
		for _, sec := range d.Sections {
			users[sec.Title] = append(users[sec.Title], d.Service)
			for _, st := range sec.Settings {
				if st.Required {
					if requiredBy[sec.Title] == nil {
						requiredBy[sec.Title] = map[string][]string{}
					}
					requiredBy[sec.Title][st.Names[0]] = append(requiredBy[sec.Title][st.Names[0]], d.Service)
				}
			}
		}
	}
	var b strings.Builder
	seen := map[string]bool{}
	for _, d := range all {
		for _, sec := range d.Sections {
			if seen[sec.Title] {
				continue
			}
			seen[sec.Title] = true
			fmt.Fprintf(&b, "\n**%s:**\n\n| variable | default | bounds | meaning |\n|---|---|---|---|\n", sec.Title)
			for _, st := range sec.Settings {
				names := make([]string, len(st.Names))
				for i, n := range st.Names {
					names[i] = "`" + n + "`"
				}
				def := st.Default
				switch req := requiredBy[sec.Title][st.Names[0]]; {
				case len(req) > 0 && len(req) == len(users[sec.Title]):
					def = "**required**"
				case len(req) > 0:
					def = "**required** by " + strings.Join(req, ", ")
				}
				fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", strings.Join(names, ", "), def, st.Bounds, st.Doc)
			}
		}
	}
	b.WriteString("\n")
	return []Output{{Path: "docs/configuration.md", Begin: SettingsBegin, End: SettingsEnd, Content: []byte(b.String()),
		From: "the services' declared settings"}}, nil
}
