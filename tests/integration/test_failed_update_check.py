"""`upgrade --check` after an automatic rollback (root and ESP as directories).

The image the followed reference names is the deployment that ran out of boot tries:
`upgrade` does not stage it again, so `--check` must not call it an update (exit 0
and a `cachedUpdate` in status, every time the timer or a script asks, for an update
that never comes); it says why and exits 77. `switch` to it still retries it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cfsboot.image.importer import import_image
from cfstest.dirsystem import install
from cfstest.osimages import os_image

pytestmark = [pytest.mark.integration]


def test_check_after_the_update_failed(tmp_path: Path) -> None:
    layout = tmp_path / "os"
    ref = os_image(layout, "1")
    sys_ = install(tmp_path / "sys", ref)
    d1 = import_image(ref, None).image_digest
    shutil.rmtree(layout)
    os_image(layout, "2")  # the registry's tag moves on
    d2 = import_image(ref, None).image_digest
    sys_.cfs("upgrade", "-q")
    sys_.cfs("finalize-staged")
    entries = sys_.esp / "loader/entries"
    # systemd-boot used up its 3 tries: the entry is passed over, v1 boots again.
    (entries / "bootc_testos-2-1+3.conf").rename(entries / "bootc_testos-2-1+0-3.conf")
    assert sys_.status()["status"]["cfsboot"]["bootAssessment"]["failedDeployment"] == d2

    out = sys_.cfs("upgrade", "--check", check=False)
    assert (out.returncode, out.stdout) == (
        77,
        f"no update: {ref} names deployment {d2[:12]}…, which failed its boot assessment"
        " (3 tries): upgrade does not stage it again; `cfsboot switch` to it retries it\n",
    )
    assert not (sys_.root / "state/cfsboot/cached-update.json").exists()
    assert sys_.status()["status"]["booted"]["cachedUpdate"] is None
    out = sys_.cfs("upgrade")
    assert out.stderr.endswith("failed its boot assessment (3 tries): not staged again;"
                               " `cfsboot switch` to it retries it\n")  # fmt: skip
    assert sys_.menu() == [d1, d2]
    assert not (sys_.run / "composefs/staged-deployment").exists()
