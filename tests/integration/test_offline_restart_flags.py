"""--apply and --soft-reboot on a root given with --sysroot that is not the running one.

They restart the running system: on a disk image or another machine's root they would
reboot the machine the command runs on (`systemctl reboot`), with the deployment staged
on a disk that machine does not even boot. They are refused before anything is staged.
The command runs in this process with every way to systemctl replaced, so that a
regression fails the test instead of rebooting the machine running it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import cfsboot.linux.run
from cfsboot import cli
from cfsboot.deploy import softreboot, stage
from cfsboot.image.importer import import_image
from cfstest.dirsystem import install
from cfstest.osimages import os_image

pytestmark = [pytest.mark.integration]


def _no_systemctl(argv: Sequence[Any], **kw: Any) -> None:
    raise AssertionError(f"ran {list(argv)}")


@pytest.mark.parametrize(
    ("command", "flag"),
    [
        (("switch", "V4"), "--apply"),
        (("switch", "V4"), "--soft-reboot=auto"),
        (("upgrade",), "--apply"),
        (("upgrade", "--from-downloaded"), "--apply"),
        (("rollback",), "--apply"),
        (("rollback",), "--soft-reboot=required"),
    ],
)
def test_refused_before_anything_changes(
    tmp_path: Path,
    command: tuple[str, ...],
    flag: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    v1 = os_image(tmp_path / "v1", "1")
    v2 = os_image(tmp_path / "v2", "2", kernel="k2")
    v3 = os_image(tmp_path / "v3", "3", kernel="k3")
    v4 = os_image(tmp_path / "v4", "4")
    sys_ = install(tmp_path / "sys", v1)
    sys_.cfs("switch", v2, "-q")
    sys_.cfs("finalize-staged")
    sys_.cfs("switch", v3, "-q", "--download-only")
    d1, d2, d3 = (import_image(ref, None).image_digest for ref in (v1, v2, v3))
    marker = (sys_.run / "composefs/staged-deployment").read_text()
    for module in (cfsboot.linux.run, softreboot, stage):
        monkeypatch.setattr(module, "run", _no_systemctl)
    argv = [v4 if a == "V4" else a for a in command]
    where = ["--sysroot", str(sys_.root), "--esp", str(sys_.esp), "--run-dir", str(sys_.run)]
    assert cli.main([*argv, flag, *where]) == 1
    name = flag.split("=")[0]
    assert capsys.readouterr().err == (
        f"cfsboot: {name} restarts the running system, and {sys_.root} is not its physical"
        f" root; leave out {name}: the deployment boots when that root's machine boots next\n"
    )
    assert sys_.menu() == [d2, d1]
    assert (sys_.run / "composefs/staged-deployment").read_text() == marker
    assert d3 in marker
