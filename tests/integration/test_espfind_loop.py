"""cfsboot.boot.espfind on a real loop-mounted disk image, with real pyudev.

The root filesystem of a GPT disk image is loop-mounted at its offset, as
`install`'s tests and an admin working on an offline disk do. pyudev (through
libudev, which reads sysfs without the udev daemon) sees a loop device
without partitions, which is a disk image: it leaves it to the sysfs path,
which finds the image file behind the loop device and the ESP in its GPT. On
this kind of host the udev path with real partitions cannot run (no udev, no
partition scanning of loop devices); tests/unit/test_espfind.py covers it
with fake devices.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import pyudev

from cfsboot.boot import espfind
from cfsboot.boot.espfind import EspLocation
from cfsboot.linux import mountinfo
from cfstest.gates import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]

MiB = 1 << 20
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
X86_ROOT = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"


@pytest.fixture
def mounted_root(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(disk image, its root filesystem loop-mounted at its offset)."""
    require_tools({"sfdisk": "fdisk", "mkfs.ext4": "e2fsprogs"})
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(40 * MiB)
    script = f"label: gpt\nsize=8MiB, type={ESP}\ntype={X86_ROOT}\n"
    subprocess.run(["sfdisk", "-q", img], input=script.encode(), check=True)
    root_at, root_size = 9 * MiB, 30 * MiB
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={root_at}", img, f"{root_size // 1024}k"],
        check=True,
    )
    mnt = tmp_path / "root"
    mnt.mkdir()
    opts = f"loop,offset={root_at},sizelimit={root_size}"
    subprocess.run(["mount", "-o", opts, img, mnt], check=True)
    try:
        yield img, mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def test_loop_mounted_image(mounted_root: tuple[Path, Path]) -> None:
    img, mnt = mounted_root
    mounts = mountinfo.read()
    loop_dev = os.stat(mnt).st_dev
    here = mountinfo.mount_of(mnt, mounts)
    assert here is not None and here.dev == loop_dev and here.source.startswith("/dev/loop")
    # The mount's source is the loop device itself (what btrfs roots are found by).
    assert espfind._mount_source_dev(mnt / "x", mounts) == loop_dev
    # Real pyudev: a loop device without partitions, so not a disk it can name an ESP on.
    device = pyudev.Devices.from_device_number(pyudev.Context(), "block", loop_dev)
    assert (device.device_node, device.device_type) == (here.source, "disk")
    assert espfind.locate_udev(mnt, mounts) is None
    # The sysfs path: the image file behind the loop device, the ESP from its GPT.
    expect = EspLocation(img, 1, MiB, None)
    assert espfind.locate_sysfs(mnt, mounts) == expect
    assert espfind.locate(mnt, mounts) == expect
