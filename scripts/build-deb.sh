#!/usr/bin/env bash
# Builds the Debian package into target/debian/: ringlb in /usr/bin, its units
# (with the zero-downtime upgrade drop-in) in /lib/systemd/system, a default
# config and targets folder in /etc/ringlb as conffiles, the ringlb user and
# ringlb-targets group (sysusers.d), the man page, a logrotate snippet.
# Needs cargo-deb: cargo install cargo-deb --locked
# Install: sudo apt install ./target/debian/ringlb_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || {
  echo "build-deb: needs cargo-deb: cargo install cargo-deb --locked" >&2
  exit 1
}
cargo build --release --quiet --bin ringlb
mkdir -p target/deb
target/release/ringlb man > target/deb/ringlb.1
# The package installs the binary in /usr/bin; the units in scripts/ name
# /usr/local/bin (a from-source install).
for unit in ringlb.service ringlb-autoscale.service; do
  sed 's|/usr/local/bin/ringlb|/usr/bin/ringlb|g; s|Installed by scripts/install.sh.|Installed by the Debian package.|' \
    "scripts/$unit" > "target/deb/$unit"
done
sed 's|/usr/local/bin/ringlb|/usr/bin/ringlb|g' scripts/ringlb-upgrade.conf > target/deb/upgrade.conf
cargo deb --no-build --quiet
ls target/debian/ringlb_*.deb
