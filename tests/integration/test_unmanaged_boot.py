"""A system installed with `--bootloader none` (cfsboot.deploy.unmanaged): the boot
entries are the user's, so status, gc and fsck work from the state directories and
look for no ESP (no --esp is given here: an offline root has no disk to find one on),
and what would write a boot entry is refused before anything changes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cfsboot.image.importer import import_image
from cfstest import bootcschema
from cfstest.cli import one_line_error
from cfstest.cli import run as cfsboot
from cfstest.dirsystem import System, install
from cfstest.osimages import os_image

pytestmark = [pytest.mark.integration]

REFUSAL = (
    "cfsboot: {cmd}: this system was installed with --bootloader none"
    " (state/cfsboot/bootloader): cfsboot writes no boot entries on it, so nothing it"
    " deploys would boot; boot the deployments `cfsboot status` lists from your own boot"
    " loader's entries"
)


def _unmanaged(tmp: Path) -> tuple[System, str, str]:
    v1 = os_image(tmp / "v1", "1")
    sys_ = install(tmp / "sys", v1, "--bootloader", "none")
    return sys_, v1, import_image(v1, None).image_digest


def _cfs(sys_: System, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return cfsboot(*args, "--sysroot", sys_.root, "--run-dir", sys_.run, check=check)


def _status(sys_: System) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(_cfs(sys_, "status", "--json").stdout)
    return doc


def _add_deployment(sys_: System, model: str, depl: str, when: int) -> None:
    """A deployment made as install makes one (its state directory copied, renamed)."""
    src, dst = sys_.root / "state/deploy" / model, sys_.root / "state/deploy" / depl
    shutil.copytree(src, dst, symlinks=True)
    (dst / f"{model}.origin").rename(dst / f"{depl}.origin")
    os.utime(dst / f"{depl}.origin", (when, when))


def test_install_records_it(tmp_path: Path) -> None:
    sys_, _, _ = _unmanaged(tmp_path)
    assert (sys_.root / "state/cfsboot/bootloader").read_text() == "none\n"
    assert list(sys_.esp.iterdir()) == []


def test_status_shows_the_deployments(tmp_path: Path) -> None:
    sys_, v1, d1 = _unmanaged(tmp_path)
    assert _cfs(sys_, "status", "--json").stderr == ""  # nothing to warn about
    doc = _status(sys_)
    status = doc["status"]
    # Offline, the newest deployment stands in for the booted one.
    assert status["booted"]["composefs"]["verity"] == d1
    assert status["booted"]["composefs"]["bootloader"] == "none"
    assert status["booted"]["image"]["image"] == {
        "image": v1.removeprefix("oci:"),
        "transport": "oci",
    }
    assert status["rollback"] is None
    assert status["cfsboot"]["nextBoot"] == {"deployment": None, "entry": None, "override": None}
    older, oldest = "a" * 128, "b" * 128
    _add_deployment(sys_, d1, older, 2_000_000_000)
    _add_deployment(sys_, d1, oldest, 1_000_000_000)
    os.utime(sys_.root / "state/deploy" / d1 / f"{d1}.origin", (2_100_000_000, 2_100_000_000))
    doc = _status(sys_)
    bootcschema.check(doc)  # bootc's schema has `bootloader: none`
    status = doc["status"]
    # cfsboot knows no rollback order here: the others are otherDeployments, newest first.
    assert status["rollback"] is None
    others = [e["composefs"]["verity"] for e in status["otherDeployments"]]
    assert [status["booted"]["composefs"]["verity"], *others] == [d1, older, oldest]
    human = _cfs(sys_, "status", "--format", "human").stdout
    assert "     Boot type: Bls (boot loader not managed by cfsboot)\n" in human


def test_gc_keeps_the_newest_and_removes_the_rest(tmp_path: Path) -> None:
    sys_, _, d1 = _unmanaged(tmp_path)
    older, oldest = "a" * 128, "b" * 128
    _add_deployment(sys_, d1, older, 2_000_000_000)
    _add_deployment(sys_, d1, oldest, 1_000_000_000)
    os.utime(sys_.root / "state/deploy" / d1 / f"{d1}.origin", (2_100_000_000, 2_100_000_000))
    proc = _cfs(sys_, "gc")
    assert proc.stdout.startswith("gc removed 1 deployment(s), 0 boot file set(s)")
    assert sorted(os.listdir(sys_.root / "state/deploy")) == sorted([d1, older])


def test_fsck_checks_all_but_the_esp(tmp_path: Path) -> None:
    sys_, _, _ = _unmanaged(tmp_path)
    proc = _cfs(sys_, "fsck")
    lines = proc.stdout.splitlines()
    assert lines[1] == f"state {sys_.root}: 1 deployment(s)"
    assert lines[2] == "esp none: not managed by cfsboot (state/cfsboot/bootloader): not checked"
    assert lines[3].startswith("fsck: no problems")


@pytest.mark.parametrize(
    "command", [("switch", "V2"), ("upgrade",), ("upgrade", "--from-downloaded"), ("rollback",)]
)
def test_lifecycle_refused_before_anything_changes(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    sys_, _, d1 = _unmanaged(tmp_path)
    v2 = os_image(tmp_path / "v2", "2")
    argv = [v2 if a == "V2" else a for a in command]
    proc = _cfs(sys_, *argv, check=False)
    assert one_line_error(proc) == REFUSAL.format(cmd=command[0])
    assert os.listdir(sys_.root / "state/deploy") == [d1]
    assert not (sys_.run / "composefs/staged-deployment").exists()
    assert list(sys_.esp.iterdir()) == []
