"""`cfsboot usr-overlay` on a fake root in a private mount namespace (one "boot" each).

The overlay lives as long as the namespace; the next namespace (the next boot) finds /usr
as the image left it. status reports it in bootc's `usrOverlay` while it is there.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cfstest import bootcschema, cli
from cfstest.dirsystem import System, install
from cfstest.osimages import os_image

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]

# The status of an installed system with the /usr of the fake root, as JSON.
STATUS = """
import json, sys
from pathlib import Path
from cfsboot.boot.bootloader import SystemdBoot
from cfsboot.boot.esp import DirEsp
from cfsboot.deploy.status import host_status
from cfsboot.deploy.sysroot import Sysroot
root, esp, run, usr = map(Path, sys.argv[1:])
print(json.dumps(host_status(Sysroot(root, run_dir=run), SystemdBoot(DirEsp(esp)), usr=usr)))
"""


def _boot(tmp: Path, sys_: System, fake: Path, script: str) -> tuple[str, dict[str, Any]]:
    """Run `script` in a namespace of its own ($C: cfsboot, $R: the fake root, $U: its /usr),
    then status there; returns what the script printed (stderr into stdout) and the status."""
    (tmp / "status.py").write_text(STATUS)
    status = [sys.executable, tmp / "status.py", sys_.root, sys_.esp, sys_.run, fake / "usr"]
    full = f"set -u\nexec 2>&1\n{script}\n{shlex.join(map(str, status))} > {tmp}/status.json\n"
    env = {**cli.environ(), "C": shlex.join(cli.argv()), "R": str(fake), "U": str(fake / "usr")}
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", full],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout
    doc: dict[str, Any] = json.loads((tmp / "status.json").read_text())
    assert bootcschema.unknown(doc) == []
    return proc.stdout, doc


def test_usr_overlay_until_the_next_boot(tmp_path: Path) -> None:
    sys_ = install(tmp_path / "s", os_image(tmp_path / "img", "1"))
    fake = tmp_path / "fake"
    (fake / "usr/bin").mkdir(parents=True)
    (fake / "usr/bin/tool").write_text("from the image\n")
    os.chmod(fake / "usr", 0o755)

    out, doc = _boot(
        tmp_path,
        sys_,
        fake,
        """
$C usr-overlay --root "$R"
echo debug > "$U/bin/strace" && echo WROTE
cat "$U/bin/tool"
stat -c %a "$U"
$C usroverlay --root "$R"
""",
    )
    usr = fake / "usr"
    assert out == (
        f"a read/write overlay is now mounted on {usr}; everything written there goes at the"
        " next boot\n"
        "WROTE\nfrom the image\n755\n"
        f"an overlay is already mounted on {usr} (read/write); it goes at the next boot\n"
    )
    assert doc["status"]["usrOverlay"] == {"accessMode": "readWrite", "persistence": "transient"}

    # The next boot: /usr as the image has it, nothing reported.
    out, doc = _boot(tmp_path, sys_, fake, 'ls "$U/bin"')
    assert out == "tool\n"
    assert doc["status"]["usrOverlay"] is None
    assert sorted(os.listdir(usr / "bin")) == ["tool"]


def test_read_only_usr_overlay(tmp_path: Path) -> None:
    sys_ = install(tmp_path / "s", os_image(tmp_path / "img", "1"))
    fake = tmp_path / "fake"
    (fake / "usr").mkdir(parents=True)
    out, doc = _boot(
        tmp_path,
        sys_,
        fake,
        """
$C usr-overlay --read-only --root "$R"
touch "$U/x" 2>/dev/null || echo READ-ONLY
""",
    )
    assert out == (
        f"a read-only overlay is now mounted on {fake / 'usr'}; everything written there goes"
        " at the next boot\nREAD-ONLY\n"
    )
    assert doc["status"]["usrOverlay"] == {"accessMode": "readOnly", "persistence": "transient"}
