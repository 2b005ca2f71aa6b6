#!/usr/bin/env bash
# Installs the current ClickHouse engine as a library (npm package chdb,
# which pulls @chdb/lib-linux-x64-gnu with libchdb.so, ~543 MB) into
# .cache/chdb, for the tests that run the current-version DDL and queries
# (`go test -tags chdb`). Idempotent: does nothing when it is there.
# Prints the library's path on stdout.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="$root/.cache/chdb"
lib="$dir/node_modules/@chdb/lib-linux-x64-gnu/libchdb.so"
version="3.4.0"

if [[ ! -f "$lib" ]]; then
	if ! command -v npm >/dev/null; then
		echo "install-chdb: npm is required (apt-get install -y npm)" >&2
		exit 1
	fi
	mkdir -p "$dir"
	[[ -f "$dir/package.json" ]] || echo '{"name":"aigov-chdb-cache","private":true}' >"$dir/package.json"
	echo "install-chdb: npm install chdb@$version into $dir (~543 MB)" >&2
	(cd "$dir" && npm install --no-audit --no-fund --loglevel=error "chdb@$version" >&2)
fi
echo "$lib"
