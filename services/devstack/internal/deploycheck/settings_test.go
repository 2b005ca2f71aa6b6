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
		Title    string `json:"title"`
		Settings []struct {
			Names   []string `json:"names"`
			Default string   `json:"default"`
			Doc     string   `json:"doc"`
		} `json:"settings"`
	} `json:"sections"`
}

// renderSettings builds each service and renders the tables of what they
// declare: a section shared by several services (every service's, the
// session limits) once, where it first appears.
func renderSettings(t *testing.T) string {
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
	var b strings.Builder
	seen := map[string]bool{}
	for _, s := range settingsServices {
		out, err := exec.Command(filepath.Join(bin, s), "-settings-json").Output()
		if err != nil {
			t.Fatalf("%s -settings-json: %v", s, err)
		}
		var d declaredSettings
		if err := json.Unmarshal(out, &d); err != nil {
			t.Fatalf("%s -settings-json: %v", s, err)
		}
		for _, sec := range d.Sections {
			if seen[sec.Title] {
				continue
			}
			seen[sec.Title] = true
			fmt.Fprintf(&b, "\n**%s:**\n\n| variable | default | meaning |\n|---|---|---|\n", sec.Title)
			for _, st := range sec.Settings {
				names := make([]string, len(st.Names))
				for i, n := range st.Names {
					names[i] = "`" + n + "`"
				}
				fmt.Fprintf(&b, "| %s | %s | %s |\n", strings.Join(names, ", "), st.Default, st.Doc)
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
