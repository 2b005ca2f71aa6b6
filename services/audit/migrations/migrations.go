// Package migrations holds the audit's ClickHouse schema, applied in order
// by the audit writer (internal/migrate).
package migrations

import (
	"embed"
	"io/fs"
)

// migrationFiles holds the ClickHouse migrations. It stays unexported so no
// caller can swap the audit schema at run time; FS hands out a
// read-only view.
//
//go:embed *.sql
var migrationFiles embed.FS

// FS returns the ClickHouse migrations, one file per version named
// NNNN_description.sql at the root of the returned file system. Applied in
// order of NNNN by the audit writer; every statement is idempotent (IF NOT
// EXISTS) and names its database as {{db}}, which the migrator replaces
// with the configured, validated database name. The SQL works on
// ClickHouse 18.16 as well as current releases.
func FS() fs.FS {
	sub, err := fs.Sub(migrationFiles, ".")
	if err != nil {
		// fs.Sub fails only for an invalid path literal, which the embed
		// directive above already proves valid.
		panic("migrations: " + err.Error())
	}
	return sub
}
