// Package migrate applies aigov's versioned ClickHouse migrations
// (services/audit/migrations) to one database and records each applied version in
// <db>.schema_migrations.
//
// ClickHouse has no transactions and no locks, so safety with several
// writers starting at once comes from the files themselves: every statement
// is idempotent (CREATE ... IF NOT EXISTS), a race between two identical
// CREATEs is absorbed (see alreadyExists), and the version table is a
// ReplacingMergeTree keyed by version, so a version recorded twice reads
// once under FINAL.
package migrate

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/rs/zerolog"
)

// Placeholder is replaced in every migration by the database name.
const Placeholder = "{{db}}"

// MaxFileBytes bounds one migration file; a schema change is never this big.
const MaxFileBytes = 1 << 20

// ErrChanged is returned when a migration file differs from the one that
// was applied under its version: applied migrations are immutable; a change
// needs a new version.
var ErrChanged = errors.New("migration changed after it was applied")

// identPattern is what a database name may look like: a plain identifier
// never needs quoting, so it can be pasted into SQL safely.
var identPattern = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)

// ValidateDatabase rejects a database name that is not a plain identifier.
func ValidateDatabase(name string) error {
	if !identPattern.MatchString(name) {
		return fmt.Errorf("database name %q must be a letter or _ followed by up to 63 letters, digits or _", name)
	}
	return nil
}

// Migration is one versioned file.
type Migration struct {
	// Version is the file's numeric prefix; applied in increasing order.
	Version uint32
	// Name is the file name, e.g. 0001_tables.sql.
	Name string
	// SQL is the file's text with the database still a Placeholder.
	SQL string
	// Checksum is the SHA-256 of SQL, hex; it detects an edited file.
	Checksum string
}

var namePattern = regexp.MustCompile(`^([0-9]{4,9})_[a-z0-9_]+\.sql$`)

