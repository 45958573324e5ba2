"""A deployment's boot files on the ESP and its menu entry."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from cfsboot.boot.bls import menu_text
from cfsboot.boot.bootloader import Bootloader, MenuEntry
from cfsboot.boot.boottype import BootType
from cfsboot.boot.uki import boot_digest as uki_boot_digest
from cfsboot.boot.uki import read_uki
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import Target
from cfsboot.errors import die
from cfsboot.image import imagefiles
from cfsboot.image.osrelease import DEFAULT_OS_ID
from setuproot.contract import ComposefsKarg


def sha256_files(paths: Sequence[Path]) -> str:
    """bootc's boot digest of a kernel and initrd: sha256 of their contents, in order."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def composefs_karg(sysroot: Sysroot, digest: str) -> ComposefsKarg:
    repo = sysroot.repo
    return ComposefsKarg(digest, repo.algorithm, repo.insecure)


def build_entry(
    sysroot: Sysroot,
    bl: Bootloader,
    target: Target,
    *,
    options: Sequence[str],
    menu: Sequence[MenuEntry],
) -> tuple[MenuEntry, str]:
    """Put the target's boot files on the ESP; its menu entry and bootc's boot digest.

    A kernel+initrd pair that an existing entry already uses (same boot digest)
    is shared instead of copied again.
    """
    repo = sysroot.repo
    d = target.digest
    # os-release is the image's: one line of printable text each, or the entry would not
    # read back as written (see bls.menu_text).
    title = menu_text(target.osrel.title(d)) or d
    version = menu_text(target.osrel.version(d)) or d
    os_id = menu_text(target.osrel.os_id) or DEFAULT_OS_ID
    if target.boot.ukis:
        uki_file = sorted(target.boot.ukis, key=lambda u: u.path)[0]
        with imagefiles.local_copy(repo, uki_file) as path:
            uki = read_uki(path)
            karg = uki.check_composefs(d)
            if not karg.insecure and repo.insecure:
                die(
                    f"the UKI {uki_file.path} requires fs-verity (composefs={d[:12]}…) but"
                    f" repository {repo.path} has none",
                    hint="run `cfsboot fsverity enable-repo` first, or build the UKI with"
                    " composefs=?DIGEST",
                )
            digest = uki_boot_digest(path, uki)
            uki_path = bl.install_uki(d, path)
        label = menu_text(uki.boot_label() or "") or title
        return (
            MenuEntry(d, BootType.UKI, label, version, os_id, uki=uki_path),
            digest,
        )
    kernel = imagefiles.newest_kernel(target.boot)
    if kernel is None or kernel.initramfs is None:
        die(
            f"image {target.reference or d[:12]} has no kernel to boot",
            hint="it needs /usr/lib/modules/KVER/vmlinuz and initramfs.img, or a UKI in"
            " /boot/EFI/Linux",
        )
    with (
        imagefiles.local_copy(repo, kernel.vmlinuz) as vmlinuz,
        imagefiles.local_copy(repo, kernel.initramfs) as initrd,
    ):
        digest = sha256_files([vmlinuz, initrd])
        shared = _shared_kernel(sysroot, bl, menu, digest)
        if shared is not None:
            linux, initrds = shared.linux, shared.initrd
            assert linux is not None
        else:
            linux, initrd_path = bl.install_kernel(d, vmlinuz, initrd)
            initrds = (initrd_path,)
    entry = MenuEntry(
        d, BootType.BLS, title, version, os_id, linux=linux, initrd=initrds, options=tuple(options)
    )
    return entry, digest


def _shared_kernel(
    sysroot: Sysroot, bl: Bootloader, menu: Sequence[MenuEntry], digest: str
) -> MenuEntry | None:
    for m in menu:
        if m.boot_type is not BootType.BLS:
            continue
        origin = sysroot.origin(m.deployment)
        if origin is not None and origin.boot_digest == digest and bl.has_artifact(m.artifact):
            return m
    return None
