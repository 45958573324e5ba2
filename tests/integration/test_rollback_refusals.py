"""`cfsboot rollback` refuses before it changes anything (root and ESP as directories).

bootc checks for a rollback deployment before it touches the menu; cfsboot also refuses
one that cannot boot (its state, image or boot files gone: bootc's resilience cases),
which would otherwise become the default and leave the machine unbootable. Either way
the staged deployment and the menu stay as they were.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cfsboot.image.importer import import_image
from cfstest.cli import one_line_error
from cfstest.dirsystem import System, install
from cfstest.osimages import os_image

pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("img")
    return {
        "v1": os_image(base / "v1", "1"),
        "v2": os_image(base / "v2", "2", kernel="k2"),
        "v3": os_image(base / "v3", "3", kernel="k3"),
    }


def digest(ref: str) -> str:
    return import_image(ref, None).image_digest


def _marker(sys_: System) -> object:
    return json.loads((sys_.run / "composefs/staged-deployment").read_text())


def test_no_rollback_keeps_the_staged_deployment(tmp_path: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp_path, refs["v1"])
    d1, d2 = digest(refs["v1"]), digest(refs["v2"])
    sys_.cfs("switch", refs["v2"], "-q")
    out = sys_.cfs("rollback", check=False)
    assert one_line_error(out) == (
        "cfsboot: there is no rollback deployment (the boot menu has only one cfsboot entry)"
    )
    assert _marker(sys_) == {"depl_id": d2, "finalization_locked": False}
    assert sys_.menu() == [d1]
    sys_.cfs("finalize-staged")  # still staged: it becomes the default at shutdown
    assert sys_.menu() == [d2, d1]


@pytest.mark.parametrize("what", ["image", "kernel", "state"])
def test_rollback_to_an_unbootable_deployment(
    tmp_path: Path, refs: dict[str, str], what: str
) -> None:
    sys_ = install(tmp_path, refs["v1"])
    d1, d2, d3 = (digest(refs[v]) for v in ("v1", "v2", "v3"))
    sys_.cfs("switch", refs["v2"], "-q")
    sys_.cfs("finalize-staged")
    sys_.cfs("switch", refs["v3"], "-q")
    kdir = f"EFI/Linux/bootc_composefs-{d1}"
    if what == "image":
        (sys_.root / "composefs/images" / d1).unlink()
        why = "its image is not in the repository"
    elif what == "kernel":
        (sys_.esp / kdir / "vmlinuz").unlink()
        why = f"its boot file /{kdir}/vmlinuz is missing from the ESP"
    else:
        shutil.rmtree(sys_.root / "state/deploy" / d1)
        why = f"its state directory state/deploy/{d1[:12]}… is gone"
    entries = sorted(p.name for p in (sys_.esp / "loader/entries").iterdir())
    out = sys_.cfs("rollback", check=False)
    assert out.returncode == 1
    # status's cheap checks warn about the damage first; the refusal is the last line.
    assert "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"cfsboot: cannot roll back to deployment {d1[:12]}… (Test OS): {why}; nothing was"
        " changed; `cfsboot fsck --repair` fetches or copies again what it can"
    )
    assert sys_.menu() == [d2, d1]
    assert sorted(p.name for p in (sys_.esp / "loader/entries").iterdir()) == entries
    assert _marker(sys_) == {"depl_id": d3, "finalization_locked": False}
    assert (sys_.esp / "loader/entries.staged").is_dir()
