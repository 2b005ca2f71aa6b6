package deploycheck

import (
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"io/fs"
	"regexp"
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/aigov/aigov/services/audit/migrations"
	"github.com/aigov/aigov/services/devstack/internal/stack"
)

type dashboard struct {
	UID    string `json:"uid"`
	Title  string `json:"title"`
	Panels []struct {
		Title      string `json:"title"`
		Type       string `json:"type"`
		Datasource struct {
			Type string `json:"type"`
			UID  string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			RefID      string `json:"refId"`
			EditorType string `json:"editorType"`
			QueryType  string `json:"queryType"`
			RawSQL     string `json:"rawSql"`
			Datasource struct {
				Type string `json:"type"`
				UID  string `json:"uid"`
			} `json:"datasource"`
		} `json:"targets"`
	} `json:"panels"`
}

func loadDashboard(t testing.TB) dashboard {
	t.Helper()
	var d dashboard
	if err := json.Unmarshal(readFile(t, "deploy/grafana/dashboards/aigov.json"), &d); err != nil {
		t.Fatalf("deploy/grafana/dashboards/aigov.json: %v", err)
	}
	if len(d.Panels) == 0 {
		t.Fatal("the dashboard has no panels")
	}
	return d
}

type datasources struct {
	Datasources []struct {
		Name     string `yaml:"name"`
		UID      string `yaml:"uid"`
		Type     string `yaml:"type"`
		JSONData struct {
			Host            string `yaml:"host"`
			Port            int    `yaml:"port"`
			Protocol        string `yaml:"protocol"`
			Username        string `yaml:"username"`
			DefaultDatabase string `yaml:"defaultDatabase"`
		} `yaml:"jsonData"`
		SecureJSONData map[string]string `yaml:"secureJsonData"`
	} `yaml:"datasources"`
}

