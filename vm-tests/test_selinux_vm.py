"""SELinux: a test OS with Debian's policy, booted permissive from its labelled composefs image.

The `selinux` variant of the test OS (osimage.py) adds selinux-policy-default
and the kernel arguments `security=selinux selinux=1 enforcing=0`. cfsboot
labels its boot image from that policy at import; the guest (scenario
`selinux`) checks SELinux is on and permissive, that a file carries the label
the policy gives, and that `restorecon -n -v -R /usr /etc` would change
nothing on the composefs root.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import osimage
import qemu
from installed import booted_ok, install

pytestmark = pytest.mark.vm


def test_selinux_labels_need_no_relabel(base_rootfs: Path, tmp_path: Path) -> None:
    from conftest import CACHE, SESSION_STAMP

    image = osimage.ensure_images(("selinux",), CACHE)["selinux"]
    results = qemu.results_root() / SESSION_STAMP / "selinux"
    results.mkdir(parents=True, exist_ok=True)
    disk = tmp_path / "disk.raw"
    print(f"\ninstall to-disk: {install(image, disk):.1f} s")
    try:
        result = booted_ok(disk, results, ("selinux",), {"selinux": image.image_id})
        assert result.report.data["selinux"]["would_relabel"] == "0"
        assert result.report.data["selinux"]["enforce"] == "0"
    finally:
        disk.unlink(missing_ok=True)
