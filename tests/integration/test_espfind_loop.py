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
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import pyudev

from cfsboot.boot import espfind
from cfsboot.boot.bootloader import SystemdBoot
from cfsboot.boot.esp import DirEsp
from cfsboot.boot.espfind import EspLocation
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.linux import efivars, mountinfo
from cfstest.gates import require_tools

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]

MiB = 1 << 20
ESP = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
X86_ROOT = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"


@contextmanager
def ext4_in_image(
    tmp_path: Path, esp: str, at: int, size: int, name: str
) -> Iterator[tuple[Path, Path]]:
    """(a 40 MiB GPT disk image: an ESP (sfdisk's `esp` fields) and a root, ext4 loop-mounted
    at byte `at` of it, `size` bytes, on tmp_path/name)."""
    require_tools({"sfdisk": "fdisk", "mkfs.ext4": "e2fsprogs"})
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(40 * MiB)
    script = f"label: gpt\n{esp}, type={ESP}\ntype={X86_ROOT}\n"
    subprocess.run(["sfdisk", "-q", img], input=script.encode(), check=True)
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-E", f"offset={at}", img, f"{size // 1024}k"], check=True
    )
    mnt = tmp_path / name
    mnt.mkdir()
    subprocess.run(["mount", "-o", f"loop,offset={at},sizelimit={size}", img, mnt], check=True)
    try:
        yield img, mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


@pytest.fixture
def mounted_root(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(disk image, its root filesystem loop-mounted at its offset)."""
    with ext4_in_image(tmp_path, "size=8MiB", 9 * MiB, 30 * MiB, "root") as found:
        yield found


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


# -- which partition a mounted ESP is (systemd-boot's LoaderDevicePartUUID) -----------------

ESP_UUID = "9F3C2A1B-5D6E-4F70-8A9B-0C1D2E3F4A5B"


@pytest.fixture
def mounted_esp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """(disk image, its ESP partition loop-mounted at its offset).

    This host's kernel has no vfat: the filesystem is ext4, and the mount table cfsboot
    reads calls it vfat. What is looked at is real: the loop device behind the mount, its
    image file and offset in sysfs, the image's GPT.
    """
    esp = f"size=16MiB, uuid={ESP_UUID}"
    with ext4_in_image(tmp_path, esp, MiB, 16 * MiB, "esp") as (img, mnt):
        vfat = tuple(
            replace(m, fstype="vfat") if m.mount_point == str(mnt) else m for m in mountinfo.read()
        )
        monkeypatch.setattr(espfind, "_mounts", lambda: vfat)
        yield img, mnt


def test_partition_uuid_of_a_mounted_esp(
    mounted_esp: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    img, mnt = mounted_esp
    # No udev link for it: sysfs names the image behind the loop device and the offset,
    # the image's GPT the partition that starts there.
    monkeypatch.setattr(espfind, "BY_PARTUUID", str(tmp_path / "by-partuuid"))
    assert espfind.partition_uuid(DirEsp(mnt)) == ESP_UUID
    # A directory in it is not where the ESP is mounted: not known.
    (mnt / "loader").mkdir()
    assert espfind.partition_uuid(DirEsp(mnt / "loader")) is None
    # udev's link to the device, where there is one, names it without a read of the disk.
    here = mountinfo.mount_of(mnt, mountinfo.read())
    assert here is not None and here.source.startswith("/dev/loop")
    (tmp_path / "by-partuuid").mkdir()
    (tmp_path / "by-partuuid" / "0fa1c2e3-0000-4000-8000-000000000001").symlink_to(here.source)
    monkeypatch.setattr(espfind, "_read_layout", lambda t: pytest.fail(f"read the GPT of {t}"))
    assert espfind.partition_uuid(DirEsp(mnt)) == "0FA1C2E3-0000-4000-8000-000000000001"


def test_variables_of_the_loaded_esp_only(mounted_esp: tuple[Path, Path], tmp_path: Path) -> None:
    """On the running system, the loader variables count for the ESP systemd-boot was
    loaded from (LoaderDevicePartUUID), and not for another one --esp names."""
    _, mnt = mounted_esp
    efivars_dir = tmp_path / "efivars"
    efivars_dir.mkdir()

    def set_var(name: str, value: str) -> None:
        data = (7).to_bytes(4, "little") + (value + "\0").encode("utf-16-le")
        (efivars_dir / f"{name}-{efivars.LOADER_GUID}").write_bytes(data)

    set_var(efivars.LOADER_ENTRY_DEFAULT, "other.conf")
    (tmp_path / "root").mkdir()
    sysroot = Sysroot(tmp_path / "root", run_dir=tmp_path / "run", efivars_dir=efivars_dir)
    sysroot.live = True  # what only a booted machine has, set by hand
    bl = SystemdBoot(DirEsp(mnt))
    for loaded, want in ((ESP_UUID, "other.conf"), ("1A2B3C4D-5E6F-4A7B-8C9D-0E1F2A3B4C5D", None)):
        set_var(efivars.LOADER_DEVICE_PART_UUID, loaded)
        lv = sysroot.loader_vars(bl)
        assert lv is not None and lv.default == want
