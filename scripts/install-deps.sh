#!/bin/sh
# Installs the Debian packages kiln needs on the host, then checks every program kiln runs and
# its version. Uses the host's own apt configuration; safe to run again.
#
# - QEMU must be >= 8.2: older QEMUs cannot map a frozen RAM file read-only (see
#   docs/security.md). On Debian 12 (bookworm) it comes from bookworm-backports: this script adds
#   that suite, on the same archive the host already uses, with a pin that takes only the QEMU
#   packages (and the firmware they need) from it; every other package of the suite keeps the
#   suite's own priority (never installed unless asked for).
# - The whole package set goes into one `apt-get install` whenever anything is missing or of the
#   wrong version, so apt resolves it as one plan. apt may never remove a package here: when its
#   plan would, the plan is shown and nothing is changed.
set -eu

QEMU_MIN=8.2
# The QEMU packages: each must be installed at its candidate version (the same for both).
QEMU_PKGS="qemu-system-x86 qemu-utils"
# The firmware and data that the backported QEMU needs from the same suite.
QEMU_PIN="qemu-system-x86 qemu-system-common qemu-system-data qemu-utils qemu-block-extra seabios"
OTHER_PKGS="e2fsprogs mmdebstrap dpkg apt ca-certificates git cpio python3 python3-pytest docker-registry skopeo umoci"

say() { echo "kiln deps: $*" >&2; }
die() { echo "kiln deps: error: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || die "run as root (or install sudo): apt-get needs it"
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive

codename=""
[ -r /etc/os-release ] && codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")

# Writes $2 to the root-owned file $1 if its content differs; prints "changed" if it did.
put() {
  if [ ! -f "$1" ] || [ "$(cat "$1")" != "$2" ]; then
    printf '%s\n' "$2" | $SUDO tee "$1" >/dev/null
    echo changed
  fi
}

say "apt-get update"
$SUDO apt-get update -q >/dev/null || die "apt-get update failed (see above); check the host's apt sources"

if [ "$codename" = bookworm ]; then
  # The archive that serves bookworm itself (by the Release file's origin, not by its name).
  uri=$(apt-get indextargets --format '$(ORIGIN)|$(CODENAME)|$(IDENTIFIER)|$(REPO_URI)' \
    | awk -F'|' '$1 == "Debian" && $2 == "bookworm" && $3 == "Packages" { print $4; exit }')
  [ -n "$uri" ] || die "no Debian bookworm archive in the host's apt sources; add one, or install qemu-system-x86 >= $QEMU_MIN yourself"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  [ -f "$keyring" ] || die "$keyring is missing: apt-get install debian-archive-keyring"
  src=$(printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: %s' "$uri" "$keyring")
  pin=$(printf '# kiln: only QEMU (and the firmware it needs) from bookworm-backports.\nPackage: %s\nPin: release n=bookworm-backports\nPin-Priority: 990' "$QEMU_PIN")
  c1=$(put /etc/apt/sources.list.d/kiln-bookworm-backports.sources "$src")
  c2=$(put /etc/apt/preferences.d/kiln-qemu "$pin")
  if [ -n "$c1$c2" ]; then
    say "added bookworm-backports for QEMU (/etc/apt/sources.list.d/kiln-bookworm-backports.sources, /etc/apt/preferences.d/kiln-qemu)"
    $SUDO apt-get update -q >/dev/null || die "apt-get update failed after adding bookworm-backports"
  fi
fi

installed() { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null | awk '$3 == "installed" { print $4 }'; }
candidate() { apt-cache policy "$1" | awk '$1 == "Candidate:" { print $2 }'; }

need=""
for p in $OTHER_PKGS; do
  [ -n "$(installed "$p")" ] || need="$need $p"
done
for p in $QEMU_PKGS; do
  have=$(installed "$p"); want=$(candidate "$p")
  [ -n "$want" ] && [ "$want" != "(none)" ] || die "apt has no candidate for $p; check the host's apt sources"
  if [ "$have" != "$want" ]; then
    need="$need $p"
    say "$p: ${have:-not installed}, want $want"
  fi
done

if [ -n "$need" ]; then
  all="$QEMU_PKGS $OTHER_PKGS"
  say "installing the whole set in one step (missing or of the wrong version:$need)"
  plan=$(apt-get install -s --no-install-recommends $all 2>&1) || { echo "$plan" >&2; die "apt cannot install: $all"; }
  if echo "$plan" | grep -q '^Remv '; then
    echo "$plan" | grep -E '^(Inst|Remv) ' >&2
    die "apt would remove the packages marked Remv above to install kiln's set; kiln never removes packages. Resolve it by hand, then run 'make deps' again"
  fi
  $SUDO apt-get install -y -q --no-install-recommends --no-remove $all \
    || die "apt-get install failed (its output is above)"
fi

# Every program kiln runs, its version, and the package that provides it.
failed=0
bad() { echo "kiln deps: FAIL $1" >&2; failed=1; }
# ver_ge A B: version A >= B (dotted numbers).
ver_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }
first_version() { grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?' | head -1; }

check() { # program, minimum version (or -), package, version command
  prog=$1 min=$2 pkg=$3; shift 3
  if ! command -v "$prog" >/dev/null 2>&1; then
    bad "$prog: not found; apt-get install $pkg"
    return
  fi
  if [ "$min" = - ]; then
    say "ok $prog ($(command -v "$prog"))"
    return
  fi
  v=$("$@" 2>&1 | first_version || true)
  if [ -z "$v" ] || ! ver_ge "$v" "$min"; then
    bad "$prog: version ${v:-unknown}, kiln needs >= $min; apt-get install $pkg"
  else
    say "ok $prog $v"
  fi
}
check qemu-system-x86_64 "$QEMU_MIN" "qemu-system-x86 (>= $QEMU_MIN; bookworm-backports on Debian 12)" qemu-system-x86_64 --version
check qemu-img "$QEMU_MIN" "qemu-utils (the same version as qemu-system-x86)" qemu-img --version
sys_v=$(qemu-system-x86_64 --version 2>/dev/null | first_version || true)
img_v=$(qemu-img --version 2>/dev/null | first_version || true)
[ "$sys_v" = "$img_v" ] || bad "qemu-img $img_v and qemu-system-x86_64 $sys_v differ; apt-get install qemu-utils=$(candidate qemu-utils) qemu-system-x86=$(candidate qemu-system-x86)"
check mkfs.ext4 1.43 e2fsprogs mkfs.ext4 -V
check mmdebstrap 1.0 mmdebstrap mmdebstrap --version
check git 2.20 git git --version
check apt-get 2.0 apt apt-get --version
check apt-cache - apt
check dpkg 1.19 dpkg dpkg --version
check cpio - cpio
check chroot - coreutils
check /usr/bin/python3 3.9 python3 /usr/bin/python3 --version
if ! /usr/bin/python3 -c "import pytest" 2>/dev/null; then
  bad "/usr/bin/python3 cannot import pytest (the SDK tests run it); apt-get install python3-pytest"
fi
[ "$failed" -eq 0 ] || die "some programs are missing or too old (above)"
say "all programs present"
