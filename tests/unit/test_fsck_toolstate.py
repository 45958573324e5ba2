"""`cfsboot fsck` on cfsboot's own records in state/cfsboot: pins and the cached update.

A root of three deployments D1 < D2 < D3 (D3 the default, standing in for the booted
one offline: --repair never touches it), with pins and a cached-update record broken
one way or another; the exact problems, their JSON, the exit codes, and what --repair
leaves.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cfsboot.deploy.fsck.report import FsckReport
from cfsboot.deploy.fsck.run import fsck_sysroot
from cfsboot.deploy.pins import pinned
from cfsboot.errors import CfsbootError
from cfstest.cli import run as cfsboot
from cfstest.osimages import os_image
from cfstest.sysroots import DirSysroot, make_sysroot

PINS = "state/cfsboot/pinned"
CACHED = "state/cfsboot/cached-update.json"
GONE = "ab" * 64  # a deployment that does not exist


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    base = tmp_path_factory.mktemp("images")
    return [os_image(base / f"v{n}", str(n), kernel=f"k{n}") for n in (1, 2, 3)]


@pytest.fixture
def s(tmp_path: Path, refs: list[str]) -> DirSysroot:
    return make_sysroot(tmp_path / "s", refs)


def fsck(s: DirSysroot, *, repair: bool = False) -> FsckReport:
    return fsck_sysroot(s.root, esp=str(s.esp), run_dir=s.run, do_repair=repair)


def state_section(report: FsckReport) -> list[tuple[str, str, str, str | None]]:
    section = next(x for x in report.sections if x.group == "state")
    return [(p.code, p.path, p.message, p.repair) for p in section.problems]


def _pin(s: DirSysroot, *names: str) -> Path:
    pins = s.root / PINS
    pins.mkdir(parents=True, exist_ok=True)
    for n in names:
        (pins / n).write_bytes(b"")
    return pins


def test_pins(s: DirSysroot) -> None:
    _, d2, d3 = s.digests
    pins = _pin(s, d2, d3, GONE, "AB" * 64, "abc", f".{d2}.cfsboot-tmp-0a1b2c")
    assert state_section(fsck(s)) == [
        (
            "leftover",
            f"{PINS}/.{d2}.cfsboot-tmp-0a1b2c",
            "left by an interrupted write or removal",
            "remove it",
        ),
        (
            "pin-bad-name",
            f"{PINS}/{'AB' * 64}",
            "not a pin (pins are named by a full deployment ID in lower-case hex): cfsboot"
            " ignores it",
            "remove it",
        ),
        (
            "pin-dangling",
            f"{PINS}/{GONE}",
            f"pins deployment {GONE[:16]}…, which no longer exists",
            "remove the pin",
        ),
        (
            "pin-bad-name",
            f"{PINS}/abc",
            "not a pin (pins are named by a full deployment ID in lower-case hex): cfsboot"
            " ignores it",
            "remove it",
        ),
    ]
    fixed = fsck(s, repair=True)
    assert fixed.exit_code == 0 and state_section(fixed) == []
    assert fixed.repaired == [
        f"removed {PINS}/.{d2}.cfsboot-tmp-0a1b2c",
        f"removed {PINS}/{'AB' * 64}",
        f"removed {PINS}/{GONE}",
        f"removed {PINS}/abc",
    ]
    assert sorted(p.name for p in pins.iterdir()) == sorted([d2, d3])


def test_the_protected_deployments_pin_stays(s: DirSysroot) -> None:
    d3 = s.digests[2]
    _pin(s, d3)
    shutil.rmtree(s.state(d3))
    report = fsck(s, repair=True)
    dangling = [p for p in state_section(report) if p[0] == "pin-dangling"]
    assert dangling == [
        (
            "pin-dangling",
            f"{PINS}/{d3}",
            f"pins deployment {d3[:16]}…, which no longer exists",
            None,
        )
    ]
    assert (s.root / PINS / d3).exists()


def test_pins_that_are_not_a_directory(s: DirSysroot) -> None:
    (s.root / "state/cfsboot").mkdir(parents=True)
    (s.root / PINS).write_text("d3\n")
    pattern = r"^cannot read the pins in .*: Not a directory; cfsboot fsck$"
    with pytest.raises(CfsbootError, match=pattern):
        pinned(s.sysroot())
    assert state_section(fsck(s)) == [
        (
            "pins-not-a-directory",
            PINS,
            "is not a directory: it holds no pin, and pin, gc and status cannot read it",
            "remove it",
        )
    ]
    assert fsck(s, repair=True).repaired == [f"removed {PINS}"]
    assert not (s.root / PINS).exists() and pinned(s.sysroot()) == set()


_DAMAGED = "status ignores it"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"{not json", "is not JSON"),
        (b"\xff\xfe", "is not JSON"),
        (b"[" * 100_000, "is not JSON"),  # was a RecursionError out of json.loads
        (b"[]", 'is not a cached update ({"deployment": ID, "image": {...}})'),
        (
            b'{"deployment": "x", "image": {}}',
            'is not a cached update ({"deployment": ID, "image": {...}})',
        ),
        (
            json.dumps({"deployment": GONE, "image": "quay.io/x"}).encode(),
            'is not a cached update ({"deployment": ID, "image": {...}})',
        ),
        (None, "cannot be read: Is a directory"),
    ],
)
def test_a_damaged_cached_update(s: DirSysroot, content: bytes | None, why: str) -> None:
    path = s.root / CACHED
    path.parent.mkdir(parents=True)
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    out = cfsboot("fsck", "--json", *s.args(), check=False)
    assert out.returncode == 1
    doc = json.loads(out.stdout)
    state = next(x for x in doc["sections"] if x["group"] == "state")
    assert state["problems"] == [
        {
            "code": "cached-update-damaged",
            "path": CACHED,
            "message": f"{why}; {_DAMAGED}",
            "subject": CACHED,
            "repair": "remove it",
        }
    ]
    assert (doc["exitCode"], doc["problems"]) == (1, 1)
    fixed = cfsboot("fsck", "--repair", "--json", *s.args(), check=False)
    assert fixed.returncode == 0
    assert json.loads(fixed.stdout)["repaired"] == [f"removed {CACHED}"]
    assert not path.exists()


def test_a_stale_cached_update_is_a_note(s: DirSysroot) -> None:
    d1 = s.digests[0]
    path = s.root / CACHED
    path.parent.mkdir(parents=True)
    (path.parent / ".cached-update.json.cfsboot-tmp-00ff").write_bytes(b"{")
    path.write_text(json.dumps({"deployment": d1, "image": {"image": {}}}))
    assert state_section(fsck(s)) == [
        (
            "leftover",
            "state/cfsboot/.cached-update.json.cfsboot-tmp-00ff",
            "left by an interrupted write or removal",
            "remove it",
        )
    ]
    fsck(s, repair=True)
    assert sorted(p.name for p in path.parent.iterdir()) == ["cached-update.json"]
    shutil.rmtree(s.state(d1))
    out = cfsboot("fsck", *s.args(), check=False)
    assert out.returncode == 1  # D1's entry dangles now; the stale record is only a note
    assert (
        f"  note: {CACHED}: found for deployment {d1[:16]}…, which no longer exists (the next"
        " `cfsboot upgrade --check` replaces it)\n"
    ) in out.stdout
    assert CACHED not in {p.path for p in fsck(s).problems}
