"""The Debian trixie test OS: a cached base rootfs and what is built from it.

The base rootfs is built once with mmdebstrap and cached under
``cache_dir/testos/rootfs-KEY`` (KEY hashes every input that shapes it).
It is never modified after the build: initramfs builds run dracut in an
overlay of it inside a private mount namespace, and disk images are made
from overlays too (see ``diskimage.py``).

Runnable as ``python vm-tests/testos.py [--cache DIR]`` (used by ``make setup``).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))
SUITE = "trixie"
# Bump when the build recipe below changes in a way the other inputs do not show.
SCRIPT_VERSION = "3"

PACKAGES = (
    "systemd",
    "systemd-sysv",
    "udev",
    "linux-image-amd64",
    "dracut",
    "e2fsprogs",
    "util-linux",
    "kmod",
    "python3",
    "fsverity",
    "systemd-boot-efi",
    # systemd-bless-boot (service, generator) for boot counting: not in systemd-boot-efi.
    "systemd-boot",
    "systemd-ukify",
    "erofs-utils",
    "dosfstools",
    "mtools",
    "zstd",
    # The stager runs in the guest (python3 + its non-stdlib dependencies), pulls
    # with skopeo, and writes GRUB entries for the GRUB variant of the install.
    "python3-zstandard",
    "python3-construct",
    "python3-pyudev",
    # The update timer's network check (cfsboot.linux.route: a netlink route lookup).
    "python3-pyroute2",
    "skopeo",
    "grub-efi-amd64-bin",
)
# Not in trixie: the C tools are only for debugging inside the guest.
SID_PACKAGES = ("composefs", "libcomposefs1")

# dracut would build a generic 36 MB initramfs in the kernel's postinst and in
# its own trigger (~20 s, twice). The tests build their own, so during the
# build /usr/bin/dracut is diverted to a stub that only creates the file it
# is asked for; the customize hook restores the real binary and removes the
# stub's output, leaving a rootfs identical to a normal install minus the
# generic initramfs.
_HELD = "/usr/bin/dracut.cfsboot-held"
_STUB = """#!/bin/sh
# cfsboot testos build: initramfs generation is skipped during the build.
for arg; do case $arg in /*) : > "$arg"; exit 0;; esac; done
exit 0
"""
ESSENTIAL_HOOK = (
    f'chroot "$1" dpkg-divert --quiet --local --rename --divert {_HELD} --add /usr/bin/dracut'
    f' && printf %s {shlex.quote(_STUB)} > "$1/usr/bin/dracut" && chmod 0755 "$1/usr/bin/dracut"'
)
CUSTOMIZE_HOOK = (
    'rm -f "$1/usr/bin/dracut" "$1"/boot/initrd.img-*'
    ' && chroot "$1" dpkg-divert --quiet --local --rename --remove /usr/bin/dracut'
    ' && test -x "$1/usr/bin/dracut"'
)


def cache_key() -> str:
    """Hash of every input that shapes the base rootfs."""
    inputs = {
        "suite": SUITE,
        "packages": sorted(PACKAGES),
        "sid_packages": sorted(SID_PACKAGES),
        "script_version": SCRIPT_VERSION,
        "hooks": [ESSENTIAL_HOOK, CUSTOMIZE_HOOK],
    }
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def mmdebstrap_argv(target: Path, mirror: str) -> list[str]:
    """The mmdebstrap command line that builds the base rootfs into target."""
    include = [*PACKAGES, *(f"{p}/sid" for p in SID_PACKAGES)]
    return [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        # Keep trixie the default so only the packages named /sid come from sid.
        f"--aptopt=APT::Default-Release {json.dumps(SUITE)}",
        # The mirror's sid Release file may be past its Valid-Until date.
        '--aptopt=Acquire::Check-Valid-Until "false"',
        f"--include={','.join(include)}",
        f"--essential-hook={ESSENTIAL_HOOK}",
        f"--customize-hook={CUSTOMIZE_HOOK}",
        SUITE,
        str(target),
        f"deb {mirror} {SUITE} main",
        f"deb {mirror} sid main",
    ]


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise builders of the same cache (several sessions may call at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_base_rootfs(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """Return the cached base rootfs, building it first if absent. Never modify the result."""
    key = cache_key()
    top = cache_dir / "testos"
    final = top / f"rootfs-{key}"
    if (final / "usr/bin/dracut").exists():
        return final
    with _locked(top / ".lock"):
        if (final / "usr/bin/dracut").exists():
            return final
        mirror = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
        tmp = Path(tempfile.mkdtemp(prefix=f".rootfs-{key}.", dir=top))
        try:
            started = time.monotonic()
            # mmdebstrap wants an empty (or absent) target directory.
            tmp.rmdir()
            argv = mmdebstrap_argv(tmp, mirror)
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False)
            if proc.returncode != 0:
                tail = proc.stderr.decode(errors="replace").strip().splitlines()[-20:]
                raise RuntimeError(
                    f"mmdebstrap failed with exit code {proc.returncode}:\n" + "\n".join(tail)
                )
            info = {
                "key": key,
                "suite": SUITE,
                "mirror": mirror,
                "kernel": kernel_version(tmp),
                "build_seconds": round(time.monotonic() - started, 1),
            }
            (top / f"rootfs-{key}.json").write_text(json.dumps(info, indent=2) + "\n")
            tmp.rename(final)
            _fsync_dir(top)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return final


def kernel_version(rootfs: Path) -> str:
    """The one kernel version installed in rootfs (from /usr/lib/modules)."""
    versions = sorted(p.name for p in (rootfs / "usr/lib/modules").iterdir() if p.is_dir())
    if len(versions) != 1:
        raise RuntimeError(f"expected one kernel in {rootfs}, found {versions}")
    return versions[0]


def kernel_image(rootfs: Path) -> Path:
    """Path of the kernel image (vmlinuz) in rootfs."""
    return rootfs / "boot" / f"vmlinuz-{kernel_version(rootfs)}"


# dracut flags measured in the toolchain notes: a trimmed, host-independent
# initramfs (~8-17 s to build, ~12 MB) with what a virtio guest needs.
DRACUT_OMIT = (
    "kernel-modules kernel-modules-extra nvdimm lunmask resume hwdb terminfo"
    " virtfs virtiofs systemd-battery-check systemd-pcrphase qemu"
)
DRACUT_DRIVERS = "virtio_pci virtio_blk virtio_scsi virtio_console sd_mod ext4 vfat erofs overlay"


def dracut_argv(kver: str, output: str, extra: Sequence[str] = ()) -> list[str]:
    """The dracut command line (run inside the rootfs) for a test initramfs."""
    return [
        "dracut",
        "--force",
        "--quiet",
        "--no-hostonly",
        "--omit",
        DRACUT_OMIT,
        "--add-drivers",
        DRACUT_DRIVERS,
        *extra,
        "--kver",
        kver,
        output,
    ]


# Runs in a private mount namespace: an overlay of the pristine rootfs with a
# throwaway upper dir, the API filesystems bound in, then the command chrooted.
_OVERLAY_CHROOT = """set -eu
lower=$1 upper=$2 work=$3 merged=$4; shift 4
mount -t overlay overlay -o "lowerdir=$lower,upperdir=$upper,workdir=$work" "$merged"
mount -t proc proc "$merged/proc"
mount --rbind /sys "$merged/sys"
mount --rbind /dev "$merged/dev"
mount -t tmpfs tmpfs "$merged/tmp"
exec chroot "$merged" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"
"""


def run_in_overlay(
    rootfs: Path,
    argv: Sequence[str],
    *,
    upper: Path,
    layers: Sequence[Path] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv chrooted in an overlay of rootfs; changes land in upper, rootfs stays pristine.

    layers: read-only directories stacked above rootfs (the first one on top), e.g. the
    files an OCI image adds to the base; they stay unchanged too.
    """
    upper.mkdir(parents=True, exist_ok=True)
    lower = ":".join(str(p) for p in (*layers, rootfs))
    with tempfile.TemporaryDirectory(prefix="cfsboot-ovl.", dir=upper.parent) as scratch:
        work = Path(scratch) / "work"
        merged = Path(scratch) / "merged"
        work.mkdir()
        merged.mkdir()
        cmd = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            _OVERLAY_CHROOT,
            "overlay-chroot",
            lower,
            str(upper),
            str(work),
            str(merged),
            *argv,
        ]
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    if proc.returncode != 0:
        tail = proc.stderr.decode(errors="replace").strip().splitlines()[-20:]
        raise RuntimeError(
            f"{shlex.join(argv[:3])} … in overlay of {rootfs} failed with exit code "
            f"{proc.returncode}:\n" + "\n".join(tail)
        )
    return proc


def build_initramfs(
    rootfs: Path,
    output: Path,
    *,
    extra_args: Sequence[str] = (),
    add_files: dict[str, Path] | None = None,
    layers: Sequence[Path] = (),
) -> Path:
    """Build a trimmed initramfs with dracut inside an overlay of rootfs; write it to output.

    add_files maps absolute paths inside the image (e.g. a dracut module under
    /usr/lib/dracut/modules.d/) to host files or directories copied there first;
    layers are read-only trees stacked above rootfs (see run_in_overlay). output
    must not be inside one of them.
    """
    kver = kernel_version(rootfs)
    with tempfile.TemporaryDirectory(prefix="cfsboot-initrd.", dir=output.parent) as tmp:
        upper = Path(tmp) / "upper"
        upper.mkdir()
        for dest, src in (add_files or {}).items():
            target = upper / dest.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, symlinks=True)
            else:
                shutil.copy2(src, target)
        # Written under /var/tmp: /tmp is a tmpfs inside the namespace, gone on exit.
        inner = "/var/tmp/cfsboot-initramfs.img"
        run_in_overlay(rootfs, dracut_argv(kver, inner, extra_args), upper=upper, layers=layers)
        built = upper / inner.lstrip("/")
        tmp_out = output.with_name(f".{output.name}.tmp")
        shutil.copyfile(built, tmp_out)
        os.replace(tmp_out, output)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build (or find) the cached test OS rootfs.")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="cache directory")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("testos: not root, skipping the test OS build (mmdebstrap --mode=root)")
        return 0
    started = time.monotonic()
    try:
        path = ensure_base_rootfs(args.cache)
    except RuntimeError as exc:
        print(f"testos: {exc}", file=sys.stderr)
        return 1
    print(
        f"test OS rootfs: {path} (kernel {kernel_version(path)}, "
        f"{time.monotonic() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
