#!/bin/sh
# Installs the Debian packages kiln needs on the host, if any is missing. Uses the host's own
# apt configuration. Safe to run again.
set -eu
PKGS="qemu-system-x86 qemu-utils e2fsprogs mmdebstrap dpkg apt ca-certificates python3 python3-pytest"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing="$missing $p"
done
lists=$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' 2>/dev/null | head -1)
if [ -z "$missing" ] && [ -n "$lists" ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "kiln: installing Debian packages:${missing:- (refreshing apt lists)}" >&2
$SUDO apt-get update -qq
if [ -n "$missing" ]; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
