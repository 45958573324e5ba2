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
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from cfsboot.boot import bls, disk, targetcheck
from cfsboot.boot.bootloader import (
    GRUB_MENU,
    Bootloader,
    BootloaderKind,
    MenuEntry,
    SystemdBoot,
)
from cfsboot.boot.boottype import BootType
from cfsboot.boot.counting import Tries
from cfsboot.boot.esp import Esp, MtoolsEsp
from cfsboot.boot.grubloader import Grub
from cfsboot.boot.kargs import (
    UKI_STYLE_SEALED,
    check_karg_deletes,
    delete_kargs,
    install_kargs,
)
from cfsboot.composefs.repository import Repository
from cfsboot.deploy import unmanaged
from cfsboot.deploy.entries import build_entry, composefs_karg
from cfsboot.deploy.installprep import STATE_DIR, Replace, prepare_root, ssh_keys_tmpfiles
from cfsboot.deploy.origin import Origin
from cfsboot.deploy.space import check_deploy_space
from cfsboot.deploy.state import write_state
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import Target, import_target
from cfsboot.errors import die
from cfsboot.image import imagefiles, installconfig
from cfsboot.image.info import read_config, read_image_info
from cfsboot.linux.arch import EfiNames, NoUefi, efi_names
from cfsboot.linux.run import run
from setuproot.contract import REPO_DIR, HashAlg, KargStyle

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InstallOptions:
    # None: no boot loader and no boot entries (`--bootloader none`)
    bootloader: BootloaderKind | None = BootloaderKind.SYSTEMD_BOOT
    kargs: tuple[str, ...] = ()
    karg_delete: tuple[str, ...] = ()  # bootc's --karg-delete: KEY or KEY=VALUE
    insecure: bool = False
    algorithm: HashAlg = HashAlg.SHA512
    root_karg: str | None = None  # e.g. root=UUID=...; None: none (discoverable partitions)
    boot_timeout: int | None = None  # menu timeout; None: the loader's default (5 s)
    boot_tries: int = 0  # boot counting for the first deployment (0: off)
    quiet: bool = True
    root_ssh_keys: bytes | None = None  # an authorized_keys for root
    root_ssh_keys_from: str = ""  # where they came from, for messages
    replace: Replace | None = None  # to-filesystem onto a root that is not empty
    # What the image's install config asked for, applied where the command line did not
    # say otherwise (cfsboot.commands.deploy): its kargs come before --karg's.
    use_image_config: bool = True
    stateroot: str | None = None  # the command line's (only "default" gets this far)
    karg_style: KargStyle | None = None  # None: composefs=HEX (bootc's spelling)


@dataclass(frozen=True)
class Installed:
    digest: str
    secure: bool
    entry: str  # title of the boot entry ("" without boot entries)
    options: tuple[str, ...] = ()  # the kernel command line the deployment boots with


def deploy_first(
    sysroot: Sysroot,
    bl: Bootloader | None,
    target: Target,
    *,
    install_args: Sequence[str],
    boot_tries: int = 0,
    etc_files: Mapping[str, bytes] | None = None,
    karg_delete: Sequence[str] = (),
    karg_style: KargStyle = KargStyle.COMPOSEFS,
) -> tuple[MenuEntry | None, list[str]]:
    """The first deployment of a new system: state, shared var, boot files, the menu.

    Without a boot loader (`bl` None) no boot files or entries are written; the
    kernel arguments it must boot with are returned all the same.
    karg_delete: arguments to leave out, whether given or from the image's kargs.d.
    """
    karg = composefs_karg(sysroot, target.digest)
    kargs_d = imagefiles.kargs_d(sysroot.repo, target.boot)
    options = install_kargs(install=install_args, composefs=karg, kargs_d=kargs_d, style=karg_style)
    options, unmatched = delete_kargs(options, karg_delete)
    for arg in unmatched:
        log.warning("--karg-delete %s: the entry has no such kernel argument", arg)
    origin = Origin(target.reference, BootType.BLS, None, target.manifest_digest)
    check_deploy_space(
        sysroot, bl, target, [], init_var=True, action=f"installing {target.reference}"
    )
    if bl is None:
        write_state(sysroot, target, origin, init_var=True, etc_files=etc_files)
        unmanaged.record(sysroot.path)  # later commands look for no ESP of cfsboot's
        return None, options
    entry, digest = build_entry(sysroot, bl, target, options=options, menu=[])
    entry = replace(entry, tries=Tries(boot_tries) if boot_tries else None)
    origin = Origin(target.reference, entry.boot_type, digest, target.manifest_digest)
    write_state(sysroot, target, origin, init_var=True, etc_files=etc_files)
    bl.write_menu([entry])
    return entry, options


