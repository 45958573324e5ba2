"""Physical roots as plain directory trees, made in-process without root (for fsck's unit tests).

What `install` + `switch` + `finalize-staged` leave, minus what needs root (the
image's /etc and /var copied with their owners): a repository with the images
imported through the real pipeline, the boot files and the menu written by the
real bootloader code on a directory ESP, and each deployment's state written
the way write_state writes it (overlay mode: empty etc/upper and etc/work; bind
mode: an etc directory), with its origin, and a stand-in boot loader binary where
install puts it. The first image is the oldest; the last one is the default entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cfsboot.boot.bootloader import Bootloader, BootloaderKind, MenuEntry, SystemdBoot
from cfsboot.boot.esp import DirEsp
from cfsboot.boot.grubloader import Grub
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.entries import build_entry, composefs_karg
from cfsboot.deploy.origin import Origin
from cfsboot.deploy.sysroot import StagedDeployment, Sysroot
from cfsboot.deploy.target import Target, import_target
from cfsboot.linux.arch import efi_names
from setuproot.config import EtcMount
from setuproot.contract import DEPLOY_VAR_LINK_TARGET, REPO_DIR


@dataclass
class DirSysroot:
    root: Path
    esp: Path
    run: Path
    digests: list[str]  # deployments, oldest first (the last is the default)
    kind: BootloaderKind

    def args(self) -> list[str | Path]:
        """The options that point a cfsboot command at this root."""
        return ["--sysroot", self.root, "--esp", self.esp, "--run-dir", self.run]

    def sysroot(self) -> Sysroot:
        return Sysroot(self.root, run_dir=self.run)

    def bootloader(self) -> Bootloader:
        esp = DirEsp(self.esp)
        return SystemdBoot(esp) if self.kind is BootloaderKind.SYSTEMD_BOOT else Grub(esp)

    @property
    def repo(self) -> Path:
        return self.root / REPO_DIR

    def state(self, digest: str) -> Path:
        return self.root / "state/deploy" / digest

    def object(self, hexdigest: str) -> Path:
        return self.repo / "objects" / hexdigest[:2] / hexdigest[2:]

    def menu(self, *, staged: bool = False) -> list[MenuEntry]:
        return self.bootloader().menu(staged=staged)


def _write_state(sysroot: Sysroot, target: Target, origin: Origin) -> None:
    d = sysroot.deploy_dir(target.digest)
    d.mkdir(parents=True)
    os.symlink(DEPLOY_VAR_LINK_TARGET, d / "var")
    if target.config.etc is EtcMount.BIND:
        (d / "etc").mkdir()
    elif target.config.etc is EtcMount.OVERLAY:
        (d / "etc" / "upper").mkdir(parents=True)
        (d / "etc" / "work").mkdir()
    sysroot.write_origin(target.digest, origin)


def make_sysroot(
    base: Path,
    refs: list[str],
    *,
    kind: BootloaderKind = BootloaderKind.SYSTEMD_BOOT,
    staged: str | None = None,
) -> DirSysroot:
    """A root under `base` with one deployment per IMGREF in `refs` (see the module docstring).

    `staged`: one more IMGREF, deployed and staged (staged menu and marker) but not finalized.
    """
    root, esp, run = base / "root", base / "esp", base / "run"
    for d in (root, esp):
        d.mkdir(parents=True)
    repo = Repository.init(root / REPO_DIR, insecure=True)
    sysroot = Sysroot(root, run_dir=run)
    sysroot.__dict__["repo"] = repo
    bl: Bootloader = (
        SystemdBoot(DirEsp(esp)) if kind is BootloaderKind.SYSTEMD_BOOT else Grub(DirEsp(esp))
    )
    (root / "state/os/default/var").mkdir(parents=True)
    names = efi_names("x86_64")
    loaders = [names.removable]
    if kind is BootloaderKind.SYSTEMD_BOOT:
        loaders.append(names.systemd_boot)
    for rel in loaders:
        (esp / rel).parent.mkdir(parents=True, exist_ok=True)
        (esp / rel).write_bytes(b"MZ boot loader stand-in")
    menu: list[MenuEntry] = []
    digests: list[str] = []
    all_refs = [*refs, *([staged] if staged else [])]
    with repo.lock():
        for i, ref in enumerate(all_refs):
            target = import_target(sysroot, ref)
            options = [composefs_karg(sysroot, target.digest).to_karg(), "rw"]
            entry, boot_digest = build_entry(sysroot, bl, target, options=options, menu=menu)
            origin = Origin(target.reference, entry.boot_type, boot_digest, target.manifest_digest)
            _write_state(sysroot, target, origin)
            if staged is not None and i == len(refs):
                bl.stage([entry, *menu])
                sysroot.write_staged(StagedDeployment(target.digest))
            else:
                menu.insert(0, entry)
                bl.write_menu(menu)
            digests.append(target.digest)
    return DirSysroot(root, esp, run, digests, kind)
