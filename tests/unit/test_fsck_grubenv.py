"""`cfsboot fsck` on GRUB's environment block (EFI/BOOT/grubenv), boot counting's state.

Missing with no counted entry is boot counting off (nothing to say). Missing or
damaged with counted entries: GRUB counts nothing any more, and what the block held
(blessed, out of tries) is lost, so it is left to a person. Damaged with no counted
entry: --repair writes an empty block (it held nothing cfsboot needs).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cfsboot.boot.bootloader import BootloaderKind
from cfsboot.boot.counting import GrubEnv, Tries
from cfsboot.deploy.fsck.report import FsckReport
from cfsboot.deploy.fsck.run import fsck_sysroot
from cfstest.cli import run as cfsboot
from cfstest.osimages import os_image
from cfstest.sysroots import DirSysroot, make_sysroot

ENV = "EFI/BOOT/grubenv"
GARBLED = b"# GRUB Environment Block\nx=1\n"  # header, but not GRUB's 1024 bytes


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    base = tmp_path_factory.mktemp("images")
    return [os_image(base / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2)]


@pytest.fixture
def s(tmp_path: Path, refs: list[str]) -> DirSysroot:
    return make_sysroot(tmp_path / "s", refs, kind=BootloaderKind.GRUB)


def fsck(s: DirSysroot, *, repair: bool = False) -> FsckReport:
    return fsck_sysroot(s.root, esp=str(s.esp), run_dir=s.run, do_repair=repair)


def _on_trial(s: DirSysroot) -> None:
    """The default entry on trial (3 tries), as a staging with boot counting leaves it."""
    bl = s.bootloader()
    first, *rest = bl.menu()
    bl.write_menu([replace(first, tries=Tries(3)), *rest])
    assert (s.esp / ENV).exists()


def test_no_block_without_counting_is_fine(s: DirSysroot) -> None:
    assert not (s.esp / ENV).exists()
    assert fsck(s).exit_code == 0


def test_a_damaged_block_no_entry_counts_in_is_rewritten(s: DirSysroot) -> None:
    (s.esp / ENV).write_bytes(GARBLED)
    [p] = fsck(s).problems
    assert p.line() == (
        f"{ENV}: damaged (not a GRUB environment block ({len(GARBLED)} bytes)): GRUB cannot"
        " use it (no entry counts tries in it yet) [--repair: write an empty environment block]"
    )
    fixed = fsck(s, repair=True)
    assert (fixed.repaired, fixed.exit_code) == (
        ["wrote an empty GRUB environment block: " + ENV],
        0,
    )
    assert GrubEnv.parse((s.esp / ENV).read_bytes()) == GrubEnv()


LOST = (
    ": GRUB counts no boot tries, so a deployment on trial that fails is not passed over"
    " (1 counted entry; which were blessed or out of tries is lost: `grub-editenv"
    f" ESP/{ENV} create`, or the next staging, starts counting again, every one from 0 tries)"
)


def test_a_missing_block_with_counted_entries_is_left_to_a_person(s: DirSysroot) -> None:
    _on_trial(s)
    (s.esp / ENV).unlink()
    report = fsck(s, repair=True)
    [p] = report.problems
    assert (p.code, p.repair) == ("grubenv-missing", None)
    assert p.line() == f"{ENV}: missing{LOST}"
    assert (report.repaired, report.exit_code) == ([], 1)
    assert not (s.esp / ENV).exists()
    # status and gc warn about it too (fsck's quick part).
    out = cfsboot("status", "--json", *s.args())
    assert out.stderr.splitlines()[0] == f"WARNING: {ENV}: missing{LOST}"


def test_a_damaged_block_with_counted_entries_is_left_to_a_person(s: DirSysroot) -> None:
    _on_trial(s)
    (s.esp / ENV).write_bytes(GARBLED)
    report = fsck(s, repair=True)
    [p] = report.problems
    assert (p.code, p.repair) == ("grubenv-damaged", None)
    assert p.line() == f"{ENV}: damaged (not a GRUB environment block (29 bytes)){LOST}"
    assert report.repaired == [] and (s.esp / ENV).read_bytes() == GARBLED
