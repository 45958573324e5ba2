"""Soft reboot into the next deployment: userspace restarts, the kernel keeps running.

systemd's soft reboot (systemd >= 254) stops every unit, switches into the
OS tree mounted at /run/nextroot and starts userspace from it: no firmware,
boot loader, kernel or initramfs. cfsboot uses it when the next deployment
would boot the kernel the machine runs now with the same kernel arguments:

- the kernel: the same bytes (the vmlinuz object of a BLS deployment's
  image, the `.linux` section of a UKI);
- the kernel arguments: the same, apart from the composefs= digest, which
  names the deployment;
- the SELinux policy of the image: the same, as systemd does not load
  another policy into the running kernel;
- the initramfs may differ: it does not run again. What it would do for a
  deployment is setup-root's mount of it, and that is done beforehand with
  setup-root's own code and the deployment's own config (the file the
  initramfs would carry, read from the image), so a different initramfs
  changes nothing there. What else it holds (drivers, udev rules, unlocking
  the disk) acts before the physical root is mounted, and the physical root
  stays mounted across a soft reboot.

The order (`soft_reboot`): the decision, before anything changes (so that
`required` fails with nothing done); then finalize (the /etc carry and the
menu exchange the shutdown would do: the stopping finalize service finds
nothing left to do); then the new root at /run/nextroot
(setuproot.nextroot); then `systemctl soft-reboot`. A deployment on boot
trial keeps its trial for its first full boot: a soft reboot does not go
through the boot loader, which does the counting.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cfsboot.boot.bootloader import Bootloader, MenuEntry
from cfsboot.boot.boottype import BootType
from cfsboot.boot.uki import parse_uki
from cfsboot.composefs.repository import Repository
from cfsboot.composefs.tree import Inode, lookup
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import CfsbootError, die
from cfsboot.image import imagefiles
from cfsboot.image.info import read_image_info
from cfsboot.linux.lazyrun import run
from setuproot.config import resolve_etc
from setuproot.contract import (
    KARG,
    KARG_DIGEST,
    ComposefsKarg,
    KargError,
    parse_cmdline,
    split_cmdline,
)

log = logging.getLogger(__name__)

# systemd-soft-reboot.service with /run/nextroot came with systemd 254.
MIN_SYSTEMD = 254


class SoftRebootMode(enum.StrEnum):
    REQUIRED = "required"  # fail (nothing changed) when a soft reboot cannot be done
    AUTO = "auto"  # fall back to a full reboot


@dataclass(frozen=True)
class BootSpec:
    """What a full boot of a deployment would run, as far as a soft reboot cares."""

    kernel: str | None  # identity of the kernel's bytes; None: unknown (no kernel found)
    kargs: tuple[str, ...]  # kernel arguments, without the composefs ones


def without_composefs(args: Sequence[str]) -> tuple[str, ...]:
    """Kernel arguments apart from composefs= and composefs.digest= (they name the deployment)."""
    return tuple(a for a in args if a.partition("=")[0] not in (KARG, KARG_DIGEST))


def why_not(booted: BootSpec, nxt: BootSpec) -> str | None:
    """Why the next deployment cannot be soft-rebooted into from the booted one; None: it can."""
    if booted.kernel is None:
        return "the booted deployment's kernel is not known"
    if nxt.kernel is None:
        return "the next deployment has no kernel to compare"
    if booted.kernel != nxt.kernel:
        return "it boots another kernel (a soft reboot keeps the running one)"
    if booted.kargs != nxt.kargs:
        added = [a for a in nxt.kargs if a not in booted.kargs]
        removed = [a for a in booted.kargs if a not in nxt.kargs]
        what = "; ".join(
            part
            for part in (
                f"added {' '.join(added)}" if added else "",
                f"removed {' '.join(removed)}" if removed else "",
            )
            if part
        )
        return f"its kernel arguments differ ({what or 'in order'})"
    return None


def boot_spec(repo: Repository, entry: MenuEntry) -> BootSpec:
    """The kernel and kernel arguments a menu entry boots (read from the deployment's image)."""
    info = read_image_info(repo, entry.deployment)
    if info is None:
        return BootSpec(None, without_composefs(entry.options))
    if entry.boot_type is BootType.UKI:
        # bootc and build_entry use the first UKI of the image by path.
        for uki_file in sorted(info.boot.ukis, key=lambda u: u.path):
            data = imagefiles.bootfile_bytes(repo, uki_file)
            try:
                uki = parse_uki(data, name=uki_file.path)
            except CfsbootError as e:
                log.warning("%s", e)
                break
            linux = uki.section(".linux")
            ident = None
            if linux is not None:
                h = hashlib.sha256(data[linux.raw_offset : linux.raw_offset + linux.size])
                ident = f"sha256:{h.hexdigest()}"
            return BootSpec(ident, without_composefs(split_cmdline(uki.cmdline or "")))
        return BootSpec(None, ())
    kernel = imagefiles.newest_kernel(info.boot)
    if kernel is None:
        return BootSpec(None, without_composefs(entry.options))
    f = kernel.vmlinuz
    if f.digest is not None:
        ident = f"object:{f.digest}"
    else:
        ident = f"sha256:{hashlib.sha256(f.content or b'').hexdigest()}"
    return BootSpec(ident, without_composefs(entry.options))


def selinux_policy(repo: Repository, tree: Inode) -> str | None:
    """An identity of the image's SELinux policy files (etc/selinux/TYPE/policy/); None: none."""
    config = imagefiles.read_file(repo, tree, "etc/selinux/config")
    if config is None:
        return None
    m = re.search(rb"^\s*SELINUXTYPE\s*=\s*(\S+)", config, re.MULTILINE)
    if m is None:
        return None
    kind = m.group(1).strip(b"\"'")
    policy = lookup(tree, b"etc/selinux/" + kind + b"/policy")
    h = hashlib.sha256(kind + b"\0")
    if policy is not None and policy.children is not None:
        for name in sorted(policy.children):
            node = policy.children[name]
            if node.is_reg():
                h.update(name + b"\0" + hashlib.sha256(imagefiles.node_bytes(repo, node)).digest())
    return h.hexdigest()


def capable(sysroot: Sysroot, bl: Bootloader, entry: MenuEntry) -> bool:
    """status's softRebootCapable: the running system could soft-reboot into `entry`.

    Kernel and kernel arguments only (cheap: no image tree is read); the
    SELinux policy is compared when the soft reboot is asked for.
    """
    booted = _booted_entry(sysroot, bl)
    if booted is None or booted.deployment == entry.deployment:
        return False
    repo = sysroot.repo
    return why_not(boot_spec(repo, booted), boot_spec(repo, entry)) is None


def _booted_entry(sysroot: Sysroot, bl: Bootloader) -> MenuEntry | None:
    booted = sysroot.booted()
    if booted is None:
        return None
    for m in [*bl.menu(), *bl.menu(staged=True)]:
        if m.deployment == booted:
            return m
    return None


def systemd_version() -> int | None:
    """The running systemd's version (`systemctl --version`); None when it cannot be told."""
    try:
        out = run(["systemctl", "--version"], capture=True).stdout.decode(errors="replace")
    except CfsbootError:
        return None
    m = re.match(r"systemd (\d+)", out)
    return int(m.group(1)) if m else None


def same_mount_namespace_as_pid1() -> bool:
    """Whether mounts made here are seen by systemd (PID 1); unknown counts as yes."""
    try:
        return os.stat("/proc/self/ns/mnt").st_ino == os.stat("/proc/1/ns/mnt").st_ino
    except OSError:
        return True


class _Trees:
    """Image trees read once per soft reboot (reading one parses the whole EROFS image)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.trees: dict[str, Inode] = {}

    def __call__(self, digest: str) -> Inode:
        if digest not in self.trees:
            self.trees[digest] = imagefiles.image_tree(self.repo, digest)
        return self.trees[digest]


def blocker(
    sysroot: Sysroot, bl: Bootloader, entry: MenuEntry, trees: _Trees | None = None
) -> str | None:
    """Why the running system cannot soft-reboot into `entry`; None: it can."""
    if not sysroot.live:
        return f"{sysroot.path} is not the physical root of the running cfsboot system"
    if not same_mount_namespace_as_pid1():
        return "cfsboot runs in a mount namespace of its own: systemd would not see /run/nextroot"
    version = systemd_version()
    if version is None or version < MIN_SYSTEMD:
        found = f"systemd {version}" if version is not None else "no systemd version"
        return f"soft reboot into /run/nextroot needs systemd >= {MIN_SYSTEMD} ({found})"
    booted = _booted_entry(sysroot, bl)
    if booted is None:
        return "the booted deployment has no boot entry to compare with"
    repo = sysroot.repo
    reason = why_not(boot_spec(repo, booted), boot_spec(repo, entry))
    if reason is not None:
        return reason
    tree = trees or _Trees(repo)
    if selinux_policy(repo, tree(booted.deployment)) != selinux_policy(
        repo, tree(entry.deployment)
    ):
        return "its SELinux policy differs (a soft reboot keeps the loaded one)"
    return None


def next_karg(sysroot: Sysroot, entry: MenuEntry) -> ComposefsKarg:
    """The composefs karg a full boot of `entry` would give setup-root."""
    cmdline = " ".join(entry.options)
    if entry.boot_type is BootType.UKI:
        info = read_image_info(sysroot.repo, entry.deployment)
        for uki_file in sorted(info.boot.ukis if info else (), key=lambda u: u.path):
            data = imagefiles.bootfile_bytes(sysroot.repo, uki_file)
            cmdline = parse_uki(data, name=uki_file.path).cmdline or ""
            break
    try:
        kargs = parse_cmdline(cmdline)
    except KargError as e:
        die(f"the boot entry of {entry.deployment[:12]}… has a bad composefs karg: {e}")
    for k in kargs:
        if k.digest == entry.deployment:
            return k
    repo = sysroot.repo
    return ComposefsKarg(entry.deployment, repo.algorithm, repo.insecure)


def prepare(
    sysroot: Sysroot, entry: MenuEntry, target: str | None = None, tree: Inode | None = None
) -> str:
    """Mount `entry`'s deployment at `target` (/run/nextroot) with setup-root's code; the path.

    The config is the one its initramfs would read (the image's file), its /etc
    mode resolved against its state directory, as setup-root does at boot.
    """
    from setuproot.mount import SetupError
    from setuproot.nextroot import NEXTROOT, mount_root_at

    where = target or NEXTROOT
    d = entry.deployment
    if tree is None:
        tree = imagefiles.image_tree(sysroot.repo, d)
    state_etc = str(sysroot.deploy_dir(d) / "etc")
    config = resolve_etc(imagefiles.setup_root_config(sysroot.repo, tree), state_etc)
    try:
        mount_root_at(str(sysroot.path), next_karg(sysroot, entry), config, where)
    except SetupError as e:
        raise SoftRebootError(str(e)) from None
    return where


class SoftRebootError(CfsbootError):
    """The next root could not be prepared."""


def soft_reboot(
    sysroot: Sysroot,
    bl: Bootloader,
    mode: SoftRebootMode,
    *,
    staged: bool,
    say: Callable[[str], None],
) -> None:
    """Soft-reboot into the next deployment, else (auto) reboot.

    staged: the next deployment is the staged one (switch/upgrade): it is finalized
    first. Otherwise (rollback) it is the default entry of the live menu already.
    say: gets one line for the user before systemctl is called.
    """
    menu = bl.menu(staged=True) if staged else bl.menu()
    if not menu:
        die("no next deployment to soft-reboot into")
    entry = menu[0]
    short = f"{entry.deployment[:12]}…"
    trees = _Trees(sysroot.repo)
    reason = blocker(sysroot, bl, entry, trees)
    if reason is not None:
        if mode is SoftRebootMode.REQUIRED:
            done = "it stays staged" if staged else "it is the default now"
            die(
                f"cannot soft-reboot into deployment {short}: {reason}",
                hint=f"{done}: reboot to boot it (--apply), or use --soft-reboot=auto",
            )
        say(f"no soft reboot into deployment {short}: {reason}; rebooting")
        _full_reboot()
        return
    if staged:
        # Staging's machinery: `cfsboot status` imports this module for capable().
        from cfsboot.deploy.stage import finalize

        log.info("%s", finalize(sysroot, bl))
    try:
        prepare(sysroot, entry, tree=trees(entry.deployment))
    except SoftRebootError as e:
        if mode is SoftRebootMode.REQUIRED:
            die(
                f"cannot prepare /run/nextroot for deployment {short}: {e}",
                hint="it is the default deployment now: a reboot boots it",
            )
        say(f"no soft reboot into deployment {short}: {e}; rebooting")
        _full_reboot()
        return
    say(f"soft-rebooting into deployment {short} ({entry.title})")
    run(["systemctl", "soft-reboot"])


def _full_reboot() -> None:
    from setuproot.nextroot import NEXTROOT, release

    # systemd >= 256: `systemctl reboot` soft-reboots by itself into a /run/nextroot set up.
    try:
        release(NEXTROOT)
    except Exception as e:  # SetupError: one line; the reboot matters more
        log.warning("%s", e)
    run(["systemctl", "reboot"])