// Load reads every *.sql file at the root of fsys, sorted by version. A
// file not named NNNN_description.sql, or two files with one version, is an
// error rather than a silently skipped change.
func Load(fsys fs.FS) ([]Migration, error) {
	entries, err := fs.ReadDir(fsys, ".")
	if err != nil {
		return nil, fmt.Errorf("list migrations: %w", err)
	}
	var out []Migration
	seen := map[uint32]string{}
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ".sql" {
			continue
		}
		m := namePattern.FindStringSubmatch(e.Name())
		if m == nil {
			return nil, fmt.Errorf("migration %q: name must be NNNN_description.sql (lower case)", e.Name())
		}
		v, err := strconv.ParseUint(m[1], 10, 32)
		if err != nil || v == 0 {
			return nil, fmt.Errorf("migration %q: version must be a number from 1", e.Name())
		}
		if prev, dup := seen[uint32(v)]; dup {
			return nil, fmt.Errorf("migrations %q and %q share version %d", prev, e.Name(), v)
		}
		seen[uint32(v)] = e.Name()
		b, err := fs.ReadFile(fsys, e.Name())
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		if len(b) > MaxFileBytes {
			return nil, fmt.Errorf("migration %s is larger than %d bytes", e.Name(), MaxFileBytes)
		}
		sum := sha256.Sum256(b)
		out = append(out, Migration{Version: uint32(v), Name: e.Name(), SQL: string(b), Checksum: hex.EncodeToString(sum[:])})
	}
	if len(out) == 0 {
		return nil, errors.New("no migrations found")
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// Statements returns the migration's statements for database db on a
// server with no optional features (ClickHouse 18.16).
func (m Migration) Statements(db string) ([]string, error) {
	return m.StatementsFor(db, Features{})
}

// StatementsFor returns the migration's statements for database db on a
// server with features f, with comments removed, split on the semicolons
// outside quotes: the native protocol runs one statement per query.
//
// A migration is a text/template: {{db}} is the database, and the functions
// of Features.funcs ({{dt64}}, {{lc "String"}}, {{codec "ZSTD(3)"}},
// {{ttl "event_time"}}) expand to a feature where the server has it and to
// the portable form where it does not. The checksum is of the template, so
// one file is one version whatever server it ran on.
func (m Migration) StatementsFor(db string, f Features) ([]string, error) {
	if err := ValidateDatabase(db); err != nil {
		return nil, err
	}
	tmpl, err := template.New(m.Name).Option("missingkey=error").Funcs(f.funcs(db)).Parse(m.SQL)
	if err != nil {
		return nil, fmt.Errorf("migration %s: %w", m.Name, err)
	}
	var buf strings.Builder
	if err := tmpl.Execute(&buf, f); err != nil {
		return nil, fmt.Errorf("migration %s: %w", m.Name, err)
	}
	stmts, err := split(buf.String())
	if err != nil {
		return nil, fmt.Errorf("migration %s: %w", m.Name, err)
	}
	if len(stmts) == 0 {
		return nil, fmt.Errorf("migration %s has no statements", m.Name)
	}
	return stmts, nil
}

// split cuts SQL text into statements. It knows ClickHouse's quoting ('…',
// "…", `…`, with backslash escapes) and its comments (-- to the end of the
// line, /* … */), so a semicolon in a string literal stays put.
func split(sql string) ([]string, error) {
	var (
		out  []string
		cur  strings.Builder
		i    int
		emit = func() {
			if s := strings.TrimSpace(cur.String()); s != "" {
				out = append(out, s)
			}
			cur.Reset()
		}
	)
	for i < len(sql) {
		c := sql[i]
		switch {
		case c == '-' && strings.HasPrefix(sql[i:], "--"):
			end := strings.IndexByte(sql[i:], '\n')
			if end < 0 {
				i = len(sql)
				continue
			}
			i += end // keep the newline as a separator
		case c == '/' && strings.HasPrefix(sql[i:], "/*"):
			end := strings.Index(sql[i+2:], "*/")
			if end < 0 {
				return nil, errors.New("unterminated /* comment")
			}
			cur.WriteByte(' ')
			i += 2 + end + 2
		case c == '\'' || c == '"' || c == '`':
			j := i + 1
			for ; j < len(sql); j++ {
				if sql[j] == '\\' {
					j++
					continue
				}
				if sql[j] == c {
					break
				}
			}
			if j >= len(sql) {
				return nil, fmt.Errorf("unterminated %c quote", c)
			}
			cur.WriteString(sql[i : j+1])
			i = j + 1
		case c == ';':
			emit()
			i++
		default:
			cur.WriteByte(c)
			i++
		}
	}
	emit()
	return out, nil
}

// EnsureDatabase creates db if it does not exist. conn may be connected to
// any database (normally "default"), since db may not exist yet.
func EnsureDatabase(ctx context.Context, conn driver.Conn, db string) error {
	if err := ValidateDatabase(db); err != nil {
		return err
	}
	if err := exec(ctx, conn, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
		return fmt.Errorf("create database %s: %w", db, err)
	}
	return nil
}

// Record is one applied migration as stored in schema_migrations.
type Record struct {
	// Version, Name and Checksum are the Migration's at the time it ran.
	Version  uint32
	Name     string
	Checksum string
	// AppliedAt is when it ran, to the second.
	AppliedAt time.Time
}

// versionTable is created by the migrator itself, before any file runs,
// because it is how the migrator knows which files ran.
const versionTable = `CREATE TABLE IF NOT EXISTS {{db}}.schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree
ORDER BY version`

// Applied returns the recorded migrations of db, by version.
func Applied(ctx context.Context, conn driver.Conn, db string) ([]Record, error) {
	if err := ValidateDatabase(db); err != nil {
		return nil, err
	}
	rows, err := conn.Query(ctx, "SELECT version, name, checksum, applied_at FROM "+db+".schema_migrations FINAL ORDER BY version")
	if err != nil {
		return nil, fmt.Errorf("read %s.schema_migrations: %w", db, err)
	}
	defer rows.Close()
	var out []Record
	for rows.Next() {
		var r Record
		if err := rows.Scan(&r.Version, &r.Name, &r.Checksum, &r.AppliedAt); err != nil {
			return nil, fmt.Errorf("scan %s.schema_migrations: %w", db, err)
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s.schema_migrations: %w", db, err)
	}
	return out, nil
}

// Apply runs every migration not yet recorded in db, in order, and records
// it. db must exist (EnsureDatabase). It returns the versions it applied;
// a version already recorded with a different checksum stops it with
// ErrChanged before anything runs.
func Apply(ctx context.Context, conn driver.Conn, db string, ms []Migration, log zerolog.Logger) ([]uint32, error) {
	return ApplyWith(ctx, conn, db, ms, Options{}, log)
}

// Options tune how migrations are rendered.
type Options struct {
	// RetentionDays, when above 0, adds a TTL of that many days to the
	// tables whose migration asks for one, on servers with TTL.
	RetentionDays int
}

// ApplyWith is Apply with options. It reads the server's version first and
// renders every migration for that version's features (FeaturesFor).
func ApplyWith(ctx context.Context, conn driver.Conn, db string, ms []Migration, o Options, log zerolog.Logger) ([]uint32, error) {
	if conn == nil {
		return nil, errors.New("migrate: nil clickhouse conn")
	}
	if err := ValidateDatabase(db); err != nil {
		return nil, err
	}
	if err := exec(ctx, conn, strings.ReplaceAll(versionTable, Placeholder, db)); err != nil {
		return nil, fmt.Errorf("create %s.schema_migrations: %w", db, err)
	}
	recs, err := Applied(ctx, conn, db)
	if err != nil {
		return nil, err
	}
	var version string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&version); err != nil {
		return nil, fmt.Errorf("read server version: %w", err)
	}
	feats := FeaturesFor(version)
	feats.RetentionDays = max(o.RetentionDays, 0)
	done := make(map[uint32]Record, len(recs))
	for _, r := range recs {
		done[r.Version] = r
	}
	// Check every recorded file first, so a changed file stops the service
	// before a later migration runs on a schema it does not expect.
	for _, m := range ms {
		if r, ok := done[m.Version]; ok && r.Checksum != m.Checksum {
			return nil, fmt.Errorf("%w: %s (version %d) was applied as %s with checksum %s, the file now has %s",
				ErrChanged, m.Name, m.Version, r.Name, short(r.Checksum), short(m.Checksum))
		}
	}
	var applied []uint32
	for _, m := range ms {
		if _, ok := done[m.Version]; ok {
			continue
		}
		stmts, err := m.StatementsFor(db, feats)
		if err != nil {
			return applied, err
		}
		for i, s := range stmts {
			if err := exec(ctx, conn, s); err != nil {
				return applied, fmt.Errorf("migration %s statement %d: %w", m.Name, i+1, err)
			}
		}
		if err := record(ctx, conn, db, m); err != nil {
			return applied, fmt.Errorf("record migration %s: %w", m.Name, err)
		}
		applied = append(applied, m.Version)
		log.Info().Str("database", db).Uint32("version", m.Version).Str("migration", m.Name).Int("statements", len(stmts)).Str("server_version", version).Msg("migration applied")
	}
	return applied, nil
}

// record notes m as applied. It inserts through a batch with an explicit
// column list: 18.16 needs both (an INSERT ... VALUES sent as a plain query
// over the native protocol hangs there).
func record(ctx context.Context, conn driver.Conn, db string, m Migration) error {
	b, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".schema_migrations (version, name, checksum, applied_at)")
	if err != nil {
		return err
	}
	if err := b.Append(m.Version, m.Name, m.Checksum, time.Now().UTC().Truncate(time.Second)); err != nil {
		_ = b.Abort()
		return err
	}
	return b.Send()
}

// exec runs one DDL statement. A concurrent writer creating the same object
// at the same moment can make an IF NOT EXISTS statement fail on 18.16 with
// "already exists"; the object then exists, which is what was asked.
func exec(ctx context.Context, conn driver.Conn, stmt string) error {
	err := conn.Exec(ctx, stmt)
	if err != nil && alreadyExists(err) {
		return nil
	}
	return err
}

// Server error codes meaning "the object you create is already there".
const (
	codeDuplicateColumn       = 15
	codeIllegalColumn         = 44 // 18.16's ADD COLUMN of a column that exists
	codeTableAlreadyExists    = 57
	codeTableMetadataExists   = 58
	codeDatabaseAlreadyExists = 82
)

func alreadyExists(err error) bool {
	var ex *clickhouse.Exception
	if !errors.As(err, &ex) {
		return false
	}
	if ex.Code == codeIllegalColumn {
		return strings.Contains(ex.Message, "already exists")
	}
	switch ex.Code {
	case codeDuplicateColumn, codeTableAlreadyExists, codeTableMetadataExists, codeDatabaseAlreadyExists:
		return true
	}
	return false
}

func short(sum string) string {
	if len(sum) > 12 {
		return sum[:12]
	}
	return sum
}
