#!/bin/sh
# Plays the scenarios of `make run` (deploy/demo/scenarios.json, kept equal
# to services/devstack/internal/demo.Scenarios by a deploycheck test) against
# a running aigov: tokens from a real OIDC provider's token endpoint (Dex in
# docker-compose.yml, password grant), requests through NATS with the aigov
# CLI as the ML platform's user, then the audit rows from ClickHouse.
#
# How each token kind is made, with nothing signed by hand:
#   good               a fresh id_token for the persona (grant_type=password)
#   expired            an id_token fetched first, then waited out until its
#                      exp has passed (Dex: expiry.idTokens)
#   forged             erin's header and claims with the signature of another
#                      persona's token: well formed, signed by the issuer's
#                      key, but not over these bytes
#   none               no Authorization header
#   after_session_end  the previous scenario's token, presented again after
#                      the session max age (AIGOV_SESSION_MAX_AGE) and two
#                      reaper intervals have passed
#
# Exit status 0 when every scenario got the decision and code it must and
# every decision reached ClickHouse; 1 otherwise.
#
# Needs: sh, curl, jq, base64, date, and the aigov CLI on PATH.
set -eu

SCENARIOS=${DEMO_SCENARIOS:-/demo/scenarios.json}
: "${AIGOV_NATS_URL:?}" "${AIGOV_NATS_PASSWORD:?}" "${AIGOV_TRUST_FILE:?}"
: "${DEX_TOKEN_URL:?}" "${DEX_CLIENT_ID:?}" "${DEX_CLIENT_SECRET:?}"
: "${CLICKHOUSE_URL:?}" "${CLICKHOUSE_USER:?}"
CLICKHOUSE_PASSWORD=${CLICKHOUSE_PASSWORD:-}
AIGOV_SESSION_MAX_AGE=${AIGOV_SESSION_MAX_AGE:-8h}
AIGOV_REAPER_INTERVAL=${AIGOV_REAPER_INTERVAL:-1s}
# Longest session max age the demo waits out to show a session ending.
DEMO_MAX_SESSION_WAIT=${DEMO_MAX_SESSION_WAIT:-300}
AIGOV_NATS_USER=${AIGOV_NATS_USER:-platform}
export AIGOV_NATS_URL AIGOV_NATS_USER AIGOV_NATS_PASSWORD AIGOV_TRUST_FILE

die() {
	printf 'demo: %s\n' "$*" >&2
	exit 1
}

# seconds prints a Go duration (15s, 1m30s, 8h, 250ms) as whole seconds,
# rounded up.
seconds() {
	printf '%s\n' "$1" | awk '
		/^([0-9]+(ms|h|m|s))+$/ {
			s = $0; t = 0
			while (match(s, /^[0-9]+(ms|h|m|s)/)) {
				part = substr(s, 1, RLENGTH); s = substr(s, RLENGTH + 1)
				if (part ~ /ms$/) { t += substr(part, 1, length(part) - 2) / 1000 }
				else {
					n = substr(part, 1, length(part) - 1); u = substr(part, length(part))
					t += (u == "h") ? n * 3600 : (u == "m") ? n * 60 : n
				}
			}
			printf "%d\n", (t == int(t)) ? t : int(t) + 1; ok = 1
		}
		END { if (!ok) exit 1 }' || die "cannot read duration '$1' (use e.g. 15s, 1m30s)"
}

# token prints a fresh id_token for a persona from the token endpoint.
token() {
	resp=$(curl -sS --max-time 10 -u "$DEX_CLIENT_ID:$DEX_CLIENT_SECRET" \
		--data-urlencode grant_type=password \
		--data-urlencode "username=$1" \
		--data-urlencode "password=$1-dev-password" \
		--data-urlencode "scope=openid email profile groups" \
		"$DEX_TOKEN_URL") || die "token request for $1 to $DEX_TOKEN_URL failed"
	printf '%s' "$resp" | jq -er .id_token 2>/dev/null ||
		die "no id_token for $1 from $DEX_TOKEN_URL: $resp"
}

