#!/usr/bin/env bash
# Builds the one image the compose lab starts from, `debian:bookworm-slim`,
# offline from a registry's point of view: debootstrap (minbase) from the
# Debian mirror this machine already uses, imported into Docker. Every
# service image of the lab is this base plus Debian packages, so a machine
# that reaches Debian's mirror but no image registry can build the lab.
# Idempotent: an existing debian:bookworm-slim (pulled or built) is kept.
# About 80 s on two cores.
set -euo pipefail

image=debian:bookworm-slim
if docker image inspect "$image" >/dev/null 2>&1; then
  echo "compose-base: $image is present"
  exit 0
fi

command -v debootstrap >/dev/null 2>&1 || {
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
}

# The mirror this machine's apt uses (deb822 or one-line format).
mirror=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -e "$f" ] || continue
  mirror=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' "$f")
  [ -n "$mirror" ] && break
done
if [ -z "$mirror" ] && [ -e /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "compose-base: debootstrap bookworm from $mirror"
debootstrap --variant=minbase bookworm "$root" "$mirror" >/dev/null
# Like the official slim image: no documentation, and apt cleans up.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | docker import - "$image" >/dev/null
echo "compose-base: imported $image"
