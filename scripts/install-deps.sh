#!/usr/bin/env bash
# Installs what the aigov tests and dev stack need outside Go modules:
# a ClickHouse server binary (services/devenv/clickhouse starts its own
# server process from it). Safe to run repeatedly: it only installs what is
# missing and says what it did.
#
# Debian/Ubuntu only (apt). On Debian bookworm this gives clickhouse-server
# 18.16; to use a newer release instead, install it yourself and/or point
# AIGOV_CLICKHOUSE_SERVER at its clickhouse-server (or single clickhouse)
# binary.
set -euo pipefail

log() { printf 'install-deps: %s\n' "$*"; }

# Go is not installed here (its version is pinned by go.mod/go.work), but
# nothing works without it, so fail early and clearly.
if ! command -v go >/dev/null 2>&1; then
	log "go is not installed or not on PATH; install Go (see go.work for the version) and re-run" >&2
	exit 1
fi
log "go: $(go version)"

# docker-compose: the deploy checks in `make test`
# (services/devstack/internal/deploycheck) validate docker-compose.yml with
# `docker-compose config`, which needs no Docker engine. Debian's package
# (v1.29) is enough; a docker-compose already on PATH is kept.
if command -v docker-compose >/dev/null 2>&1; then
	log "docker-compose: already installed ($(docker-compose version --short 2>/dev/null || echo unknown version)); nothing to do"
elif ! command -v apt-get >/dev/null 2>&1; then
	log "docker-compose is missing and apt-get is not available; install docker-compose" \
		"(e.g. pip install docker-compose, or your distribution's package)" >&2
	exit 1
else
	dc_sudo=()
	if [[ "$(id -u)" -ne 0 ]]; then
		if ! command -v sudo >/dev/null 2>&1; then
			log "docker-compose is missing and installing it needs root: re-run as root or install sudo" >&2
			exit 1
		fi
		dc_sudo=(sudo)
	fi
	log "docker-compose not found; installing Debian's docker-compose with apt-get"
	"${dc_sudo[@]}" apt-get update
	"${dc_sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y docker-compose
	command -v docker-compose >/dev/null 2>&1 || {
		log "apt-get install docker-compose finished but docker-compose is not on PATH" >&2
		exit 1
	}
	log "docker-compose: installed ($(docker-compose version --short 2>/dev/null || echo unknown version))"
fi

# natscli: the test that the plain nats CLI can act as any role from its
# .run/env/<role>.env file (services/devstack/internal/app). go install puts
# it in $(go env GOPATH)/bin, where the test also looks; about a minute.
nats_cli="$(go env GOPATH)/bin/nats"
if command -v nats >/dev/null 2>&1 || [[ -x "$nats_cli" ]]; then
	log "nats CLI: already installed; nothing to do"
elif go install github.com/nats-io/natscli/nats@v0.5.0; then
	log "nats CLI: installed $nats_cli"
else
	# Optional: only that one test needs it, and it says so when skipped.
	log "nats CLI: go install failed; the nats CLI test will be skipped" >&2
fi

# Same search order as services/devenv/clickhouse.Available.
find_clickhouse() {
	if [[ -n "${AIGOV_CLICKHOUSE_SERVER:-}" ]]; then
		command -v "$AIGOV_CLICKHOUSE_SERVER" 2>/dev/null && return 0
		return 1
	fi
	command -v clickhouse-server 2>/dev/null && return 0
	command -v clickhouse 2>/dev/null && return 0
	local p
	for p in /usr/sbin/clickhouse-server /usr/bin/clickhouse-server; do
		if [[ -x "$p" ]]; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

if bin="$(find_clickhouse)"; then
	log "clickhouse: already installed at $bin; nothing to do"
	exit 0
fi
if [[ -n "${AIGOV_CLICKHOUSE_SERVER:-}" ]]; then
	log "AIGOV_CLICKHOUSE_SERVER=$AIGOV_CLICKHOUSE_SERVER is not an executable; fix or unset it" >&2
	exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
	log "no clickhouse-server found and apt-get is not available; install ClickHouse" \
		"(https://clickhouse.com/docs/install) and put clickhouse-server on PATH" \
		"or set AIGOV_CLICKHOUSE_SERVER" >&2
	exit 1
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
	if ! command -v sudo >/dev/null 2>&1; then
		log "clickhouse-server is missing and installing it needs root: re-run as root" \
			"or install sudo" >&2
		exit 1
	fi
	SUDO=(sudo)
fi

log "clickhouse-server not found; installing it with apt-get (as ${SUDO[*]:-root})"
"${SUDO[@]}" apt-get update

# The package's postinst starts the Debian service (invoke-rc.d), which we
# never want: the tests and `make run` start their own server on free ports,
# and a system one would hold 9000/8123 and /var/lib/clickhouse. A
# policy-rc.d that exits 101 is Debian's standard "do not start services"
# switch; add one for the duration of the install unless one exists
# (Docker images ship one already).
POLICY=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e "$POLICY" ]]; then
	"${SUDO[@]}" sh -c "printf '#!/bin/sh\n# temporary, from aigov scripts/install-deps.sh\nexit 101\n' > $POLICY && chmod 755 $POLICY"
	added_policy=1
	trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
	log "added a temporary $POLICY so apt does not start the clickhouse-server service"
fi

# Should the service start be attempted anyway and fail (no init system in
# a container), apt exits non-zero although the binary is installed. That is
# harmless here, so judge success by the binary, not by apt's status.
set +e
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y clickhouse-server clickhouse-client
rc=$?
set -e

if bin="$(find_clickhouse)"; then
	if [[ $rc -ne 0 ]]; then
		log "apt-get exited with status $rc (most likely the Debian service could not start" \
			"here, e.g. invoke-rc.d without an init system); the binary is installed, so" \
			"this is fine"
	fi
	log "clickhouse: installed at $bin (package version $(dpkg-query -W -f='${Version}' clickhouse-server 2>/dev/null || echo unknown))"
	if [[ $added_policy -eq 1 ]]; then
		log "removing the temporary $POLICY"
	fi
	exit 0
fi
log "apt-get install exited with status $rc and no clickhouse-server binary is present" >&2
exit 1
