#!/usr/bin/env bash
# The docker-compose lab on a Debian 12 machine without registry access:
#
#   bash scripts/compose-lab.sh up       # install Docker if missing, start dockerd if
#                                        # not running, build the base image and vigil,
#                                        # build the lab's images, start, wait, print the table
#   bash scripts/compose-lab.sh status   # the PostgreSQL cluster table
#   bash scripts/compose-lab.sh compose ARGS...   # docker-compose -p vigil ARGS (either compose)
#   bash scripts/compose-lab.sh down     # remove the lab (and its volumes); stop dockerd
#                                        # if `up` started it
#
# Environment: VIGIL_BINARY (the vigil binary packaged for the images;
# default target/release/vigil, built when missing), VIGIL_BUILDER
# (rust:1.89-bookworm: compile inside the build instead, registry needed),
# VIGIL_MARIADB=1 (start the MariaDB cluster too), VIGIL_LAB_WAIT (seconds
# to wait for the cluster, default 240).
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
# Where `up` notes a dockerd it started, so that `down` stops that PID and
# no other: root's runtime directory, not a predictable path in /tmp.
dockerd_note=/run/vigil-compose-dockerd.pid

compose() {
  local profile=()
  [ "${VIGIL_MARIADB:-0}" = 1 ] && profile=(--profile mariadb)
  if command -v docker-compose >/dev/null 2>&1; then
    docker-compose -p vigil "${profile[@]}" "$@"
  else
    docker compose -p vigil "${profile[@]}" "$@"
  fi
}

install_docker() {
  local missing=()
  command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
  command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || missing+=(docker-compose)
  command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
  if ((${#missing[@]})); then
    echo "compose-lab: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

start_dockerd() {
  docker info >/dev/null 2>&1 && return 0
  if [ -d /run/systemd/system ]; then
    $sudo systemctl start docker
  else
    # No init system (a container, a CI runner): start it ourselves and
    # note its PID for `down`.
    local log
    log=$(mktemp)
    $sudo dockerd >"$log" 2>&1 &
    echo $! | $sudo tee "$dockerd_note" >/dev/null
    echo "compose-lab: started dockerd (PID $(cat "$dockerd_note"), log $log)"
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "compose-lab: dockerd did not come up" >&2
  exit 1
}

stop_dockerd() {
  [ -f "$dockerd_note" ] || return 0
  local pid
  pid=$(cat "$dockerd_note")
  # Only the dockerd this script started: its PID, if it still runs dockerd.
  if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ]; then
    $sudo kill "$pid"
    local waited=0
    while kill -0 "$pid" 2>/dev/null && ((waited < 300)); do sleep 0.2; waited=$((waited + 1)); done
    if kill -0 "$pid" 2>/dev/null; then
      echo "compose-lab: dockerd (PID $pid) did not stop within 60 s; killing it" >&2
      $sudo kill -KILL "$pid"
    fi
    echo "compose-lab: stopped dockerd (PID $pid)"
  fi
  $sudo rm -f "$dockerd_note"
}

status_json() { compose exec -T pg1 vigil status --json 2>/dev/null; }

wait_ready() {
  local limit=${VIGIL_LAB_WAIT:-240} start=$SECONDS
  echo "compose-lab: waiting for a leader and two streaming replicas (at most ${limit}s)"
  while ((SECONDS - start < limit)); do
    if status_json | python3 -c '
import json, sys
c = json.load(sys.stdin)
leader = c.get("leader")
streaming = [m for m in c.get("members", []) if m["node"] != leader and m.get("streaming")]
sys.exit(0 if leader and len(streaming) == 2 else 1)' 2>/dev/null; then
      echo "compose-lab: ready after $((SECONDS - start))s"
      return 0
    fi
    sleep 1
  done
  echo "compose-lab: the cluster was not ready after ${limit}s" >&2
  compose ps >&2 || true
  compose logs --tail=40 pg1 pg2 pg3 >&2 || true
  return 1
}

case "${1:-}" in
  prewarm)
    # Everything that does not need vigil: Docker, the base image, every
    # stage of contrib/compose/Dockerfile up to the database nodes'
    # packages (the classic builder, as docker-compose 1.29 uses, so that
    # its cache serves `up`). scripts/test.sh runs this while Rust compiles.
    install_docker
    start_dockerd
    bash scripts/compose-base.sh
    DOCKER_BUILDKIT=0 docker build -q --target node-base -f contrib/compose/Dockerfile . >/dev/null
    echo "compose-lab: images up to node-base built"
    ;;
  up)
    install_docker
    start_dockerd
    bash scripts/compose-base.sh
    binary=${VIGIL_BINARY:-target/release/vigil}
    if [ ! -x "$binary" ] && [ -z "${VIGIL_BUILDER:-}" ]; then
      echo "compose-lab: building $binary"
      cargo build --release --locked --bin vigil
    fi
    # The nodes install vigil's Debian package, made here from that binary.
    if [ -z "${VIGIL_BUILDER:-}" ]; then
      mkdir -p target/compose
      deb=$(bash scripts/package-deb.sh "$binary" target/compose)
      cp "$deb" target/compose/vigil.deb
    fi
    compose build -q
    compose up -d
    wait_ready
    compose exec -T pg1 vigil status
    ;;
  status)
    compose exec -T pg1 vigil status
    ;;
  compose)
    shift
    compose "$@"
    ;;
  down)
    if docker info >/dev/null 2>&1; then
      VIGIL_MARIADB=1 compose down -v --remove-orphans
    fi
    stop_dockerd
    ;;
  *)
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
