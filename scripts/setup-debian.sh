#!/usr/bin/env bash
# Installs the Debian 12 packages vigil builds and tests with. Idempotent:
# packages already present are left alone and nothing is printed for them.
set -euo pipefail

packages=(
  postgresql-15            # the database engine (server and tools: pg_ctl, pg_rewind, pg_basebackup)
  mariadb-server mariadb-client  # the MariaDB GTID engine: mariadbd, mariadb-install-db, mariadb, mariadb-dump
  etcd-server etcd-client  # the coordination store (etcd 3.4) and etcdctl
  protobuf-compiler libprotobuf-dev  # the etcd client library compiles etcd's protocol at build time
  haproxy                  # the load-balancer integration test
  prometheus-alertmanager  # the alerting integration test
  prometheus               # promtool judges /metrics and the shipped alerting rules
  keepalived               # keepalived -t judges the shipped keepalived config
  bind9 bind9-utils bind9-dnsutils  # the DNS publishing test (named, tsig-keygen, dig)
  redis-server rsync       # session and file sync in the lab and tests
  nftables                 # the partition drill
  ca-certificates
  openssl                  # the TLS lab's private CA and certificates (vigil lab up --tls)
  systemd                  # systemd-analyze verify judges the shipped unit
  docker.io docker-compose debootstrap  # the compose lab (Docker 20.10, compose 1.29; its base image made offline)
  binutils lintian         # the Debian package: strip, and lintian judges it
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # Debian's service scripts would start etcd, haproxy, Prometheus and
  # keepalived on their standard ports; vigil starts its own on high ports, so keep the packaged ones off.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
    trap '$sudo rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install a Rust toolchain (https://rustup.rs), then run this again" >&2
  exit 1
fi
