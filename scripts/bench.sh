#!/usr/bin/env bash
# make bench: aigov's benchmarks, and with RELAY=1 / OPA=1 the reference
# benchmarks of ../shared/bench run first in the same run, so that the ratios
# (aigov ÷ bare JetStream relay, aigov ÷ OPA+JWT+decision log) compare figures
# taken minutes apart on the same machine: absolute figures move ±50 % between
# days on these machines, a ratio from one run does not.
#
#   N=20000 RATE=0   requests of the whole-stack run (RATE=0: flat out)
#   GATEWAY_RATE=1000 GATEWAY_DURATION=20s
#                    then the gateway's added latency per call at this open-loop
#                    rate: POST /v1/authorize against the SDK direct, alternating
#                    1 s blocks (GATEWAY_RATE=0 skips)
#   RELAY=1          ../shared/bench/jspipeline: 3 hops flat out, and p99 at 5,000/s
#   OPA=1            ../shared/bench/opa: OPA 1.22.3 + RS256 JWT in Rego + console decision log
#   SYNC=1           NATS fsyncs every write (sync_interval: always), the relay's too
#   GOBENCH=0        skip the Go micro-benchmarks
#   SHARED=dir       where the reference benchmarks are (default ../shared/bench)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
N="${N:-20000}"; RATE="${RATE:-0}"
GATEWAY_RATE="${GATEWAY_RATE:-1000}"; GATEWAY_DURATION="${GATEWAY_DURATION:-20s}"
SYNC_FLAG=(); if [ "${SYNC:-0}" = 1 ]; then SYNC_FLAG=(-sync-always); export SYNC_ALWAYS=1; fi
SHARED="${SHARED:-$ROOT/../shared/bench}"
OUT="${BENCH_OUT:-$(mktemp -d /tmp/aigov-bench.XXXX)}"; mkdir -p "$OUT"
GOBIN_DIR="$(go env GOPATH)/bin"

need_shared() {
  [ -d "$SHARED/$1" ] || { echo "bench: $1 asked for, but $SHARED/$1 does not exist (set SHARED=path/to/shared/bench)" >&2; exit 2; }
}
# median of a markdown row of the reference scripts: | label | metric | min | median | max | n | unit |
row_median() { awk -F'|' -v l="$2" -v m="$3" '{gsub(/^ +| +$/,"",$2); gsub(/^ +| +$/,"",$3)} $2==l && index($3,m)==1 {gsub(/ /,"",$5); print $5; exit}' "$1"; }

relay_rate=""; relay_p99=""; opa_rate=""
if [ "${RELAY:-0}" = 1 ]; then
  need_shared jspipeline
  [ -x "$GOBIN_DIR/nats-server" ] || go install github.com/nats-io/nats-server/v2@v2.15.2
  echo "== bare 3-hop JetStream relay (../shared/bench/jspipeline) =="
  RATES=5000 MAX_MSGS="${RELAY_MSGS:-100000}" OUTDIR="$OUT/relay" bash "$SHARED/jspipeline/run.sh" 1 10s | tee "$OUT/relay.md"
  relay_rate=$(row_median "$OUT/relay.md" "3hop@max" "delivered msgs/s")
  relay_p99=$(row_median "$OUT/relay.md" "3hop@5000" "e2e p99")
fi
if [ "${OPA:-0}" = 1 ]; then
  need_shared opa
  [ -x "$GOBIN_DIR/opa" ] || go install github.com/open-policy-agent/opa@v1.22.3
  # The OPA reference drives its HTTP API with wrk; Debian packages it.
  if ! command -v wrk > /dev/null; then
    sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
    echo "bench: OPA=1 needs wrk: installing it (apt-get install wrk)" >&2
    $sudo apt-get install -y -qq wrk > /dev/null 2>&1 || { $sudo apt-get update -qq > /dev/null 2>&1 && $sudo apt-get install -y -qq wrk > /dev/null 2>&1; } ||
      { echo "bench: could not install wrk; install it (apt-get install wrk) and run again" >&2; exit 2; }
  fi
  echo "== OPA + RS256 JWT in Rego + console decision log (../shared/bench/opa) =="
  TARGETS="opa+log:jwt" OUTDIR="$OUT/opa" bash "$SHARED/opa/run.sh" 1 10 | tee "$OUT/opa.md"
  opa_rate=$(row_median "$OUT/opa.md" "opa+log:jwt" "decisions/s (c=16)")
fi
if [ "${GOBENCH:-1}" = 1 ]; then
  echo "== Go benchmarks of the hot paths =="
  go test -run '^$' -bench . -benchmem -count=1 "${PKG:-github.com/aigov/aigov/...}"
fi
echo "== aigov, the whole stack (devstack bench -n $N -rate $RATE -gateway-rate $GATEWAY_RATE -gateway-duration $GATEWAY_DURATION ${SYNC_FLAG[*]}) =="
go run ./services/devstack bench -n "$N" -rate "$RATE" -gateway-rate "$GATEWAY_RATE" -gateway-duration "$GATEWAY_DURATION" "${SYNC_FLAG[@]}" | tee "$OUT/aigov.txt"
aigov_rate=$(awk '$1=="throughput" {print $2; exit}' "$OUT/aigov.txt")
[ -n "$aigov_rate" ] || { echo "bench: no throughput line in the aigov run" >&2; exit 1; }
gateway_line=$(grep -m1 '^gateway@' "$OUT/aigov.txt" || true)
if [ "$GATEWAY_RATE" != 0 ] && [ -z "$gateway_line" ]; then echo "bench: no gateway@ line in the aigov run" >&2; exit 1; fi

echo "== in this run (machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(go env GOVERSION)) =="
printf '%-36s %s decisions/s\n' "aigov, flat out" "$aigov_rate"
if [ -n "$gateway_line" ]; then
  echo "gateway, added latency per call       ${gateway_line#gateway@}"
fi
if [ -n "$relay_rate" ]; then
  printf '%-36s %s msgs/s (p99 at 5,000/s: %s ms)\n' "bare 3-hop JetStream relay" "$relay_rate" "$relay_p99"
  awk -v a="$aigov_rate" -v r="$relay_rate" 'BEGIN {printf "aigov ÷ relay                        %.2f×\n", a/r}'
fi
if [ -n "$opa_rate" ]; then
  printf '%-36s %s decisions/s\n' "OPA + JWT + console decision log" "$opa_rate"
  awk -v a="$aigov_rate" -v o="$opa_rate" 'BEGIN {printf "aigov ÷ OPA+JWT+log                  %.2f×\n", a/o}'
fi
echo "raw: $OUT"