def image_efi_names(repo: Repository, target: Target) -> EfiNames:
    """The boot loader file names of the image's architecture (its OCI config's), or of
    this machine's when the config does not say."""
    info = read_image_info(repo, target.digest)
    config = read_config(repo, info.config_digest) if info is not None else None
    arch = config.architecture if config is not None and config.architecture else None
    try:
        return efi_names(arch)
    except NoUefi as e:
        die(f"cannot install a boot loader: {e}", hint="install with --bootloader none")


def _install_loader(
    esp: Esp | None, sysroot: Sysroot, target: Target, opts: InstallOptions
) -> Bootloader | None:
    repo = sysroot.repo
    if opts.bootloader is None or esp is None:
        return None
    names = image_efi_names(repo, target)
    if opts.bootloader is BootloaderKind.SYSTEMD_BOOT:
        binary = imagefiles.read_file(repo, target.tree, names.systemd_boot_in_image)
        if binary is None:
            die(
                f"the image has no /{names.systemd_boot_in_image}",
                hint="install systemd-boot-efi in the image, or use --bootloader grub",
            )
        for path in (names.systemd_boot, names.removable):
            esp.mkdir(path.rsplit("/", 1)[0])
            esp.write(path, binary)
        if opts.boot_timeout is not None and not esp.exists(bls.LOADER_CONF):
            esp.mkdir("loader")
            esp.write_text(bls.LOADER_CONF, f"timeout {opts.boot_timeout}\n")
        return SystemdBoot(esp)
    binary = imagefiles.read_file(repo, target.tree, names.grub_in_image)
    if binary is None:
        die(
            f"the image has no /{names.grub_in_image}",
            hint=f"install {names.grub_package} in the image, or use --bootloader systemd-boot",
        )
    esp.mkdir(names.removable.rsplit("/", 1)[0])
    esp.write(names.removable, binary)
    return Grub(esp, menu_path=GRUB_MENU, timeout=opts.boot_timeout)


GPT_AUTO_GENERATOR = "/usr/lib/systemd/system-generators/systemd-gpt-auto-generator"
GPT_AUTO_KEYS = ("systemd.gpt_auto", "rd.systemd.gpt_auto")
_FALSE = ("0", "no", "n", "false", "f", "off")


def gpt_auto_in_initrd(kargs: Sequence[str]) -> bool:
    """Does systemd-gpt-auto-generator run in the initrd with these arguments? The last
    of systemd.gpt_auto= and rd.systemd.gpt_auto= wins there (rd.* is ignored after it);
    root= with any value but gpt-auto turns its root discovery off."""
    enabled = True
    for arg in kargs:
        key, eq, value = arg.partition("=")
        if key in GPT_AUTO_KEYS:
            enabled = not (eq and value.lower() in _FALSE)
        elif key == "root" and value != "gpt-auto":
            enabled = False
    return enabled


def discoverable_root(
    sysroot: Sysroot, target: Target, opts: InstallOptions, kargs: Sequence[str], wanted: bool
) -> bool:
    """Can the entry leave root= out (the Discoverable Partitions Specification)? Only
    where systemd-boot tells the initrd the boot disk (LoaderDevicePartUUID) and the
    initrd has systemd-gpt-auto-generator, on, to find the root partition by its type."""
    if not wanted or opts.bootloader is not BootloaderKind.SYSTEMD_BOOT:
        return False
    if not gpt_auto_in_initrd(kargs):
        return False
    kernel = imagefiles.newest_kernel(target.boot)
    if kernel is None or kernel.initramfs is None:
        return False  # a UKI: its sealed command line says how it finds the root
    return imagefiles.initrd_has(sysroot.repo, kernel.initramfs, GPT_AUTO_GENERATOR)


def _install_args(
    sysroot: Sysroot, target: Target, opts: InstallOptions, fs_uuid: str | None
) -> list[str]:
    """root= (where it is needed), rw, the image's install config kargs, then --karg's."""
    config = imagefiles.install_config(sysroot.repo, target.tree)
    installconfig.check_block(config)
    wants = config.stateroot if opts.use_image_config and opts.stateroot is None else None
    if wants not in (None, "default"):
        die(f"the image's install config asks for stateroot {wants!r}: cfsboot"
            " keeps one, 'default'", hint="install with --no-image-config")  # fmt: skip
    rest = ["rw", *(config.kargs if opts.use_image_config else ()), *opts.kargs]
    if opts.root_karg is not None:  # the command line's
        root = opts.root_karg
    elif opts.use_image_config and config.root_mount_spec is not None:
        root = f"root={config.root_mount_spec}" if config.root_mount_spec else ""
    elif fs_uuid is None:
        root = ""  # to-filesystem: the caller's business (--root-karg)
    else:
        # As the entry will have them: --karg-delete may drop kargs.d's systemd.gpt_auto=0.
        all_kargs, _ = delete_kargs(
            [*rest, *imagefiles.kargs_d(sysroot.repo, target.boot)], opts.karg_delete
        )
        wanted = config.discoverable_partitions is not False
        dps = discoverable_root(sysroot, target, opts, all_kargs, wanted)
        root = "" if dps else f"root=UUID={fs_uuid}"
    return [*([root] if root else []), *rest]


