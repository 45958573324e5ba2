"""`cfsboot container lint`: is this root directory an image cfsboot can boot?

Each check looks at the tree as the image will be (paths inside `root`, its
symlinks resolved inside it, never on the host) and returns findings: errors
(the image will not boot, or not as its author means) and warnings (it boots,
but something in it will not behave as the author may think).
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfsboot.errors import CfsbootError
from cfsboot.image.initramfs import UnsupportedCompression, list_files
from cfsboot.image.kargsd import kargs_d_files, parse_kargs_toml, read_kargs_toml
from cfsboot.image.rootpath import resolve
from cfsboot.linux.arch import NoUefi, efi_names
from setuproot.config import ConfigError, parse_config
from setuproot.contract import SETUP_ROOT_CONFIG

MODULES = "usr/lib/modules"
# What the cfsboot dracut module puts in an initramfs (dracut-module/90cfsboot).
INITRAMFS_NEEDS = (
    "/usr/lib/cfsboot/setup-root/cfsboot-setup-root",
    "/usr/lib/systemd/system/cfsboot-setup-root.service",
)
UKI_DIR = "boot/EFI/Linux"
EXAMPLES = 5  # paths quoted in a finding about many files


class Level(enum.StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    level: Level
    check: str  # the check's name (see CHECKS)
    message: str

    def line(self) -> str:
        return f"{self.level}: {self.check}: {self.message}"

    def to_json(self) -> dict[str, Any]:
        return {"level": str(self.level), "check": self.check, "message": self.message}


def _is_file(root: Path, rel: str) -> Path | None:
    path = resolve(root, rel)
    return path if path is not None and path.is_file() else None


def kernels(root: Path) -> list[str]:
    """Versions of the kernels at usr/lib/modules/KVER/vmlinuz."""
    modules = resolve(root, MODULES)
    if modules is None or not modules.is_dir():
        return []
    return sorted(
        d.name for d in modules.iterdir() if _is_file(root, f"{MODULES}/{d.name}/vmlinuz")
    )


def check_kernel(root: Path) -> Iterator[Finding]:
    found = kernels(root)
    if len(found) == 1:
        return
    if found:
        listed = ", ".join(f"/{MODULES}/{k}/vmlinuz" for k in found)
        yield Finding(
            Level.ERROR, "kernel", f"{len(found)} kernels ({listed}); an image ships exactly one"
        )
        return
    boot = resolve(root, "boot")
    in_boot = sorted(p.name for p in boot.glob("vmlinuz-*")) if boot and boot.is_dir() else []
    hint = (
        f" (/boot has {', '.join(in_boot)}: the cfsboot package's kernel hook copies it to"
        f" /{MODULES}/KVER/vmlinuz; reinstall the kernel after cfsboot)"
        if in_boot
        else " (apt-get install linux-image-amd64 after cfsboot)"
    )
    yield Finding(Level.ERROR, "kernel", f"no kernel at /{MODULES}/*/vmlinuz{hint}")


def check_initramfs(root: Path) -> Iterator[Finding]:
    for kver in kernels(root):
        rel = f"{MODULES}/{kver}/initramfs.img"
        path = _is_file(root, rel)
        if path is None:
            yield Finding(
                Level.ERROR,
                "initramfs",
                f"/{rel} is missing (dracut --no-hostonly --kver {kver} /{rel})",
            )
            continue
        try:
            names = set(list_files(path))
        except UnsupportedCompression as e:  # the kernel unpacks it: only the check is lost
            yield Finding(
                Level.WARNING,
                "initramfs",
                f"/{rel} is {e.kind}-compressed, which cfsboot cannot read: whether it has the"
                " cfsboot module is not checked (zstd, gzip and xz can be)",
            )
            continue
        except CfsbootError as e:
            yield Finding(Level.ERROR, "initramfs", f"/{rel}: {e}")
            continue
        for need in INITRAMFS_NEEDS:
            if need not in names:
                yield Finding(
                    Level.ERROR,
                    "initramfs",
                    f"/{rel} has no {need}: it cannot mount a composefs root"
                    " (build it with dracut's cfsboot module: install cfsboot before dracut runs)",
                )


def check_bootloader(root: Path) -> Iterator[Finding]:
    """The boot loader of this machine's architecture: lint runs in the image's build, where
    `uname -m` is the image's (emulated, for another architecture's image)."""
    try:
        names = efi_names()
    except NoUefi:
        return  # no UEFI here: cfsboot installs no boot loader for it
    if _is_file(root, names.systemd_boot_in_image) or _is_file(root, names.grub_in_image):
        return
    yield Finding(
        Level.ERROR,
        "bootloader",
        f"no boot loader: neither /{names.systemd_boot_in_image} nor /{names.grub_in_image}"
        f" (apt-get install systemd-boot-efi or {names.grub_package})",
    )


def _walk(top: Path) -> Iterator[tuple[Path, bool]]:
    """(path, is_dir) of everything under top, without following symlinks; no recursion."""
    stack = [top]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name, reverse=True)
        except OSError:
            continue
        for e in entries:
            is_dir = e.is_dir(follow_symlinks=False)
            yield Path(e.path), is_dir
            if is_dir:
                stack.append(Path(e.path))


def _many(paths: list[str]) -> str:
    shown = ", ".join(paths[:EXAMPLES])
    return shown + (f" and {len(paths) - EXAMPLES} more" if len(paths) > EXAMPLES else "")


def check_boot_dir(root: Path) -> Iterator[Finding]:
    boot = root / "boot"
    if boot.is_symlink() or not boot.is_dir():
        return
    unused = []
    for path, is_dir in _walk(boot):
        rel = path.relative_to(root).as_posix()
        if is_dir or (rel.startswith(f"{UKI_DIR}/") and rel.endswith(".efi")):
            continue  # UKIs are read from /boot/EFI/Linux before /boot is emptied
        unused.append(f"/{rel}")
    if unused:
        yield Finding(
            Level.WARNING,
            "boot-dir",
            f"/boot is empty in the booted image and only UKIs in /{UKI_DIR} are read from it;"
            f" {len(unused)} files there are never used: {_many(unused)}",
        )


def check_var(root: Path) -> Iterator[Finding]:
    var = root / "var"
    if var.is_symlink() or not var.is_dir():
        return
    files = [f"/{p.relative_to(root).as_posix()}" for p, is_dir in _walk(var) if not is_dir]
    if files:
        yield Finding(
            Level.WARNING,
            "var",
            f"{len(files)} files in /var are copied once, at install, and never updated by"
            f" switch or upgrade: {_many(sorted(files))}"
            " (ship them in /usr and create them at boot with tmpfiles.d)",
        )


def check_setup_root_conf(root: Path) -> Iterator[Finding]:
    rel = SETUP_ROOT_CONFIG.lstrip("/")
    path = _is_file(root, rel)
    if path is None:
        return
    try:
        parse_config(path.read_bytes().decode(), SETUP_ROOT_CONFIG)
    except ConfigError as e:
        yield Finding(Level.ERROR, "setup-root-conf", str(e))
    except UnicodeDecodeError:  # worded as setup-root words it at boot
        yield Finding(Level.ERROR, "setup-root-conf", f"{SETUP_ROOT_CONFIG}: config is not UTF-8")


def check_kargs(root: Path) -> Iterator[Finding]:
    for name, path in kargs_d_files(root):
        try:
            parse_kargs_toml(read_kargs_toml(name, path), name=name, arch="x86_64")
        except CfsbootError as e:
            yield Finding(Level.ERROR, "kargs", str(e))


def check_fstab(root: Path) -> Iterator[Finding]:
    path = _is_file(root, "etc/fstab")
    if path is None:
        return
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1] == "/":
            yield Finding(
                Level.ERROR,
                "fstab",
                f"/etc/fstab:{n} mounts / ({fields[0]}): the composefs image is the root;"
                " remove the line",
            )


CHECKS: dict[str, Callable[[Path], Iterator[Finding]]] = {
    "kernel": check_kernel,
    "initramfs": check_initramfs,
    "bootloader": check_bootloader,
    "boot-dir": check_boot_dir,
    "var": check_var,
    "setup-root-conf": check_setup_root_conf,
    "kargs": check_kargs,
    "fstab": check_fstab,
}


def lint(root: Path, *, skip: tuple[str, ...] = ()) -> list[Finding]:
    """Every finding of every check (except those in skip), errors first."""
    findings = [f for name, check in CHECKS.items() if name not in skip for f in check(root)]
    return sorted(findings, key=lambda f: f.level != Level.ERROR)
