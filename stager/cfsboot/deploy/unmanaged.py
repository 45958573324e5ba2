"""A system whose boot loader cfsboot does not manage: installed with `--bootloader none`.

Install then writes the repository and the deployment and prints the kernel
arguments to boot it with; the boot entries are the user's. It records that in
`state/cfsboot/bootloader` (the word `none`), so that later commands do not go
looking for an ESP or a menu of cfsboot's (bootc's composefs backend refuses
`--bootloader=none` at install; its status schema has `bootloader: none`).

On such a system the deployments are the state directories (there is no menu to
take them from), the booted one (from the kernel command line and `/`) first,
then the others newest first (by their origin file's time), which `Unmanaged`
hands the readers as the "menu": status shows them (the others as
otherDeployments: cfsboot knows no rollback order), gc keeps the booted,
the newest other, pins and `--keep` as elsewhere, and fsck checks all but the
ESP. What would write boot entries (switch, upgrade, rollback, finalize) is
refused before anything changes (`refusal`).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

from cfsboot.boot.bootloader import Bootloader, BootloaderKind, MenuEntry
from cfsboot.boot.boottype import BootType
from cfsboot.deploy.origin import Origin
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import die
from cfsboot.linux.fsutil import write_file_atomic

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import NoReturn

RECORD = "state/cfsboot/bootloader"
NONE = "none"


def record(root: Path) -> None:
    """Note, at install, that no boot loader is managed on the physical root `root`."""
    path = root / RECORD
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, f"{NONE}\n".encode(), mode=0o644)


def is_unmanaged(sysroot: Sysroot) -> bool:
    try:
        return (sysroot.path / RECORD).read_bytes().strip() == NONE.encode()
    except (FileNotFoundError, NotADirectoryError):
        return False


def refusal(command: str) -> NoReturn:
    """One line: `command` would write a boot entry, and cfsboot writes none here."""
    die(
        f"{command}: this system was installed with --bootloader none ({RECORD}):"
        " cfsboot writes no boot entries on it, so nothing it deploys would boot",
        hint="boot the deployments `cfsboot status` lists from your own boot loader's entries",
    )


class Unmanaged(Bootloader):
    """The deployments of an unmanaged system as a read-only "menu" (see the module)."""

    kind = BootloaderKind.NONE

    def __init__(self, sysroot: Sysroot) -> None:  # no ESP: Bootloader.__init__ is not run
        self.sysroot = sysroot
        self._kept = {}

    def menu(self, *, staged: bool = False) -> list[MenuEntry]:
        if staged:
            return []
        if "menu" not in self._kept:
            self._kept["menu"] = self._read_menu(False)
        return list(self._kept["menu"])  # type: ignore[arg-type]

    def _read_menu(self, staged: bool) -> list[MenuEntry]:
        sysroot = self.sysroot
        booted = sysroot.booted()

        def newest_first(depl: str) -> tuple[bool, float, str]:
            try:
                when = os.stat(sysroot.origin_path(depl)).st_mtime
            except OSError:
                when = 0.0
            return depl != booted, -when, depl

        out = []
        for depl in sorted(sysroot.deployment_dirs(), key=newest_first):
            origin = sysroot.origin_or_error(depl)
            boot_type = origin.boot_type if isinstance(origin, Origin) else BootType.BLS
            # No boot files of cfsboot's: an empty kernel path (its artifact is "").
            out.append(MenuEntry(depl, boot_type, depl[:12], "", "", linux=""))
        return out

    def written_order(self) -> list[str]:
        return [m.deployment for m in self.menu()]

    def _read_written_order(self) -> list[str]:
        return self.written_order()

    def has_staged(self) -> bool:
        return False

    def stage(self, entries: Sequence[MenuEntry]) -> None:
        refusal("writing a boot entry")

    def commit(self) -> None:
        refusal("writing a boot entry")

    def discard_staged(self) -> None:
        return None

    def write_menu(self, entries: Sequence[MenuEntry]) -> None:
        """Nothing to write: the "menu" is the state directories (gc removes those)."""
        self._kept.clear()

    def drop_entries(self, deployments: Collection[str]) -> None:
        self._kept.clear()

    def bless(self, deployment: str, *, counter_path: str | None = None) -> str | None:
        return None

    def recover(self) -> list[str]:
        return []

    def install_kernel(self, name_id: str, vmlinuz: Path, initrd: Path) -> tuple[str, str]:
        refusal("writing a boot entry")

    def install_uki(self, deployment: str, src: Path) -> str:
        refusal("writing a boot entry")

    def has_artifact(self, path: str) -> bool:
        return False

    def artifacts(self) -> list[str]:
        return []

    def remove_artifact(self, path: str) -> None:
        return None