// The provisioned data source reaches the compose ClickHouse as the
// read-only user, and the dashboard's every query uses it.
func TestGrafanaProvisioning(t *testing.T) {
	c := compose(t)
	var ds datasources
	if err := yaml.Unmarshal(readFile(t, "deploy/grafana/provisioning/datasources/clickhouse.yaml"), &ds); err != nil {
		t.Fatal(err)
	}
	if len(ds.Datasources) != 1 {
		t.Fatalf("want one data source, got %d", len(ds.Datasources))
	}
	src := ds.Datasources[0]
	grafana := c.service(t, "grafana")
	ch := c.service(t, "clickhouse")
	if src.Type != "grafana-clickhouse-datasource" || !strings.HasPrefix(grafana.Environment["GF_PLUGINS_PREINSTALL_SYNC"], src.Type+"@") {
		t.Errorf("data source type %q, plugin installed %q", src.Type, grafana.Environment["GF_PLUGINS_PREINSTALL_SYNC"])
	}
	if _, ok := c.Services[src.JSONData.Host]; !ok || src.JSONData.Protocol != "native" || !ch.containerPorts()[src.JSONData.Port] || src.JSONData.Port != 9000 {
		t.Errorf("data source %s:%d over %s is not the clickhouse service's native port", src.JSONData.Host, src.JSONData.Port, src.JSONData.Protocol)
	}
	if src.JSONData.DefaultDatabase != stack.Database {
		t.Errorf("default database %q, want %q", src.JSONData.DefaultDatabase, stack.Database)
	}
	pwVar := strings.TrimPrefix(src.SecureJSONData["password"], "$")
	if pwVar == src.SecureJSONData["password"] || grafana.Environment[pwVar] == "" || grafana.Environment[pwVar] != ch.Environment[pwVar] {
		t.Errorf("data source password %q must name a variable set alike in grafana's and clickhouse's environment", src.SecureJSONData["password"])
	}

	// The user exists in ClickHouse, read-only, with that password.
	var users struct {
		Profiles struct {
			Items []struct {
				XMLName  xml.Name
				ReadOnly string `xml:"readonly"`
			} `xml:",any"`
		} `xml:"profiles"`
		Users struct {
			Items []struct {
				XMLName  xml.Name
				Password struct {
					FromEnv string `xml:"from_env,attr"`
				} `xml:"password"`
				Profile string `xml:"profile"`
			} `xml:",any"`
		} `xml:"users"`
	}
	if err := xml.Unmarshal(readFile(t, "deploy/clickhouse/users.d/grafana.xml"), &users); err != nil {
		t.Fatal(err)
	}
	readonly := map[string]bool{}
	for _, p := range users.Profiles.Items {
		readonly[p.XMLName.Local] = p.ReadOnly == "1" || p.ReadOnly == "2"
	}
	var found bool
	for _, u := range users.Users.Items {
		if u.XMLName.Local != src.JSONData.Username {
			continue
		}
		found = true
		if u.Password.FromEnv != pwVar || !readonly[u.Profile] {
			t.Errorf("ClickHouse user %s: password from_env %q (want %q), profile %q read-only: %v", u.XMLName.Local, u.Password.FromEnv, pwVar, u.Profile, readonly[u.Profile])
		}
	}
	if !found {
		t.Errorf("deploy/clickhouse/users.d/grafana.xml defines no user %q", src.JSONData.Username)
	}
	if m := ch.mounts()["/etc/clickhouse-server/users.d/grafana.xml"]; m != repoPath(t, "deploy/clickhouse/users.d/grafana.xml") {
		t.Errorf("clickhouse does not mount deploy/clickhouse/users.d/grafana.xml (%q)", ch.Volumes)
	}

	// Provisioning and dashboards are mounted where Grafana and the
	// dashboard provider look.
	var prov struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	if err := yaml.Unmarshal(readFile(t, "deploy/grafana/provisioning/dashboards/aigov.yaml"), &prov); err != nil {
		t.Fatal(err)
	}
	m := grafana.mounts()
	if len(prov.Providers) != 1 || m[prov.Providers[0].Options.Path] != repoPath(t, "deploy/grafana/dashboards") {
		t.Errorf("dashboard provider path %+v is not where deploy/grafana/dashboards is mounted (%q)", prov.Providers, grafana.Volumes)
	}
	if m["/etc/grafana/provisioning"] != repoPath(t, "deploy/grafana/provisioning") {
		t.Errorf("deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning (%q)", grafana.Volumes)
	}

	d := loadDashboard(t)
	for _, p := range d.Panels {
		if p.Datasource.UID != src.UID || len(p.Targets) == 0 {
			t.Errorf("panel %q: data source %q, %d targets", p.Title, p.Datasource.UID, len(p.Targets))
		}
		for _, q := range p.Targets {
			if q.Datasource.UID != src.UID || q.Datasource.Type != src.Type || q.EditorType != "sql" || strings.TrimSpace(q.RawSQL) == "" {
				t.Errorf("panel %q target %s: data source %+v editor %q sql %q", p.Title, q.RefID, q.Datasource, q.EditorType, q.RawSQL)
			}
		}
	}
}

// migrationObjects lists the tables and views the migrations create.
func migrationObjects(t testing.TB) map[string]bool {
	t.Helper()
	re := regexp.MustCompile(`(?i)CREATE\s+(?:TABLE|(?:MATERIALIZED\s+)?VIEW)\s+(?:IF\s+NOT\s+EXISTS\s+)?\{\{\s*db\s*\}\}\.` + "`?" + `(\w+)`)
	out := map[string]bool{}
	err := fs.WalkDir(migrations.FS(), ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".sql") {
			return err
		}
		b, err := fs.ReadFile(migrations.FS(), path)
		if err != nil {
			return err
		}
		for _, m := range re.FindAllStringSubmatch(string(b), -1) {
			out[m[1]] = true
		}
		return nil
	})
	if err != nil || len(out) == 0 {
		t.Fatalf("read migrations: %v (%d objects)", err, len(out))
	}
	return out
}

