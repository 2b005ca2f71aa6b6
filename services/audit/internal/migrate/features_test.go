package migrate_test

import (
	"strings"
	"testing"

	"github.com/aigov/aigov/services/audit/internal/migrate"
)

func TestFeaturesFor(t *testing.T) {
	t.Parallel()
	cases := []struct {
		version string
		want    bool
	}{
		{"18.16.1", false},
		{"19.17.4.11", false},
		{"20.3.1.2", true},
		{"24.8.4.13-lts", true},
		{"26.7.1.1", true},
		{"", false},
		{"garbage", false},
	}
	for _, c := range cases {
		f := migrate.FeaturesFor(c.version)
		if f.DateTime64 != c.want || f.LowCardinality != c.want || f.TTL != c.want || f.Codecs != c.want {
			t.Errorf("FeaturesFor(%q) = %+v, want every feature %v", c.version, f, c.want)
		}
	}
}

// TestRenderGatesFeatures renders every migration for an old and a current
// server and checks each gets only the column types and clauses it has.
func TestRenderGatesFeatures(t *testing.T) {
	t.Parallel()
	ms := load(t)
	render := func(version string, days int) string {
		f := migrate.FeaturesFor(version)
		f.RetentionDays = days
		var all []string
		for _, m := range ms {
			stmts, err := m.StatementsFor("aigov", f)
			if err != nil {
				t.Fatalf("%s for %s: %v", m.Name, version, err)
			}
			all = append(all, stmts...)
		}
		return strings.Join(all, ";\n")
	}
	old := render("18.16.1", 30)
	for _, absent := range []string{"DateTime64", "LowCardinality", "CODEC", "TTL"} {
		if strings.Contains(old, absent) {
			t.Errorf("18.16 DDL uses %s", absent)
		}
	}
	cur := render("26.7.1.1", 30)
	for _, present := range []string{"event_time     DateTime64(6, 'UTC')", "LowCardinality(String)", "CODEC(ZSTD(3))",
		"TTL toDateTime(event_time) + INTERVAL 30 DAY"} {
		if !strings.Contains(cur, present) {
			t.Errorf("26.7 DDL lacks %q", present)
		}
	}
	if forever := render("26.7.1.1", 0); strings.Contains(forever, "TTL") {
		t.Error("retention 0 still renders a TTL")
	}
}
