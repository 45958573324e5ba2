#!/usr/bin/env bash
# Build the small CPython that the frozen setup-root runs on (make pymin, part of
# make setup): Debian bookworm's CPython 3.11 source (the upstream tarball), built
# with only the modules setup-root imports compiled in (_ctypes, _struct, fcntl,
# math and the core ones), no docstrings in builtins, no unwind tables, stripped.
#
# Why: Debian's python3 binary is 6.8 MB (2.6 MB compressed in an initramfs): it
# links in unicodedata, expat, the hash modules, pickle and more that setup-root
# never uses. This one is 5 MB (1.5 MB compressed) and starts as fast (within half
# a millisecond: no PGO). Measured and not kept: CPython 3.13 built for size (-Os,
# 1.2 MB compressed) starts 2 ms slower (no deep-frozen modules, a slower eval
# loop); LTO made it bigger and not faster.
#
# Output: CACHE/pymin-KEY/python and its stdlib sources in Lib/ (a python._pth
# points there), for setup-root/freeze.py. Idempotent; rebuilt when KEY changes.
#
# Usage: pymin.sh CACHE_DIR
set -euo pipefail

cache=${1:?usage: pymin.sh CACHE_DIR}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
version=3.11
suite=bookworm
# The modules compiled in besides the core ones; every other optional module is left out.
static="_ctypes _struct fcntl math"
key="python$version $suite static=[$static] O2 nounwind gc-sections v2"
out="$cache/pymin"

if [[ -f "$out/.cfsboot-key" && "$(cat "$out/.cfsboot-key")" == "$key" && -x "$out/python" ]]; then
    exit 0
fi

mkdir -p "$cache"
work=$(mktemp -d "$cache/.pymin-build.XXXXXX")
trap 'rm -rf "$work"' EXIT

# The source package, fetched with apt from the trixie sources (a private apt state:
# the host's apt configuration is left alone).
mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/src"
echo "deb-src $mirror $suite main" > "$work/apt/sources.list"
apt_opts=(
    -q
    -o "Dir::Etc::SourceList=$work/apt/sources.list"
    -o "Dir::Etc::SourceParts=/dev/null"
    -o "Dir::State::Lists=$work/apt/lists"
    -o "Dir::Cache=$work/apt/cache"
    -o "Acquire::Languages=none"
    -o "APT::Sandbox::User=root"
)
apt-get "${apt_opts[@]}" update > /dev/null
(cd "$work/src" && apt-get "${apt_opts[@]}" source --download-only "python$version" > /dev/null)
tar --no-same-owner -xf "$work"/src/python"$version"_*.orig.tar.* -C "$work/src"
src=$(echo "$work"/src/Python-"$version".*/)

# Modules/Setup.local: ours compiled in, every other module of Setup.stdlib disabled.
{
    echo "*static*"
    for module in $static; do
        # (3.11 builds _ctypes with setup.py: its line is there, commented out; no
        # "=" in the flags, makesetup would take the line for a variable)
        grep -E "^#?@MODULE_[A-Z0-9_]+_TRUE@$module " "$src/Modules/Setup.stdlib.in" \
            | sed -e 's/^#\?@[A-Z0-9_]*@//' -e 's/ @[A-Z0-9_]*@$//' \
            | sed -e '/^_ctypes /s/$/ -lffi -DHAVE_FFI_PREP_CIF_VAR -DHAVE_FFI_PREP_CLOSURE_LOC -DHAVE_FFI_CLOSURE_ALLOC/'
    done
    echo
    echo "*disabled*"
    grep -oE "^@MODULE_[A-Z0-9_]+_TRUE@[a-z0-9_]+" "$src/Modules/Setup.stdlib.in" \
        | sed 's/.*@//' | grep -vxF -f <(tr ' ' '\n' <<< "$static")
} > "$src/Modules/Setup.local"

(
    cd "$src"
    ./configure -q \
        --prefix=/usr/lib/cfsboot/setup-root \
        --disable-test-modules \
        --without-ensurepip \
        --without-doc-strings \
        --disable-ipv6 \
        --without-readline \
        CFLAGS="-O2 -fno-asynchronous-unwind-tables -fno-unwind-tables -ffunction-sections -fdata-sections" \
        LDFLAGS="-Wl,--gc-sections" > /dev/null
    make -j"$(nproc)" -s python > /dev/null
)

rm -rf "$out.tmp"
mkdir -p "$out.tmp"
cp "$src/python" "$out.tmp/python"
strip -s "$out.tmp/python"
cp -a "$src/Lib" "$out.tmp/Lib"
rm -rf "$out.tmp"/Lib/{test,idlelib,tkinter,turtledemo}
echo "Lib" > "$out.tmp/python._pth"
"$out.tmp/python" -c 'import ctypes, fcntl, struct, tomllib, traceback'
echo "$key" > "$out.tmp/.cfsboot-key"
rm -rf "$out"
mv "$out.tmp" "$out"
echo "small CPython for setup-root ready in $out"
