#!/usr/bin/env bash
# Installs ringlb from a build of this repository as a systemd service (the
# Debian package does the same from a .deb: see docs/operating.md). Build as
# yourself first, then install as root; safe to run again (it upgrades the
# binary and unit, and never overwrites a config):
#
#   cargo build --release --bin ringlb
#   sudo scripts/install.sh            # or: sudo scripts/install.sh path/to/ringlb
#
#   binary   /usr/local/bin/ringlb
#   config   /etc/ringlb/ringlb.toml          (from config/ringlb.toml, if absent)
#   targets  /etc/ringlb/targets/             (owned by group ringlb-targets, group-writable:
#                                              add your autoscaler's user to that group)
#   unit     /etc/systemd/system/ringlb.service
#   user     ringlb (system user, no shell, no home)
#
# Uninstall:
#   systemctl disable --now ringlb
#   rm /etc/systemd/system/ringlb.service /usr/local/bin/ringlb && systemctl daemon-reload
#   rm -r /etc/ringlb            # config and targets: only if you no longer want them
#   userdel ringlb; groupdel ringlb-targets
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "install.sh: run as root" >&2; exit 1; }

# No cargo here: sudo's PATH usually lacks ~/.cargo/bin, and root should not
# build. A binary built (or downloaded) beforehand is installed.
bin=${1:-target/release/ringlb}
if [ ! -x "$bin" ]; then
  echo "install.sh: no ringlb binary at $bin" >&2
  echo "  build it first, as yourself: cargo build --release --bin ringlb" >&2
  echo "  then: sudo scripts/install.sh   (or give a binary: sudo scripts/install.sh path/to/ringlb)" >&2
  exit 1
fi
install -m 0755 "$bin" /usr/local/bin/ringlb

getent group ringlb-targets >/dev/null || groupadd --system ringlb-targets
getent passwd ringlb >/dev/null || useradd --system --no-create-home --home-dir /nonexistent \
  --shell /usr/sbin/nologin --user-group ringlb
usermod -a -G ringlb-targets ringlb

install -d -m 0755 /etc/ringlb
install -d -m 2775 -g ringlb-targets /etc/ringlb/targets
if [ ! -e /etc/ringlb/ringlb.toml ]; then
  install -m 0644 config/ringlb.toml /etc/ringlb/ringlb.toml
fi
for f in config/targets/*.txt; do
  dest="/etc/ringlb/targets/$(basename "$f")"
  [ -e "$dest" ] || install -m 0664 -g ringlb-targets "$f" "$dest"
done

/usr/local/bin/ringlb check --config /etc/ringlb/ringlb.toml
install -m 0644 scripts/ringlb.service /etc/systemd/system/ringlb.service
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable ringlb
  echo "installed; start with: systemctl start ringlb   (reload: systemctl reload ringlb)"
else
  echo "installed; systemd is not running here, so the unit was not enabled"
fi
