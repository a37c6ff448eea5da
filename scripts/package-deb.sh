#!/usr/bin/env bash
# Builds the Debian package vigil_<version>-1_<arch>.deb with Debian's own
# tools (dpkg-deb), judged by lintian in tests/package.rs:
#   /usr/bin/vigil                      the binary (stripped)
#   /lib/systemd/system/vigil.service   the unit (not enabled: configure first)
#   /etc/vigil/vigil.toml               the documented example (a conffile)
#   /usr/share/doc/vigil/               README, runbooks, copyright, changelog
#   /usr/share/man/man1/vigil.1.gz      the manual page
#
#   bash scripts/package-deb.sh [BINARY] [OUTPUT_DIR]
#
# BINARY defaults to target/release/vigil (built when missing); OUTPUT_DIR
# to target/debian. Prints the package's path.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${1:-target/release/vigil}
out=${2:-target/debian}
if [ ! -x "$bin" ]; then
  [ "$bin" = target/release/vigil ] || { echo "package-deb: no binary at $bin" >&2; exit 2; }
  cargo build --release --locked --bin vigil >&2
fi
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)-1"
arch=$(dpkg --print-architecture)

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
chmod 0755 "$root"
install -d -m 0755 "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/vigil" \
  "$root/usr/share/doc/vigil/runbooks" "$root/usr/share/man/man1"
install -m 0755 "$bin" "$root/usr/bin/vigil"
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/vigil"
install -m 0644 contrib/systemd/vigil.service "$root/lib/systemd/system/vigil.service"
install -m 0644 examples/vigil.toml "$root/etc/vigil/vigil.toml"
doc="$root/usr/share/doc/vigil"
install -m 0644 README.md "$doc/README.md"
install -m 0644 runbooks/*.md "$doc/runbooks/"
gzip -9n -c contrib/debian/changelog > "$doc/changelog.Debian.gz"
gzip -9n -c contrib/debian/vigil.1 > "$root/usr/share/man/man1/vigil.1.gz"
chmod 0644 "$root/usr/share/man/man1/vigil.1.gz"
chmod 0644 "$doc/changelog.Debian.gz"
cat > "$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vigil
Source: https://github.com/vigil-ha/vigil

Files: *
Copyright: 2026 vigil developers
License: Apache-2.0

License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 can be
 found in /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
chmod 0644 "$doc/copyright"

echo /etc/vigil/vigil.toml > "$root/DEBIAN/conffiles"
size=$(du -k -s --exclude=DEBIAN "$root" | cut -f1)
cat > "$root/DEBIAN/control" <<CONTROL
Package: vigil
Version: $version
Architecture: $arch
Maintainer: vigil developers <vigil@lists.example.org>
Installed-Size: $size
Depends: libc6 (>= 2.34), libgcc-s1 (>= 4.2)
Recommends: etcd-client
Suggests: postgresql-15 | mariadb-server, haproxy
Section: database
Priority: optional
Homepage: https://github.com/vigil-ha/vigil
Description: failover supervisor for replicated PostgreSQL and MariaDB
 vigil runs as a sidecar next to each database server of a replicated
 cluster (PostgreSQL streaming replication, MariaDB/MySQL GTID
 replication). The sidecars hold the right to write as a leader key on an
 etcd lease, promote the freshest eligible replica when the primary fails,
 fence and rejoin the old primary, and publish the primary through
 Patroni-compatible HTTP health checks, Prometheus metrics and DNS.
CONTROL
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/conffiles" "$root/DEBIAN/md5sums"

mkdir -p "$out"
deb="$out/vigil_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
