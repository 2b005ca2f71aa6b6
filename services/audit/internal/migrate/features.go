package migrate

import (
	"fmt"
	"strconv"
	"strings"
)

// Features are the optional ClickHouse features a migration may use, each
// true only on a server version that has it. 18.16 (Debian's) has none of
// them; current releases have all.
type Features struct {
	// Version is the server's version string, as SELECT version() said.
	Version string
	// DateTime64 stores sub-second times natively (from 20.1).
	DateTime64 bool
	// LowCardinality dictionary-encodes repetitive strings (experimental
	// before 19.x; taken from 20.3, the first LTS with it on by default).
	LowCardinality bool
	// TTL drops rows past their retention (from 19.6).
	TTL bool
	// Codecs set per-column compression (from 19.1; taken from 20.3).
	Codecs bool
	// RetentionDays is the TTL in days; 0 keeps rows for ever.
	RetentionDays int
}

// featureSince is the first version of each feature aigov relies on. They
// are conservative: 20.3 is the first LTS release with all of them stable.
var featureSince = struct{ dateTime64, lowCardinality, ttl, codecs [2]int }{
	dateTime64:     [2]int{20, 3},
	lowCardinality: [2]int{20, 3},
	ttl:            [2]int{20, 3},
	codecs:         [2]int{20, 3},
}

// FeaturesFor returns the features of a server by its version string
// ("18.16.1", "26.7.1.1", "24.8.4.13-lts"). A version it cannot read gets
// no features: the portable schema works everywhere.
func FeaturesFor(version string) Features {
	f := Features{Version: version}
	major, minor, ok := parseVersion(version)
	if !ok {
		return f
	}
	at := func(v [2]int) bool { return major > v[0] || (major == v[0] && minor >= v[1]) }
	f.DateTime64 = at(featureSince.dateTime64)
	f.LowCardinality = at(featureSince.lowCardinality)
	f.TTL = at(featureSince.ttl)
	f.Codecs = at(featureSince.codecs)
	return f
}

func parseVersion(v string) (major, minor int, ok bool) {
	parts := strings.SplitN(strings.TrimSpace(v), ".", 3)
	if len(parts) < 2 {
		return 0, 0, false
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil || major < 0 || minor < 0 {
		return 0, 0, false
	}
	return major, minor, true
}

// funcs are the template functions of a migration for database db.
func (f Features) funcs(db string) map[string]any {
	return map[string]any{
		// db is the validated database name.
		"db": func() string { return db },
		// dt64 is a microsecond UTC time column's type.
		"dt64": func() string {
			if f.DateTime64 {
				return "DateTime64(6, 'UTC')"
			}
			return "DateTime('UTC')"
		},
		// lc wraps a type in LowCardinality where supported.
		"lc": func(typ string) string {
			if f.LowCardinality {
				return "LowCardinality(" + typ + ")"
			}
			return typ
		},
		// codec is a column's compression clause, or nothing.
		"codec": func(c string) string {
			if f.Codecs {
				return "CODEC(" + c + ")"
			}
			return ""
		},
		// ttl is a table's retention clause on a DateTime column, or
		// nothing (no TTL support, or retention off).
		"ttl": func(column string) string {
			if f.TTL && f.RetentionDays > 0 {
				return fmt.Sprintf("TTL toDateTime(%s) + INTERVAL %d DAY", column, f.RetentionDays)
			}
			return ""
		},
	}
}
