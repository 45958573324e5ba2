#!/usr/bin/env bash
# Provide the reference C composefs tools (mkcomposefs, composefs-info 1.0.8)
# and the C project's test assets.
#
# Debian ships composefs 1.0.8 only in sid, built against glibc >= 2.38, and
# this host is bookworm. So we build a small trixie chroot that pulls the two
# composefs packages from sid, and run its binaries through the chroot's own
# dynamic loader: they then see host paths, which the tests need.
#
# Usage: build.sh CACHE_DIR       (idempotent; rebuilds when KEY changes)
set -euo pipefail

cache=${1:?usage: build.sh CACHE_DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
key="composefs-1.0.8 trixie+sid v2"
root="$cache/reftools"
bin="$cache/reftools-bin"
assets="$cache/composefs-assets"

if [[ -f "$root/.cfsboot-key" && "$(cat "$root/.cfsboot-key")" == "$key" \
      && -x "$bin/mkcomposefs" && -d "$assets" ]]; then
    exit 0
fi

mkdir -p "$cache"
rm -rf "$root.tmp" "$root" "$bin" "$assets"
# The sid Release file in the mirror may be past its Valid-Until date.
mmdebstrap --variant=minbase \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --include=composefs/sid,libcomposefs1/sid,fsverity,erofs-utils \
    trixie "$root.tmp" \
    "deb $mirror trixie main" \
    "deb $mirror sid main"

# Source package for the golden test vectors (tests/assets in the C project).
echo "deb-src $mirror sid main" > "$root.tmp/etc/apt/sources.list.d/sid-src.list"
mkdir -p "$root.tmp/tmp/src"
chroot "$root.tmp" sh -c 'apt-get -q -o Acquire::Check-Valid-Until=false update >/dev/null \
    && cd /tmp/src && apt-get -q source --download-only composefs/sid' >/dev/null 2>&1
mkdir -p "$assets.tmp"
tar -xzf "$root.tmp"/tmp/src/composefs_*.orig.tar.gz -C "$assets.tmp" \
    --strip-components=3 --wildcards '*/tests/assets/*'
rm -rf "$root.tmp/tmp/src" "$root.tmp/var/lib/apt/lists"/*
echo "$key" > "$root.tmp/.cfsboot-key"
mv "$root.tmp" "$root"
mv "$assets.tmp" "$assets"

mkdir -p "$bin"
for tool in mkcomposefs composefs-info fsverity mkfs.erofs dump.erofs; do
    cat > "$bin/$tool" <<WRAP
#!/bin/sh
# Runs the trixie/sid build of $tool with its own loader and libraries.
exec "$root/lib64/ld-linux-x86-64.so.2" \\
    --library-path "$root/usr/lib/x86_64-linux-gnu:$root/lib/x86_64-linux-gnu" \\
    "$root/usr/bin/$tool" "\$@"
WRAP
    chmod 0755 "$bin/$tool"
done
"$bin/mkcomposefs" --help >/dev/null 2>&1 || true
echo "reference tools ready in $bin"
