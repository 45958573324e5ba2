"""`cfsboot fsverity enable-repo`: make an insecure repository secure in place.

For systems installed from a host whose kernel has no fs-verity (this project's
CI hosts, for one): the installed repository is insecure and its entries boot
with `composefs=?HEX`. On the booted system (whose filesystem has the verity
feature) this enables fs-verity on every object, checking that the kernel's
digest equals the object's name, then on meta.json (which is what makes the
repository secure: composefs-rs's rule), and last rewrites the boot entries
to `composefs=HEX` in one atomic menu exchange. An interruption at any point
leaves a system that boots as before; running the command again finishes it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path

from cfsboot.boot.bootloader import Bootloader
from cfsboot.boot.boottype import BootType
from cfsboot.boot.kargs import set_composefs_karg
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import die
from setuproot.contract import OBJECTS_DIR, REPO_META, ComposefsKarg
from setuproot.verity import (
    NoVerity,
    VerityAlreadyEnabled,
    VerityBusy,
    VerityUnsupported,
    enable_verity,
    measure_verity,
)

log = logging.getLogger(__name__)


@dataclass
class EnableReport:
    enabled: int = 0  # objects that got fs-verity now
    already: int = 0  # objects that had it
    entries: int = 0  # boot entries switched to composefs=HEX
    ukis: list[str] | None = None  # UKI entries: their composefs= argument is sealed in

    def summary(self) -> str:
        text = (
            f"fs-verity enabled on {self.enabled} object(s) ({self.already} had it);"
            f" {self.entries} boot entr{'y' if self.entries == 1 else 'ies'} now require it"
        )
        for d in self.ukis or []:
            text += f"\n  note: the UKI of {d[:12]}… keeps the composefs= argument sealed in it"
        return text


def _seal(path: Path, repo: Repository, expected: str | None) -> bool:
    """Enable fs-verity on one file and check its digest; True if it was enabled now."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        now = True
        try:
            enable_verity(fd, repo.algorithm, path=str(path))
        except VerityAlreadyEnabled:
            now = False
        except VerityUnsupported:
            die(
                f"the filesystem of {path} does not support fs-verity",
                hint="ext4 needs the verity feature (tune2fs -O verity DEVICE), and a kernel"
                " with CONFIG_FS_VERITY",
            )
        except VerityBusy:
            die(f"cannot enable fs-verity on {path}: it is open for writing somewhere")
        try:
            alg, digest = measure_verity(fd, path=str(path))
        except NoVerity:
            die(f"{path} has no fs-verity after enabling it")
        if expected is not None and (alg is not repo.algorithm or digest.hex() != expected):
            die(
                f"object {path} is corrupt: its fs-verity digest is {alg}:{digest.hex()}",
                hint="the repository needs repair (re-import the image that uses it)",
            )
        return now
    finally:
        os.close(fd)


def enable_repo(sysroot: Sysroot, bl: Bootloader) -> EnableReport:
    """Secure the repository and its boot entries (the caller holds the repository lock)."""
    if sysroot.staged() is not None and bl.has_staged():
        die(
            "a deployment is staged; its boot entries would be rewritten twice",
            hint="reboot (to finalize it) or run `cfsboot rollback` first",
        )
    repo = sysroot.repo
    report = EnableReport(ukis=[])
    objects = repo.path / OBJECTS_DIR
    for sub in sorted(os.scandir(objects), key=lambda e: e.name):
        if len(sub.name) != 2 or not sub.is_dir(follow_symlinks=False):
            continue
        for obj in sorted(os.scandir(sub.path), key=lambda e: e.name):
            if not obj.is_file(follow_symlinks=False):
                continue
            if _seal(Path(obj.path), repo, sub.name + obj.name):
                report.enabled += 1
            else:
                report.already += 1
    # meta.json last: with verity on it, the repository is secure.
    _seal(repo.path / REPO_META, repo, None)

    menu = bl.menu()
    new_menu = []
    for m in menu:
        if m.boot_type is BootType.UKI:
            new_menu.append(m)
            continue
        karg = ComposefsKarg(m.deployment, repo.algorithm, insecure=False)
        options = set_composefs_karg(list(m.options), karg)
        if options != list(m.options):
            report.entries += 1
        new_menu.append(replace(m, options=tuple(options)))
    for m in menu:
        if m.boot_type is BootType.UKI and report.ukis is not None:
            report.ukis.append(m.deployment)
    if report.entries:
        bl.write_menu(new_menu)
    return report
