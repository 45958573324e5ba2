"""cfsboot.boot.espfind: which ESP a physical root uses, through mountinfo, udev or sysfs.

This host has no udev (no /run/udev, and loop devices get no partitions), so
the udev path runs here against fake pyudev devices that answer the calls
espfind makes (Devices.from_device_number, device_type, find_parent,
children, properties, attributes.asstring, device_node) the way pyudev does on
a booted Debian; tests/integration/test_espfind_loop.py runs real pyudev on a
real loop device.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import pyudev

from cfsboot.boot import espfind
from cfsboot.boot.esp import DirEsp, MtoolsEsp
from cfsboot.boot.espfind import EspLocation
from cfsboot.boot.espview import ReadOnceEsp
from cfsboot.boot.gpt import ESP_TYPE, DiskLayout, Partition
from cfsboot.linux import mountinfo
from cfstest.gates import require_tools

ROOT_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
MiB = 1 << 20
Mounts = tuple[mountinfo.Mount, ...]


def mounts_of(*lines: str) -> Mounts:
    return mountinfo.parse("".join(f"{ln}\n" for ln in lines).encode())


ROOT = "25 1 0:22 / / ro,relatime shared:1 - overlay composefs:abc ro"
SYSROOT = "30 25 252:2 / /sysroot rw,relatime shared:2 - ext4 /dev/vda2 rw"


# -- an ESP that is already mounted ------------------------------------------------------


@pytest.fixture
def no_locate(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """espfind.locate answers "partition 1 of disk.img at 1 MiB, no node" and records calls."""
    calls: list[Path] = []

    def locate(sysroot: Path, mounts: Sequence[mountinfo.Mount]) -> EspLocation:
        calls.append(sysroot)
        return EspLocation(Path("/x/disk.img"), 1, MiB, None)

    monkeypatch.setattr(espfind, "locate", locate)
    return calls


def open_with(monkeypatch: pytest.MonkeyPatch, mounts: Mounts, sysroot: str = "/sysroot") -> object:
    monkeypatch.setattr(espfind, "_mounts", lambda: mounts)
    with espfind.open_esp(Path(sysroot)) as esp:
        return esp


def test_mounted_esp_of_the_booted_system(
    monkeypatch: pytest.MonkeyPatch, no_locate: list[Path]
) -> None:
    mounts = mounts_of(
        ROOT, SYSROOT, "40 25 252:1 / /boot/efi rw,relatime - vfat /dev/vda1 rw,fmask=0077"
    )
    esp = open_with(monkeypatch, mounts)
    assert isinstance(esp, DirEsp) and esp.root == Path("/boot/efi")
    assert no_locate == []
    # /efi comes first.
    mounts = (*mounts, *mounts_of("41 25 252:1 / /efi rw - vfat /dev/vda1 rw"))
    esp = open_with(monkeypatch, mounts)
    assert isinstance(esp, DirEsp) and esp.root == Path("/efi")


def test_a_bind_mount_or_a_hidden_mount_is_not_the_esp(
    monkeypatch: pytest.MonkeyPatch, no_locate: list[Path]
) -> None:
    mounts = mounts_of(
        ROOT,
        SYSROOT,
        # A directory of the FAT filesystem bind-mounted at /boot/efi: not its root.
        "40 25 252:1 /EFI /boot/efi rw,relatime - vfat /dev/vda1 rw",
        # A vfat at /efi, then something else mounted over it.
        "41 25 252:1 / /efi rw - vfat /dev/vda1 rw",
        "42 41 0:40 / /efi rw - tmpfs tmpfs rw",
    )
    esp = open_with(monkeypatch, mounts)
    assert isinstance(esp, MtoolsEsp) and (esp.image, esp.offset) == (Path("/x/disk.img"), MiB)
    assert no_locate == [Path("/sysroot")]


def test_an_offline_sysroot_does_not_use_the_host_s_esp(
    monkeypatch: pytest.MonkeyPatch, no_locate: list[Path], tmp_path: Path
) -> None:
    mounts = mounts_of(ROOT, "40 25 252:1 / /boot/efi rw - vfat /dev/vda1 rw")
    esp = open_with(monkeypatch, mounts, str(tmp_path))
    assert isinstance(esp, MtoolsEsp)
    assert no_locate == [tmp_path]


def test_a_located_partition_already_mounted_elsewhere_is_used(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    node = tmp_path / "vda1"  # stands in for the device node the mount names
    node.touch()
    monkeypatch.setattr(
        espfind, "locate", lambda sysroot, mounts: EspLocation(Path("/dev/vda"), 1, MiB, node)
    )
    mounts = mounts_of(
        ROOT,
        f"40 25 252:1 /sub /mnt/bind rw - vfat {node} rw",
        f"41 25 252:1 / /mnt/esp\\040here rw - vfat {node} rw",
    )
    esp = open_with(monkeypatch, mounts)
    assert isinstance(esp, DirEsp) and esp.root == Path("/mnt/esp here")


# -- locate: udev where it runs, else sysfs -----------------------------------------------


def test_locate_prefers_udev_and_falls_back_to_sysfs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    udev = EspLocation(Path("/dev/vda"), 1, MiB, Path("/dev/vda1"))
    sysfs = EspLocation(Path("/x/disk.img"), 1, MiB, None)
    answers: list[EspLocation | None] = [udev, None]
    monkeypatch.setattr(espfind, "locate_udev", lambda p, m: answers.pop(0))
    monkeypatch.setattr(espfind, "locate_sysfs", lambda p, m: sysfs)
    monkeypatch.setattr(espfind, "udev_running", lambda: True)
    assert espfind.locate(tmp_path, ()) == udev
    assert espfind.locate(tmp_path, ()) == sysfs  # udev could not say: a disk image
    monkeypatch.setattr(espfind, "udev_running", lambda: False)
    monkeypatch.setattr(espfind, "locate_udev", lambda p, m: pytest.fail("udev is not running"))
    assert espfind.locate(tmp_path, ()) == sysfs


def test_udev_running_is_its_control_socket(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(espfind, "UDEV_CONTROL", str(tmp_path / "control"))
    assert not espfind.udev_running()
    (tmp_path / "control").touch()
    assert espfind.udev_running()


# -- the udev path, against fake pyudev devices ------------------------------------------


@dataclass
class FakeAttributes:
    values: dict[str, str]

    def asstring(self, name: str) -> str:
        return self.values[name]  # pyudev raises KeyError for a missing attribute too


@dataclass
class FakeDevice:
    """The part of pyudev.Device that espfind uses."""

    device_node: str | None
    device_type: str
    properties: dict[str, str] = field(default_factory=dict)
    attributes: FakeAttributes = field(default_factory=lambda: FakeAttributes({}))
    children: list[FakeDevice] = field(default_factory=list)
    parent: FakeDevice | None = None

    def find_parent(self, subsystem: str, device_type: str | None = None) -> FakeDevice | None:
        assert (subsystem, device_type) == ("block", "disk")
        return self.parent


def fake_disk(*, probed: bool = True) -> FakeDevice:
    """/dev/vda with an ESP (vda1, 1 MiB in) and a root (vda2), as udev (with blkid) sees it."""
    disk = FakeDevice("/dev/vda", "disk")
    for number, (type_uuid, start) in enumerate(((ESP_TYPE, 2048), (ROOT_TYPE, 2099200)), 1):
        props = {"DEVTYPE": "partition"}
        if probed:
            props |= {"ID_PART_ENTRY_SCHEME": "gpt", "ID_PART_ENTRY_TYPE": type_uuid.lower()}
        attrs = FakeAttributes({"partition": str(number), "start": str(start)})
        disk.children.append(FakeDevice(f"/dev/vda{number}", "partition", props, attrs))
    for child in disk.children:
        child.parent = disk
    return disk


def udev_with(monkeypatch: pytest.MonkeyPatch, path: Path, device: FakeDevice | None) -> None:
    want = espfind._root_dev(path, ())

    def from_device_number(context: object, typ: str, number: int) -> FakeDevice:
        assert (context, typ, number) == ("ctx", "block", want)
        if device is None:
            raise pyudev.DeviceNotFoundByNumberError(typ, number)
        return device

    monkeypatch.setattr(pyudev.Devices, "from_device_number", from_device_number)


def no_gpt_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(espfind, "_read_layout", lambda t: pytest.fail(f"read the GPT of {t}"))


def test_udev_root_on_a_partition(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    disk = fake_disk()
    udev_with(monkeypatch, tmp_path, disk.children[1])  # the root is vda2
    no_gpt_read(monkeypatch)
    assert espfind.locate_udev(tmp_path, (), "ctx") == EspLocation(
        Path("/dev/vda"), 1, 2048 * 512, Path("/dev/vda1")
    )


def test_udev_root_on_the_whole_disk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    udev_with(monkeypatch, tmp_path, fake_disk())
    no_gpt_read(monkeypatch)
    found = espfind.locate_udev(tmp_path, (), "ctx")
    assert found is not None and found.node == Path("/dev/vda1")


def test_udev_without_blkid_properties_reads_the_gpt(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    disk = fake_disk(probed=False)
    udev_with(monkeypatch, tmp_path, disk.children[1])
    layout = DiskLayout(
        Path("/dev/vda"),
        512,
        "D15C0000-0000-0000-0000-000000000000",
        (
            Partition(1, 2048 * 512, 1024 * MiB, ESP_TYPE, "E5P", "EFI-SYSTEM"),
            Partition(2, 2099200 * 512, 8 * 1024 * MiB, ROOT_TYPE, "R00T", "root"),
        ),
    )
    read: list[Path] = []

    def read_layout(target: Path) -> DiskLayout:
        read.append(target)
        return layout

    monkeypatch.setattr(espfind, "_read_layout", read_layout)
    assert espfind.locate_udev(tmp_path, (), "ctx") == EspLocation(
        Path("/dev/vda"), 1, 2048 * 512, Path("/dev/vda1")
    )
    assert read == [Path("/dev/vda")]


def test_udev_cannot_say(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_gpt_read(monkeypatch)
    # A loop device over a partition's byte range: no partitions, a disk image.
    udev_with(monkeypatch, tmp_path, FakeDevice("/dev/loop0", "disk"))
    assert espfind.locate_udev(tmp_path, (), "ctx") is None
    # An anonymous device with no block device behind it.
    udev_with(monkeypatch, tmp_path, None)
    assert espfind.locate_udev(tmp_path, (), "ctx") is None


# -- the sysfs path's helpers ---------------------------------------------------------------


def test_partition_node_names(tmp_path: Path) -> None:
    assert espfind._partition_node(tmp_path / "disk.img", 1) is None  # an image has none
    assert espfind._partition_node(Path("/dev/no-such-disk"), 1) is None


def test_mount_source_dev_needs_a_block_device() -> None:
    """btrfs: st_dev is anonymous, so the mount's source is followed (integration: a real
    loop device); a source that is not a block device gives nothing."""
    mounts = mounts_of(ROOT, "30 25 0:45 / /sysroot rw - btrfs /dev/null rw")
    assert espfind._mount_source_dev(Path("/sysroot/x"), mounts) is None
    mounts = mounts_of(ROOT, "30 25 0:45 / /sysroot rw - btrfs /no/such/device rw")
    assert espfind._mount_source_dev(Path("/sysroot/x"), mounts) is None
    assert espfind._mount_source_dev(Path("/elsewhere"), ()) is None


# -- which partition an ESP is ---------------------------------------------------------------

ESP_UUID = "9F3C2A1B-5D6E-4F70-8A9B-0C1D2E3F4A5B"


def test_partition_uuid_from_the_gpt(tmp_path: Path) -> None:
    require_tools({"sfdisk": "fdisk"})
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(8 * MiB)
    script = f"label: gpt\nstart=2048, size=4MiB, type={ESP_TYPE}, uuid={ESP_UUID.lower()}\n"
    subprocess.run(["sfdisk", "-q", img], input=script.encode(), check=True)
    # --esp DISK: found in the GPT, which names it (also through status's read-once view).
    with espfind.open_esp(tmp_path, str(img)) as esp:
        assert espfind.partition_uuid(ReadOnceEsp(esp)) == ESP_UUID
    # --esp DISK@OFFSET: the partition that starts there, if any.
    assert espfind.partition_uuid(MtoolsEsp(img, MiB)) == ESP_UUID
    assert espfind.partition_uuid(MtoolsEsp(img, 2 * MiB)) is None
    assert espfind.partition_uuid(MtoolsEsp(tmp_path / "none", MiB)) is None
    (tmp_path / "fat.img").write_bytes(bytes(MiB))  # no GPT at all
    assert espfind.partition_uuid(MtoolsEsp(tmp_path / "fat.img", 0)) is None


def test_partition_uuid_of_a_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A plain directory standing in for an ESP: no partition to name.
    assert espfind.partition_uuid(DirEsp(tmp_path)) is None
    # A directory with a vfat filesystem mounted on it, whose device sysfs does not know.
    monkeypatch.setattr(espfind, "BY_PARTUUID", str(tmp_path / "by-partuuid"))
    vfat = f"40 25 0:1 / {tmp_path} rw,relatime shared:3 - vfat /dev/vda1 rw"
    monkeypatch.setattr(espfind, "_mounts", lambda: mounts_of(ROOT, vfat))
    monkeypatch.setattr(espfind, "_sysfs_dev", lambda dev: tmp_path / "no-such-sysfs-node")
    assert espfind.partition_uuid(DirEsp(tmp_path)) is None
