package deploycheck

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const (
	settingsBegin = "<!-- settings: generated from each service's declared settings (-settings-json) by TestSettingsDoc; make generate -->\n"
	settingsEnd   = "<!-- end of settings -->"
)

// settingsServices are the services whose declared settings the
// reference lists, in its order.
var settingsServices = []string{"authn", "policy", "reaper", "audit", "gateway"}

type declaredSettings struct {
	Service  string `json:"service"`
	Sections []struct {
		Title    string            `json:"title"`
		Settings []declaredSetting `json:"settings"`
	} `json:"sections"`
}

type declaredSetting struct {
	Names    []string `json:"names"`
	Default  string   `json:"default"`
	Bounds   string   `json:"bounds"`
	Required bool     `json:"required"`
	Doc      string   `json:"doc"`
}

// declared builds each service and reads what it declares
// (-settings-json), in settingsServices' order.
func declared(t testing.TB) []declaredSettings {
	t.Helper()
	bin := t.TempDir()
	args := []string{"build", "-o", bin + "/"}
	for _, s := range settingsServices {
		args = append(args, "./services/"+s)
	}
	build := exec.Command("go", args...)
	build.Dir = repoRoot(t)
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build the services: %v\n%s", err, out)
	}
	var all []declaredSettings
	for _, s := range settingsServices {
		out, err := exec.Command(filepath.Join(bin, s), "-settings-json").Output()
		if err != nil {
			t.Fatalf("%s -settings-json: %v", s, err)
		}
		var d declaredSettings
		if err := json.Unmarshal(out, &d); err != nil {
			t.Fatalf("%s -settings-json: %v", s, err)
		}
		all = append(all, d)
	}
	return all
}

// renderSettings renders the tables of what the services declare: a
// section shared by several services (every service's, the session
// limits) once, where it first appears, saying which of them require a
// setting.
func renderSettings(t *testing.T) string {
	t.Helper()
	all := declared(t)
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
	return b.String()
}

// docs/configuration.md lists exactly the settings the services declare;
// a service that reads an undeclared variable fails at start (Env.Declare),
// so the reference is complete.
func TestSettingsDoc(t *testing.T) {
	checkGeneratedSection(t, "docs/configuration.md", settingsBegin, settingsEnd, renderSettings(t), "settings differ from the services' declarations")
}
