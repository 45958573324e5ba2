#!/usr/bin/env bash
# The SELinux oracle: a Debian trixie chroot with selinux-policy-default
# installed (its postinst builds the policy, so file_contexts is the one a
# real system has), libselinux 3.8 and python3. tests/integration/
# test_selabel_oracle.py asks its libselinux (selabel_lookup) and its PCRE2
# for answers and compares them with cfsboot's, over this tree and the test OS.
#
# The text policy files are copied to /srv/cfsboot-policy: given a directory
# without file_contexts.bin, libselinux reads the same text cfsboot reads.
#
# Usage: selinux-oracle.sh CACHE_DIR      (idempotent; rebuilds when KEY changes)
set -euo pipefail

cache=${1:?usage: selinux-oracle.sh CACHE_DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
key="selinux-oracle trixie selinux-policy-default python3 v1"
root="$cache/selinux-oracle"

if [[ -f "$root/.cfsboot-key" && "$(cat "$root/.cfsboot-key")" == "$key" ]]; then
    exit 0
fi

mkdir -p "$cache"
rm -rf "$root.tmp" "$root"
mmdebstrap --variant=minbase --mode=root \
    --include=python3,selinux-policy-default \
    trixie "$root.tmp" "deb $mirror trixie main"

files="$root.tmp/etc/selinux/default/contexts/files"
mkdir -p "$root.tmp/srv/cfsboot-policy"
for f in file_contexts file_contexts.homedirs file_contexts.local \
         file_contexts.subs file_contexts.subs_dist; do
    if [[ -f "$files/$f" ]]; then
        cp "$files/$f" "$root.tmp/srv/cfsboot-policy/$f"
    fi
done
test -s "$root.tmp/srv/cfsboot-policy/file_contexts"
rm -rf "$root.tmp/var/lib/apt/lists"/* "$root.tmp/var/cache/apt"/*.bin
echo "$key" > "$root.tmp/.cfsboot-key"
mv "$root.tmp" "$root"
echo "SELinux oracle ready in $root"
