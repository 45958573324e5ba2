"""Entries that name several deployments (`composefs.digest=` and `composefs=` together, as
bootc's entries may: composefs-rs seals one digest per hash algorithm, and hand edits).

setup-root boots the first digest whose image the repository has
(setuproot.main.choose_karg, `composefs.digest=` ones first): the menu says that one
boots, fsck calls such an entry dangling only when none of its deployments exists, and
gc keeps every deployment an entry it keeps names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cfsboot.boot.bls import BLSEntry, booted_digest
from cfstest.cli import run as cfsboot
from cfstest.osimages import os_image
from cfstest.sysroots import DirSysroot, make_sysroot

MISSING = "ab" * 64  # a sha512 digest no repository here has


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    base = tmp_path_factory.mktemp("images")
    return [os_image(base / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2, 3)]


@pytest.fixture
def s(tmp_path: Path, refs: list[str]) -> DirSysroot:
    return make_sysroot(tmp_path / "s", refs)


def _name(s: DirSysroot, version: str, *digests: str) -> Path:
    """Make the entry of `version` name `digests` (composefs.digest= first), nothing else."""
    [entry] = (s.esp / "loader/entries").glob(f"bootc_testos-{version}-*.conf")
    lines = [ln for ln in entry.read_text().splitlines() if not ln.startswith("options ")]
    first, *rest = digests
    opts = [f"composefs.digest=?v1-sha512-12:{first}", *(f"composefs=?{d}" for d in rest), "rw"]
    entry.write_text("\n".join([*lines, "options " + " ".join(opts)]) + "\n")
    return entry


def test_the_first_digest_the_repository_has_boots() -> None:
    e = BLSEntry.parse(
        f"linux /k\noptions composefs.digest=?v1-sha512-12:{MISSING} composefs=?{'cd' * 64} rw\n"
    )
    assert e.digests() == (MISSING, "cd" * 64)
    assert e.deployment() == MISSING  # where the repository is not known: the first
    assert e.deployment(lambda d: d == "cd" * 64) == "cd" * 64
    assert e.deployment(lambda d: False) == MISSING  # setup-root tries the first, and fails
    assert booted_digest(()) is None


def test_an_entry_whose_first_digest_is_missing_is_not_dangling(s: DirSysroot) -> None:
    d1, d2, d3 = s.digests
    _name(s, "1", MISSING, d1)
    out = cfsboot("fsck", *s.args())
    assert out.stdout.splitlines()[-1].startswith("fsck: no problems ("), out.stdout
    doc = cfsboot("status", "--json", *s.args()).stdout
    assert d1 in doc and MISSING not in doc
    # Of two it has, the first: D2's image is there too.
    _name(s, "1", d2, d1)
    assert [m.deployment for m in s.sysroot().attach(s.bootloader()).menu()] == [d3, d2, d2]


def test_an_entry_none_of_whose_deployments_exists_is_dangling(s: DirSysroot) -> None:
    d1 = s.digests[0]
    _name(s, "1", MISSING, "cd" * 64)
    out = cfsboot("fsck", *s.args(), check=False)
    assert (
        f"loader/entries: the boot menu entry for deployment {MISSING[:16]}… boots a deployment"
        f" that does not exist (no state/deploy/{MISSING[:16]}… nor {'cd' * 8}…)"
        " [--repair: remove the entry]"
    ) in out.stdout, out.stdout
    assert out.returncode == 1 and s.state(d1).is_dir()


def test_gc_keeps_the_deployment_an_entry_boots_and_those_it_names(s: DirSysroot) -> None:
    d1, d2, d3 = s.digests
    _name(s, "2", MISSING, d2)  # the rollback entry: kept, and it boots D2
    out = cfsboot("gc", *s.args())
    assert out.stdout.startswith("gc removed 1 deployment(s)"), out.stdout
    assert s.sysroot().deployment_dirs() == sorted([d2, d3])
    assert (s.repo / "images" / d2).exists()
    assert (s.esp / f"EFI/Linux/bootc_composefs-{d2}/vmlinuz").exists()
    assert [m.deployment for m in s.sysroot().attach(s.bootloader()).menu()] == [d3, d2]


def test_gc_keeps_a_deployment_only_a_second_digest_names(s: DirSysroot) -> None:
    d1, d2, d3 = s.digests
    bl = s.bootloader()
    bl.write_menu([m for m in bl.menu() if m.deployment != d1])
    _name(s, "2", d2, d1)  # boots D2 (first, there); D1 would boot without D2's image
    cfsboot("gc", *s.args())
    assert s.sysroot().deployment_dirs() == sorted(s.digests)
    assert (s.repo / "images" / d1).exists()


def test_status_shows_the_deployment_the_default_entry_boots(s: DirSysroot) -> None:
    d3 = s.digests[2]
    _name(s, "3", MISSING, d3)
    out = cfsboot("status", "--json", *s.args())
    doc = json.loads(out.stdout)
    assert out.stderr == ""
    assert doc["status"]["booted"]["composefs"]["verity"] == d3
    assert doc["status"]["cfsboot"]["nextBoot"]["deployment"] == d3
