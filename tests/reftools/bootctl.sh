#!/usr/bin/env bash
# Provide bootctl (systemd-boot's tool) for the boot order oracle's tests
# (tests/unit/test_bootorder.py: `bootctl list` on a copy of an ESP).
#
# The systemd-boot package is unpacked, not installed: its postinst runs
# `bootctl install` on any ESP it finds, which a developer's machine has.
# bootctl uses the host's libsystemd-shared, so it is unpacked again when the
# host's systemd changes.
#
# Usage: bootctl.sh CACHE_DIR       (idempotent)
set -euo pipefail

cache=${1:?usage: bootctl.sh CACHE_DIR}
dest="$cache/bootctl"
key="systemd $(dpkg-query -W -f='${Version}' systemd)"

if [[ -f "$dest/.cfsboot-key" && "$(cat "$dest/.cfsboot-key")" == "$key" \
      && -x "$dest/usr/bin/bootctl" ]]; then
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"  # apt fetches as its own user
version=$(dpkg-query -W -f='${Version}' systemd)
cd "$work"
# The host's version if the mirror still has it, else the current one.
if ! apt-get download -q "systemd-boot=$version" >/dev/null 2>&1; then
    apt-get download -q systemd-boot >/dev/null 2>&1
fi
cd - >/dev/null
mkdir -p "$cache"
rm -rf "$dest.tmp"
dpkg-deb -x "$work"/systemd-boot_*.deb "$dest.tmp"
"$dest.tmp/usr/bin/bootctl" --version >/dev/null
echo "$key" > "$dest.tmp/.cfsboot-key"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "bootctl ready in $dest/usr/bin"
