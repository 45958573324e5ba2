"""`cfsboot status --json` run from the command line keeps its output
(cfsboot.linux.outputcache): each run after a change to the system prints what a run
that works the status out in full prints, and a run on an unchanged system prints the
kept output without working it out again."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cfsboot.boot.counting import Tries, counted_name, split_name
from cfstest.cli import run as cfsboot
from cfstest.dirsystem import System, install
from cfstest.osimages import os_image

TICK = 0.03  # past the filesystem's timestamp granularity
KEPT = {"CFSBOOT_OUTPUT_CACHE_RACY_MS": "0"}  # the racy window off: the test waits instead
FULL = {"CFSBOOT_OUTPUT_CACHE": "0"}


def installed(tmp: Path) -> System:
    """A system installed offline; its run directory there, as /run is on a running one."""
    system = install(tmp / "sys", os_image(tmp / "v1", "1"))
    system.run.mkdir()
    time.sleep(TICK)
    return system


def status(system: System, env: dict[str, str], *extra: str) -> str:
    """What `status --json` (or `status EXTRA`) prints: stdout, and stderr after it when it
    warns (a run that warns is never kept: each prints its warnings)."""
    opts: list[str | Path] = ["--sysroot", system.root, "--esp", system.esp]
    opts += ["--run-dir", system.run]
    args = list(extra) if extra else ["--json"]
    proc = cfsboot("status", *args, *opts, env=env)
    return proc.stdout + (f"\nstderr:\n{proc.stderr}" if proc.stderr else "")


def records(system: System) -> dict[str, int]:
    """The kept outputs: name -> inode (a record written again is a new file)."""
    base = system.run / "cfsboot"
    return {n: os.stat(base / n).st_ino for n in os.listdir(base)} if base.exists() else {}


def _counted(system: System) -> None:
    """What systemd-boot does to the default entry of a boot on trial, then
    systemd-bless-boot: the entry renamed, its tries counted down."""
    entries = system.esp / "loader/entries"
    first = sorted(entries.iterdir())[-1]
    name, _ = split_name(first.name)
    first.rename(entries / counted_name(name, Tries(2, 1)))


def _loader_default(system: System) -> None:
    (system.esp / "loader/loader.conf").write_text("timeout 3\ndefault nothing-*\n")


def _unstage(system: System) -> None:
    marker = system.run / "composefs/staged-deployment"
    marker.unlink()


CHANGES: list[tuple[str, Callable[[System, Path], object]]] = [
    ("switch", lambda s, t: s.cfs("switch", os_image(t / "v2", "2"), "-q")),
    ("finalize", lambda s, t: s.cfs("finalize-staged")),
    ("entry counted by the boot loader", lambda s, t: _counted(s)),
    ("pin", lambda s, t: s.cfs("pin", "rollback")),
    (
        "switch, download only",
        lambda s, t: s.cfs("switch", os_image(t / "v3", "3"), "-q", "--download-only"),
    ),  # fmt: skip
    ("staged marker gone (a reboot)", lambda s, t: _unstage(s)),
    ("rollback", lambda s, t: s.cfs("rollback")),
    ("loader.conf default", lambda s, t: _loader_default(s)),
    ("unpin", lambda s, t: s.cfs("unpin", "rollback")),
    ("gc", lambda s, t: s.cfs("gc")),
    ("run directory emptied", lambda s, t: shutil.rmtree(s.run / "cfsboot")),
]


def test_kept_output_follows_every_change(tmp_path: Path) -> None:
    system = installed(tmp_path)
    first = status(system, KEPT)
    assert first == status(system, FULL)
    kept = records(system)
    assert len(kept) == 1
    assert status(system, KEPT) == first
    assert records(system) == kept  # printed from the record, not worked out and written
    for name, change in CHANGES:
        change(system, tmp_path)
        time.sleep(TICK)
        full = status(system, FULL)
        assert status(system, KEPT) == full, f"after {name}"
        kept = records(system)
        assert status(system, KEPT) == full, f"after {name}, printed again"
        assert records(system) == kept, f"after {name}: the second run was worked out again"
        time.sleep(TICK)


@pytest.mark.parametrize("extra", [["--json", "--booted"], ["--format", "yaml"], ["--yaml"]])
def test_each_command_line_has_its_own_record(tmp_path: Path, extra: list[str]) -> None:
    system = installed(tmp_path)
    plain, other = status(system, KEPT), status(system, KEPT, *extra)
    assert len(records(system)) == 2
    assert (status(system, KEPT), status(system, KEPT, *extra)) == (plain, other)
    assert other == status(system, FULL, *extra)


def test_the_racy_window_keeps_nothing_of_a_fresh_system(tmp_path: Path) -> None:
    system = installed(tmp_path)
    status(system, {})
    assert records(system) == {}


def test_a_caller_in_the_process_is_never_answered_from_a_record(tmp_path: Path) -> None:
    import contextlib
    import io

    from cfsboot.cli import main

    system = installed(tmp_path)
    opts = ["--sysroot", str(system.root), "--esp", str(system.esp), "--run-dir", str(system.run)]
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert main(["status", "--json", *opts]) == 0
    assert records(system) == {}
    assert out.getvalue() == status(system, FULL)
