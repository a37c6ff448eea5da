#!/usr/bin/env bash
# A quick failover drill on the running docker-compose lab: kills the
# container of the PostgreSQL primary (database and sidecar together: a
# lost node), prints how long until another node's /primary answered 200,
# the cluster table, then starts the old node again (it rejoins as a
# replica). Works with docker-compose 1.29 and compose v2; needs nothing
# but bash and Docker. Start the lab first: bash scripts/compose-lab.sh up.
# The full drills (a frozen container, partitions, client-view recovery
# through /primary, HAProxy and DNS, writes lost) are in
# tests/compose_drills.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
lab() { bash scripts/compose-lab.sh compose "$@"; }
leader_of() { # node to ask
  lab exec -T "$1" vigil status --json 2>/dev/null | sed -n 's/^ *"leader": *"\([^"]*\)".*/\1/p' | head -1
}
now_ms() { date +%s%3N; }

primary=$(leader_of pg1 || true)
[ -n "$primary" ] || primary=$(leader_of pg2 || true)
[ -n "$primary" ] || { echo "no primary: is the lab up (bash scripts/compose-lab.sh status)?" >&2; exit 1; }
other=pg1
[ "$primary" = pg1 ] && other=pg2
echo "primary is $primary; killing its container"
start=$(now_ms)
lab kill "$primary" >/dev/null 2>&1
while :; do
  leader=$(leader_of "$other" || true)
  # pgN's API is at 172.28.0.1N:8008 (docker-compose.yml).
  if [ -n "$leader" ] && [ "$leader" != "$primary" ] &&
     lab exec -T "$other" vigil check primary --url "http://172.28.0.1${leader#pg}:8008" >/dev/null 2>&1; then
    break
  fi
  if (( $(now_ms) - start > 60000 )); then echo "no new primary after 60 s" >&2; exit 1; fi
  sleep 0.2
done
elapsed=$(( $(now_ms) - start ))
printf 'new primary %s accepting writes after %d.%03d s\n' "$leader" $((elapsed / 1000)) $((elapsed % 1000))
lab exec -T "$other" vigil status
echo "starting $primary again: it rejoins as a replica"
lab start "$primary" >/dev/null 2>&1
