#!/usr/bin/env bash
# The failover drill of the docker-compose lab: kills the container of the
# PostgreSQL primary (database and sidecar together, as a lost node), then
# prints how long until HAProxy's primary port served the new primary, the
# cluster table, and starts the old node again (it rejoins as a replica).
# Run `docker compose up -d --build` first. CLUSTER=mdb drills the MariaDB one.
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=${CLUSTER:-pg}
api() { docker compose exec -T "$1" vigil "${@:2}"; }
primary=$(api "${prefix}1" status --json | sed -n 's/.*"leader": *"\([^"]*\)".*/\1/p' | head -1)
[ -n "$primary" ] || { echo "no primary: is the lab up (docker compose ps)?" >&2; exit 1; }
echo "primary is $primary; killing its container"
start=$(date +%s.%N)
docker compose kill "$primary" >/dev/null
other=$(for n in 1 2 3; do [ "${prefix}$n" != "$primary" ] && echo "${prefix}$n"; done | head -1)
while :; do
  leader=$(api "$other" status --json | sed -n 's/.*"leader": *"\([^"]*\)".*/\1/p' | head -1)
  if [ -n "$leader" ] && [ "$leader" != "$primary" ] && api "$other" check primary --url "http://$leader:8008" >/dev/null 2>&1; then
    break
  fi
  if (( $(echo "$(date +%s.%N) - $start > 60" | bc) )); then echo "no new primary after 60 s" >&2; exit 1; fi
  sleep 0.2
done
echo "new primary accepting writes after $(echo "$(date +%s.%N) - $start" | bc | cut -c1-5) s"
api "$other" status
echo "starting $primary again: it rejoins as a replica"
docker compose start "$primary" >/dev/null
