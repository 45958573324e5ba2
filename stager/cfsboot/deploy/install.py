"""`cfsboot install to-disk|to-filesystem`: a new system from an image.

to-disk partitions and formats the target (cfsboot.boot.disk), loop-mounts the root
filesystem at its byte offset (no partition device nodes needed), reaches the
ESP through mtools (no vfat mount needed), then does what to-filesystem does:
create the repository (secure where the filesystem has fs-verity), import the
image, install the boot loader from the image, write the first deployment's
state (seeding the shared /var from the image) and its boot entry.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from cfsboot.boot import bls, disk
from cfsboot.boot.bootloader import (
    GRUB_MENU,
    REMOVABLE_EFI,
    SYSTEMD_BOOT_EFI,
    Bootloader,
    BootloaderKind,
    MenuEntry,
    SystemdBoot,
)
from cfsboot.boot.boottype import BootType
from cfsboot.boot.counting import Tries
from cfsboot.boot.esp import Esp, MtoolsEsp
from cfsboot.boot.grubloader import Grub
from cfsboot.boot.kargs import install_kargs
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.entries import build_entry, composefs_karg
from cfsboot.deploy.origin import Origin
from cfsboot.deploy.state import write_state
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import Target, import_target
from cfsboot.errors import die
from cfsboot.image import imagefiles
from cfsboot.image.bootscan import GRUB_IN_IMAGE, SYSTEMD_BOOT_IN_IMAGE
from cfsboot.linux.run import run
from setuproot.contract import REPO_DIR, HashAlg

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstallOptions:
    bootloader: BootloaderKind = BootloaderKind.SYSTEMD_BOOT
    kargs: tuple[str, ...] = ()
    insecure: bool = False
    algorithm: HashAlg = HashAlg.SHA512
    root_karg: str | None = None  # e.g. root=UUID=...; None: none (discoverable partitions)
    boot_timeout: int | None = None  # menu timeout; None: the loader's default (5 s)
    boot_tries: int = 0  # boot counting for the first deployment (0: off)
    quiet: bool = True


@dataclass(frozen=True)
class Installed:
    digest: str
    secure: bool
    entry: str  # title of the boot entry


def deploy_first(
    sysroot: Sysroot,
    bl: Bootloader,
    target: Target,
    *,
    install_args: Sequence[str],
    boot_tries: int = 0,
) -> MenuEntry:
    """The first deployment of a new system: state, shared var, boot files, the menu."""
    karg = composefs_karg(sysroot, target.digest)
    kargs_d = imagefiles.kargs_d(sysroot.repo, target.boot)
    options = install_kargs(install=install_args, composefs=karg, kargs_d=kargs_d)
    origin = Origin(target.reference, BootType.BLS, None, target.manifest_digest)
    entry, digest = build_entry(sysroot, bl, target, options=options, menu=[])
    entry = replace(entry, tries=Tries(boot_tries) if boot_tries else None)
    origin = Origin(target.reference, entry.boot_type, digest, target.manifest_digest)
    write_state(sysroot, target, origin, init_var=True)
    bl.write_menu([entry])
    return entry


def _install_loader(esp: Esp, sysroot: Sysroot, target: Target, opts: InstallOptions) -> Bootloader:
    repo = sysroot.repo
    if opts.bootloader is BootloaderKind.SYSTEMD_BOOT:
        binary = imagefiles.read_file(repo, target.tree, SYSTEMD_BOOT_IN_IMAGE)
        if binary is None:
            die(
                f"the image has no /{SYSTEMD_BOOT_IN_IMAGE}",
                hint="install systemd-boot-efi in the image, or use --bootloader grub",
            )
        for path in (SYSTEMD_BOOT_EFI, REMOVABLE_EFI):
            esp.mkdir(path.rsplit("/", 1)[0])
            esp.write(path, binary)
        if opts.boot_timeout is not None and not esp.exists(bls.LOADER_CONF):
            esp.mkdir("loader")
            esp.write_text(bls.LOADER_CONF, f"timeout {opts.boot_timeout}\n")
        return SystemdBoot(esp)
    binary = imagefiles.read_file(repo, target.tree, GRUB_IN_IMAGE)
    if binary is None:
        die(
            f"the image has no /{GRUB_IN_IMAGE}",
            hint="install grub-efi-amd64-bin in the image, or use --bootloader systemd-boot",
        )
    esp.mkdir(REMOVABLE_EFI.rsplit("/", 1)[0])
    esp.write(REMOVABLE_EFI, binary)
    return Grub(esp, menu_path=GRUB_MENU, timeout=opts.boot_timeout)


def to_filesystem(imgref: str, root: Path, esp: Esp, opts: InstallOptions) -> Installed:
    """Install into a mounted, empty root filesystem with the ESP given."""
    if not root.is_dir():
        die(f"{root} is not a directory", hint="mount the root filesystem first")
    if (root / REPO_DIR).exists():
        die(f"{root} already has a composefs repository ({root / REPO_DIR})",
            hint="install onto an empty filesystem")  # fmt: skip
    if opts.bootloader is BootloaderKind.GRUB and esp.exists(GRUB_MENU):
        die(f"the ESP already has {GRUB_MENU}", hint="another system boots from it")
    repo = Repository.init(root / REPO_DIR, algorithm=opts.algorithm, insecure=opts.insecure)
    sysroot = Sysroot(root)
    sysroot.__dict__["repo"] = repo  # the cached property: the repository just made
    with repo.lock():
        target = import_target(sysroot, imgref, quiet=opts.quiet)
        if target.boot.ukis and opts.kargs:
            die("kernel arguments cannot be added to a UKI (its command line is sealed)")
        bl = _install_loader(esp, sysroot, target, opts)
        args = [*([opts.root_karg] if opts.root_karg else []), "rw", *opts.kargs]
        entry = deploy_first(sysroot, bl, target, install_args=args, boot_tries=opts.boot_tries)
        extract_sync(root)
    if repo.insecure:
        log.warning(
            "%s has no fs-verity: the system boots with composefs=?%s… (not verified);"
            " run `cfsboot fsverity enable-repo` on it to make it secure",
            root,
            target.digest[:12],
        )
    return Installed(target.digest, not repo.insecure, entry.title)


def extract_sync(root: Path) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
        os.sync()
    finally:
        os.close(fd)


@contextmanager
def loop_mounted(target: Path, part: disk.Partition) -> Iterator[Path]:
    """The filesystem of `part` mounted through a loop device at its offset, in a temp dir."""
    with disk.loop_device(target, part) as loop:
        with tempfile.TemporaryDirectory(prefix="cfsboot-install-") as mnt:
            run(["mount", loop, mnt])
            try:
                yield Path(mnt)
            finally:
                run(["umount", mnt], check=False)


def to_disk(
    imgref: str,
    target: Path,
    opts: InstallOptions,
    *,
    root_size: int | None = None,
    esp_size: int = disk.DEFAULT_ESP_SIZE,
    root_label: str = disk.ROOT_LABEL,
    filesystem: str = "ext4",
) -> Installed:
    """Partition and format `target` (a disk or image file), then install onto it."""
    if not disk.FILESYSTEMS.get(filesystem, True) and not opts.insecure:
        die(f"{filesystem} has no fs-verity, so the root could never be verified",
            hint="add --insecure, or use --filesystem ext4 or btrfs")  # fmt: skip
    plan = disk.DiskPlan(
        esp_size=esp_size, root_size=root_size, root_label=root_label, filesystem=filesystem
    )
    fs_uuid = str(uuid.uuid4())
    made = disk.create_disk(target, plan, root_fs_uuid=fs_uuid)
    esp = MtoolsEsp(target, made.esp.start)
    root_karg = opts.root_karg if opts.root_karg is not None else f"root=UUID={made.root_fs_uuid}"
    opts = replace(opts, root_karg=root_karg)
    with loop_mounted(target, made.root) as mnt:
        installed = to_filesystem(imgref, mnt, esp, opts)
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return installed


def parse_size(text: str) -> int:
    """`10G`, `512M`, `2048MiB` -> bytes (whole MiB)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    num, unit = (t[:-1], t[-1]) if t and t[-1] in units and not t[-1].isdigit() else (t, "")
    try:
        value = int(float(num) * units[unit])
    except (ValueError, KeyError):
        die(f"invalid size {text!r}: expected e.g. 4G or 512M")
    return value