# claims prints the decoded JSON claims of a JWT (not verified: only to read
# exp and show what the provider put in).
claims() {
	p=$(printf '%s' "$1" | cut -d. -f2 | tr '_-' '/+')
	case $((${#p} % 4)) in
	2) p="$p==" ;;
	3) p="$p=" ;;
	esac
	printf '%s' "$p" | base64 -d
}

# ch runs one SQL statement on ClickHouse's HTTP interface.
ch() {
	curl -fsS --max-time 10 -u "$CLICKHOUSE_USER:$CLICKHOUSE_PASSWORD" --data-binary "$1" "$CLICKHOUSE_URL/"
}

[ -r "$SCENARIOS" ] || die "no scenarios file $SCENARIOS"
count=$(jq length "$SCENARIOS")
max_age=$(seconds "$AIGOV_SESSION_MAX_AGE")
interval=$(seconds "$AIGOV_REAPER_INTERVAL")

# Show once what the provider's tokens carry: with neither sid nor auth_time
# each token is its own aigov session, keyed by its iat (see docs/sessions.md).
sample=$(token "$(jq -r '.[0].persona' "$SCENARIOS")")
printf '== token claims from %s (%s)\n' "$DEX_TOKEN_URL" \
	"$(claims "$sample" | jq -c '{iss, aud, sub, email, groups, sid, auth_time, exp_in: (.exp - .iat)}')"

# An expired token cannot be asked for, so take one now and wait it out
# before the first request, while no session of its persona exists yet.
expired_persona=$(jq -r '[.[] | select(.token == "expired")][0].persona // empty' "$SCENARIOS")
expired_token=
if [ -n "$expired_persona" ]; then
	expired_token=$(token "$expired_persona")
	exp=$(claims "$expired_token" | jq -er .exp) || die "token without exp"
	wait=$((exp - $(date +%s) + 2))
	if [ "$wait" -gt 0 ]; then
		printf '== waiting %ss for a token of %s to expire (its exp is %s)\n' "$wait" "$expired_persona" "$exp"
		sleep "$wait"
	fi
fi

printf '\n== playing %s scenarios\n' "$count"
failed=0 skipped=0 ids= previous= last_good_at=0
i=0
while [ "$i" -lt "$count" ]; do
	sc=$(jq -c ".[$i]" "$SCENARIOS")
	i=$((i + 1))
	field() { printf '%s' "$sc" | jq -r "$1"; }
	name=$(field .name) persona=$(field .persona) kind=$(field .token)
	action=$(field .action) resource="$(field .resource.type):$(field .resource.id)"
	ctx=$(field '.context // {} | tojson') want="$(field .decision) $(field .code)"

	case $kind in
	good) tok=$(token "$persona") ;;
	expired) tok=$expired_token ;;
	forged)
		other=$(token "$(jq -r '[.[] | select(.token == "good")][0].persona' "$SCENARIOS")")
		tok="$(printf '%s' "$(token "$persona")" | cut -d. -f1,2).$(printf '%s' "$other" | cut -d. -f3)"
		;;
	none) tok= ;;
	after_session_end)
		if [ "$max_age" -gt "$DEMO_MAX_SESSION_WAIT" ]; then
			printf 'SKIP  %-44s session max age %s is longer than DEMO_MAX_SESSION_WAIT=%ss\n' "$name" "$AIGOV_SESSION_MAX_AGE" "$DEMO_MAX_SESSION_WAIT"
			skipped=$((skipped + 1))
			continue
		fi
		wait=$((last_good_at + max_age + 2 * interval + 1 - $(date +%s)))
		# The token must outlive the wait, or the deny would be token_expired.
		exp=$(claims "$previous" | jq -er .exp) || die "token without exp"
		if [ "$exp" -le $(($(date +%s) + wait + 1)) ]; then
			die "the provider's tokens expire before the session max age ($AIGOV_SESSION_MAX_AGE) has passed; give tokens a longer lifetime (Dex: expiry.idTokens) or shorten AIGOV_SESSION_MAX_AGE"
		fi
		if [ "$wait" -gt 0 ]; then
			printf '      waiting %ss for the reaper to end the session (max age %s)\n' "$wait" "$AIGOV_SESSION_MAX_AGE"
			sleep "$wait"
		fi
		tok=$previous
		;;
	*) die "scenario $i: unknown token kind $kind" ;;
	esac

	out=$(AIGOV_TOKEN=$tok aigov authorize --json --timeout 10s --source aigov-compose-demo \
		--action "$action" --resource "$resource" --context "$ctx" 2>&1) && rc=0 || rc=$?
	got=$(printf '%s' "$out" | jq -r '"\(.decision) \(.code // "")"' 2>/dev/null) || got="error (exit $rc): $out"
	id=$(printf '%s' "$out" | jq -r '.request_id // empty' 2>/dev/null) || id=
	[ -n "$id" ] && ids="$ids${ids:+,}'$id'"
	if [ "$got" = "$want" ]; then
		verdict=ok
	else
		verdict="FAIL (want $want)"
		failed=$((failed + 1))
	fi
	printf '%-5s %-44s %-6s %-24s %-32s %s\n' "$verdict" "$name" "$persona" "$action" "$resource" "$got"
	if [ "$kind" = good ]; then
		previous=$tok
		last_good_at=$(date +%s)
	fi
done

printf '\n== audit rows in ClickHouse\n'
n_ids=$(printf '%s\n' "$ids" | awk -F, '{print NF}')
audited=0
if [ "$n_ids" -gt 0 ]; then
	tries=0
	while [ "$tries" -lt 60 ]; do
		audited=$(ch "SELECT count() FROM aigov.decisions FINAL WHERE request_id IN ($ids)" 2>/dev/null) || audited=0
		[ "$audited" -ge "$n_ids" ] && break
		tries=$((tries + 1))
		sleep 1
	done
fi
printf '%s of %s decisions audited\n' "$audited" "$n_ids"
[ "$audited" -ge "$n_ids" ] || failed=$((failed + 1))

for q in \
	"SELECT toString(event_time) AS at, email, resource_id AS model, decision, code FROM aigov.decisions FINAL WHERE action = 'model.retrain' ORDER BY event_time_us" \
	"SELECT code, stage, count() AS denies FROM aigov.decisions FINAL WHERE decision = 'deny' GROUP BY code, stage ORDER BY denies DESC, code" \
	"SELECT toString(event_time) AS at, action, resource_type, resource_id, decision, code FROM aigov.decisions FINAL WHERE email = 'alice@aigov.example' ORDER BY event_time_us"; do
	printf '\n%s;\n' "$q"
	ch "$q FORMAT PrettyCompactNoEscapes" || failed=$((failed + 1))
done

printf '\n== %s scenarios: %s failed, %s skipped\n' "$count" "$failed" "$skipped"
[ "$failed" -eq 0 ]