// Every table a panel reads is one the migrations create (the live run in
// TestDemoScriptAndDashboardAgainstDevStack also checks the columns).
func TestDashboardReadsExistingTables(t *testing.T) {
	objects := migrationObjects(t)
	ref := regexp.MustCompile(`\b(?:FROM|JOIN)\s+(\w+)\.(\w+)`)
	for _, p := range loadDashboard(t).Panels {
		for _, q := range p.Targets {
			refs := ref.FindAllStringSubmatch(q.RawSQL, -1)
			if len(refs) == 0 {
				t.Errorf("panel %q reads no database.table", p.Title)
			}
			for _, m := range refs {
				if m[1] != stack.Database || !objects[m[2]] {
					t.Errorf("panel %q reads %s.%s, which the migrations do not create", p.Title, m[1], m[2])
				}
			}
		}
	}
}

// expandMacros does what the Grafana ClickHouse plugin (pkg/macros) does
// with the macros the dashboard uses, for a time range and interval.
func expandMacros(t testing.TB, sql string, from, to time.Time, interval time.Duration) string {
	t.Helper()
	dt := func(tm time.Time) string { return fmt.Sprintf("toDateTime(%d)", tm.Unix()) }
	secs := max(int(interval.Seconds()), 1)
	sql = regexp.MustCompile(`\$__timeFilter\(([^)]+)\)`).ReplaceAllStringFunc(sql, func(m string) string {
		col := strings.TrimSpace(m[len("$__timeFilter(") : len(m)-1])
		return fmt.Sprintf("%s >= %s AND %s <= %s", col, dt(from), col, dt(to))
	})
	sql = regexp.MustCompile(`\$__timeInterval\(([^)]+)\)`).ReplaceAllStringFunc(sql, func(m string) string {
		col := strings.TrimSpace(m[len("$__timeInterval(") : len(m)-1])
		return fmt.Sprintf("toStartOfInterval(toDateTime(%s), INTERVAL %d second)", col, secs)
	})
	sql = strings.NewReplacer("$__interval_s", fmt.Sprint(secs), "$__fromTime", dt(from), "$__toTime", dt(to)).Replace(sql)
	if strings.Contains(sql, "$") {
		t.Fatalf("unexpanded macro or variable in %q", sql)
	}
	return sql
}

// checkDashboardQueries runs every panel's SQL, macros expanded, on the
// tables the audit service made and the demo filled: each must run, and
// the panels about decisions must show the demo's.
func checkDashboardQueries(ctx context.Context, t *testing.T, st *stack.Stack) {
	now := time.Now()
	mustHaveRows := map[string]bool{
		"Decisions per second by outcome":         true,
		"Seconds since the last audited decision": true,
		"Deny codes":                           true,
		"Denies per second by code":            true,
		"Top principals":                       true,
		"Audit lag (inserted_at - event_time)": true,
	}
	seen := map[string]bool{}
	for _, p := range loadDashboard(t).Panels {
		seen[p.Title] = true
		for _, q := range p.Targets {
			sql := expandMacros(t, q.RawSQL, now.Add(-time.Hour), now.Add(time.Minute), 10*time.Second)
			rows, err := st.DB.Query(ctx, sql)
			if err != nil {
				t.Errorf("panel %q: %v\n%s", p.Title, err, sql)
				continue
			}
			n := 0
			for rows.Next() {
				n++
			}
			err = rows.Err()
			rows.Close()
			if err != nil {
				t.Errorf("panel %q: %v", p.Title, err)
			}
			if mustHaveRows[p.Title] && n == 0 {
				t.Errorf("panel %q shows nothing after the demo", p.Title)
			}
		}
	}
	for title := range mustHaveRows {
		if !seen[title] {
			t.Errorf("the dashboard has no panel %q", title)
		}
	}
}