@contextmanager
def _removed_on_failure(paths: Sequence[Path]) -> Iterator[None]:
    try:
        yield
    except BaseException:
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)
        raise


def _prepare(
    sysroot: Sysroot, imgref: str, opts: InstallOptions, fs_uuid: str | None
) -> tuple[Target, list[str], Mapping[str, bytes] | None]:
    """Import the image and check everything that can refuse it before the ESP is
    written: (the image, the install's kernel arguments, files for the new /etc)."""
    target = import_target(sysroot, imgref, quiet=opts.quiet)
    if target.boot.ukis and (opts.kargs or opts.karg_delete):
        die(
            "kernel arguments cannot be added to or deleted from a UKI (its command line is sealed)"
        )
    if target.boot.ukis and opts.karg_style is not None:
        die(f"--karg-style {opts.karg_style}: {UKI_STYLE_SEALED}")
    etc_files = None
    if opts.root_ssh_keys is not None:
        etc_files = ssh_keys_tmpfiles(
            opts.root_ssh_keys, target.tree, target.config, where=opts.root_ssh_keys_from
        )
    args = _install_args(sysroot, target, opts, fs_uuid)
    imagefiles.kargs_d(sysroot.repo, target.boot)
    return target, args, etc_files


def to_filesystem(
    imgref: str,
    root: Path,
    esp: Esp | None,
    opts: InstallOptions,
    *,
    fs_uuid: str | None = None,
) -> Installed:
    """Install into a mounted root filesystem with the ESP given (None: --bootloader none).

    `fs_uuid`: the root filesystem to_disk just made on a partition typed for the
    Discoverable Partitions Specification (root=UUID= where the initrd cannot find it).
    """
    check_karg_deletes(opts.karg_delete)
    if fs_uuid is None:
        prepare_root(root, opts.replace)
    if opts.bootloader is BootloaderKind.GRUB and esp is not None and esp.exists(GRUB_MENU):
        die(f"the ESP already has {GRUB_MENU}", hint="another system boots from it")
    # What this install makes on the root; a failure before the ESP is written removes
    # it again, so that the next try does not find "a composefs repository" there.
    made = [root / d for d in (REPO_DIR, STATE_DIR) if not os.path.lexists(root / d)]
    with _removed_on_failure(made):
        repo = Repository.init(root / REPO_DIR, algorithm=opts.algorithm, insecure=opts.insecure)
    sysroot = Sysroot(root)
    sysroot.__dict__["repo"] = repo  # the cached property: the repository just made
    with repo.lock():
        with _removed_on_failure(made):
            target, args, etc_files = _prepare(sysroot, imgref, opts, fs_uuid)
        bl = _install_loader(esp, sysroot, target, opts)
        entry, options = deploy_first(
            sysroot,
            bl,
            target,
            install_args=args,
            boot_tries=opts.boot_tries,
            etc_files=etc_files,
            karg_delete=opts.karg_delete,
            karg_style=opts.karg_style or KargStyle.COMPOSEFS,
        )
        extract_sync(root)
    if repo.insecure:
        log.warning(
            "%s has no fs-verity: the system boots with composefs=?%s… (not verified);"
            " run `cfsboot fsverity enable-repo` on it to make it secure",
            root,
            target.digest[:12],
        )
    title = entry.title if entry is not None else ""
    return Installed(target.digest, not repo.insecure, title, tuple(options))


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
    esp = MtoolsEsp(target, made.esp.start) if opts.bootloader is not None else None
    with loop_mounted(target, made.root) as mnt:
        installed = to_filesystem(imgref, mnt, esp, opts, fs_uuid=made.root_fs_uuid)
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return installed


def check_disk_target(target: Path, *, size: int | None, wipe: bool) -> None:
    """Refuse a target in use, or one holding data without `wipe`, or one that is not
    there without `size`; nothing is written."""
    if target.exists():
        targetcheck.check(target, wipe=wipe)
        if size is not None and not target.is_file():
            die(f"--size is for image files, and {target} is not one")
    elif size is None:
        die(f"{target} does not exist", hint="add --size SIZE to create an image file")


def make_image_file(target: Path, size: int | None) -> bool:
    """Create or resize the image file `target` to `size` (a new file holds nothing: it
    needs no --wipe); True when it did not exist before, for a failed install to remove."""
    if size is None:
        return False
    created = not target.exists()
    disk.create_image_file(target, size)
    return created


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
