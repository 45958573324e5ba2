"""Find the ESP that boots a physical root, and open it (mounted, or through mtools).

`--esp` names it explicitly: a directory (a mounted ESP, or any directory
standing in for one), or a disk image / block device holding a GPT (the ESP
partition is found in it), or `FILE@OFFSET` (a FAT filesystem at that byte
offset). Without it:

1. an ESP already mounted at /efi, /boot/efi or /boot (booted system) is used:
   the mount visible there, a whole vfat filesystem (cfsboot.linux.mountinfo
   tells a bind mount of one of its directories apart);
2. else the disk holding the physical root is found, and the ESP on it:
   - where udev runs (a booted system), through pyudev: the root's block
     device, its disk, and the partition udev's blkid probe typed as the ESP
     (ID_PART_ENTRY_TYPE), with the node udev named for it;
   - else (a disk image on the host, or a host without udev) through sysfs:
     /sys/dev/block/MAJ:MIN, the image file behind a loop device and its
     offset, and the disk's GPT read directly (cfsboot.boot.gpt).
   The ESP is mounted (vfat) when the kernel can and a partition node exists,
   into a private directory under /run/cfsboot, else reached through mtools.

Which GPT partition an ESP is (`partition_uuid`, to compare with the one systemd-boot
was loaded from) is worked out only when asked: for an image or device, from its GPT;
for a mounted one, from udev's /dev/disk/by-partuuid links, else sysfs and the GPT.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cfsboot.boot.esp import DirEsp, Esp, MtoolsEsp
from cfsboot.errors import CfsbootError, die
from cfsboot.linux import mountinfo
from cfsboot.linux.lazylog import getLogger
from cfsboot.linux.lazyrun import run

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import Any

    from cfsboot.boot.gpt import DiskLayout

log = getLogger(__name__)  # imports logging when it logs (lazylog)

MOUNT_POINTS = ("/efi", "/boot/efi", "/boot")
MOUNT_DIR = "/run/cfsboot"
# systemd-udevd's control socket: it exists while udev runs (so its database is filled).
UDEV_CONTROL = "/run/udev/control"
# sysfs counts a partition's `start` and `size` in 512-byte units whatever the disk's
# logical block size (Documentation/ABI/stable/sysfs-block).
SYSFS_SECTOR = 512
# udev's link to each partition, named by its partition UUID (lower case).
BY_PARTUUID = "/dev/disk/by-partuuid"


@dataclass(frozen=True)
class EspLocation:
    """Where the ESP of a physical root lies."""

    disk: Path  # the whole disk (a device node), or the disk image behind a loop device
    number: int  # its partition number
    start: int  # byte offset of the ESP in `disk`
    node: Path | None  # its partition device node, where there is one


def _read_layout(target: Path) -> DiskLayout:
    # Imported here: construct's import costs start-up time that a mounted ESP never needs.
    from cfsboot.boot.gpt import read_layout

    return read_layout(target)


def _mounts() -> tuple[mountinfo.Mount, ...]:
    try:
        return mountinfo.read()
    except OSError:
        return ()


def _esp_mounted_at(point: str, mounts: Sequence[mountinfo.Mount]) -> bool:
    """Is a whole vfat filesystem (not a bind mount of one of its directories) visible here?"""
    m = mountinfo.mounted_at(point, mounts)
    return m is not None and m.fstype == "vfat" and not m.is_bind


def _sysfs_dev(st_dev: int) -> Path:
    return Path(f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}")


def _mount_source_dev(path: Path, mounts: Sequence[mountinfo.Mount]) -> int | None:
    """The block device that the mount holding `path` names as its source.

    btrfs gives files anonymous device numbers (0:N, another one per subvolume, and
    not even the one mountinfo lists), not the disk's; the mount's source still names it.
    """
    m = mountinfo.mount_of(path, mounts)
    if m is None:
        return None
    try:
        st = os.stat(m.source)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def _root_dev(path: Path, mounts: Sequence[mountinfo.Mount]) -> int:
    """The block device holding `path` (its mount's source where st_dev is anonymous)."""
    dev = os.stat(path).st_dev
    if not _sysfs_dev(dev).exists() and (source := _mount_source_dev(path, mounts)) is not None:
        return source
    return dev


def _disk_of(path: Path, mounts: Sequence[mountinfo.Mount]) -> tuple[Path, int | None]:
    """(whole disk or disk image, byte offset of the filesystem in it when known), via sysfs."""
    dev = _root_dev(path, mounts)
    sysdev = _sysfs_dev(dev)
    if not sysdev.exists():
        die(
            f"cannot tell which disk holds {path} (device {os.major(dev)}:"
            f"{os.minor(dev)} has no block device)",
            hint="name the ESP with --esp",
        )
    return _sysfs_backing(sysdev.resolve())


def _loop_backing(loop: Path) -> tuple[Path, int]:
    """(image file, byte offset in it) of a loop device's sysfs `loop` directory."""
    backing = Path((loop / "backing_file").read_text().strip())
    return backing, int((loop / "offset").read_text().strip() or 0)


def _sysfs_backing(real: Path) -> tuple[Path, int | None]:
    """(whole disk or disk image, byte offset of the device in it when known) of the block
    device whose sysfs directory is `real`."""
    if (real / "loop").is_dir():
        return _loop_backing(real / "loop")
    if (real / "partition").exists():
        start = int((real / "start").read_text().strip()) * SYSFS_SECTOR
        parent = real.parent
        if (parent / "loop").is_dir():
            # A partition node of a loop device (losetup -P with udev).
            backing, offset = _loop_backing(parent / "loop")
            return backing, offset + start
        return Path("/dev") / parent.name, start
    return Path("/dev") / real.name, None


def _partition_node(disk_path: Path, number: int) -> Path | None:
    """/dev/vda + 1 -> /dev/vda1 (or nvme0n1p1), if such a node exists."""
    if not str(disk_path).startswith("/dev/"):
        return None
    name = disk_path.name
    sep = "p" if name[-1].isdigit() else ""
    node = Path(f"/dev/{name}{sep}{number}")
    try:
        if stat.S_ISBLK(os.stat(node).st_mode):
            return node
    except FileNotFoundError:
        pass
    return None


def locate_sysfs(path: Path, mounts: Sequence[mountinfo.Mount]) -> EspLocation:
    """The ESP on the disk (or disk image) holding `path`: sysfs, then the GPT itself."""
    disk_path, _ = _disk_of(path, mounts)
    esp = _read_layout(disk_path).esp
    return EspLocation(disk_path, esp.number, esp.start, _partition_node(disk_path, esp.number))


def udev_running() -> bool:
    return os.path.exists(UDEV_CONTROL)


def locate_udev(
    path: Path, mounts: Sequence[mountinfo.Mount], context: Any = None
) -> EspLocation | None:
    """The ESP on the disk holding `path`, as udev knows it; None where udev cannot say
    (a loop device without partitions is a disk image: the sysfs path handles it)."""
    import pyudev  # only here: loading libudev costs start-up time

    context = context if context is not None else pyudev.Context()
    try:
        device = pyudev.Devices.from_device_number(context, "block", _root_dev(path, mounts))
    except pyudev.DeviceNotFoundError:
        return None
    if device.device_type == "partition":
        device = device.find_parent("block", "disk")
    if device is None or device.device_node is None:
        return None
    partitions = {
        int(child.attributes.asstring("partition")): child
        for child in device.children
        if child.device_type == "partition"
    }
    if not partitions:
        return None
    disk_node = Path(device.device_node)
    from cfsboot.boot.gpt import ESP_TYPE

    for number, child in sorted(partitions.items()):
        props = child.properties
        if (
            props.get("ID_PART_ENTRY_SCHEME") == "gpt"
            and props.get("ID_PART_ENTRY_TYPE", "").upper() == ESP_TYPE
        ):
            start = int(child.attributes.asstring("start")) * SYSFS_SECTOR
            return EspLocation(disk_node, number, start, Path(child.device_node))
    # udev has not probed these partitions (or has no database): read the GPT.
    esp = _read_layout(disk_node).esp
    child = partitions.get(esp.number)
    node = Path(child.device_node) if child is not None and child.device_node else None
    return EspLocation(disk_node, esp.number, esp.start, node)


def _kernel_has_vfat() -> bool:
    def listed() -> bool:
        try:
            return "\tvfat\n" in Path("/proc/filesystems").read_text()
        except OSError:
            return False

    if listed():
        return True
    run(["modprobe", "vfat"], check=False)
    return listed()


@contextmanager
def _mounted(node: Path) -> Iterator[Esp]:
    os.makedirs(MOUNT_DIR, mode=0o700, exist_ok=True)
    import tempfile  # only when mounting (status on a mounted ESP does not)

    where = tempfile.mkdtemp(prefix="esp.", dir=MOUNT_DIR)
    run(["mount", "-t", "vfat", "-o", "umask=0077", node, where])
    try:
        yield DirEsp(Path(where))
    finally:
        run(["umount", where], check=False)
        os.rmdir(where)


def _image_esp(image: Path) -> Esp:
    """The ESP partition of a GPT disk image or device, through mtools."""
    return MtoolsEsp(image, _read_layout(image).esp.start)


def partition_uuid(esp: Esp) -> str | None:
    """The partition UUID (upper case, as systemd-boot's LoaderDevicePartUUID has it) of the
    GPT partition `esp` is; None where that cannot be known: a directory that is not where
    a whole vfat filesystem is mounted (one standing in for an ESP, as in tests), a FAT
    filesystem where no GPT partition starts, a disk that cannot be read."""
    from cfsboot.boot.espview import ReadOnceEsp  # only asked on the running system

    while isinstance(esp, ReadOnceEsp):
        esp = esp.esp  # a view: the ESP it shows
    try:
        if isinstance(esp, MtoolsEsp):
            return _uuid_at(esp.image, esp.offset)
        if isinstance(esp, DirEsp):
            return _mounted_uuid(esp.root)
    except (OSError, ValueError, CfsbootError) as e:
        log.debug("cannot tell which partition the ESP is: %s", e)
    return None


def _uuid_at(disk: Path, offset: int) -> str | None:
    """The partition UUID of the GPT partition of `disk` that starts at byte `offset`."""
    part = next((p for p in _read_layout(disk).partitions if p.start == offset), None)
    return part.uuid.upper() if part is not None else None


def _mounted_uuid(root: Path) -> str | None:
    """The partition UUID of the vfat filesystem mounted at `root`; None for a directory
    that is not a whole vfat filesystem's mount point, or a device on no GPT partition."""
    point = os.path.realpath(root)
    if not _esp_mounted_at(point, _mounts()):
        return None  # a plain directory: no partition to name
    dev = os.stat(point).st_dev
    # udev's links first: they name the partition without reading the disk.
    try:
        names = os.listdir(BY_PARTUUID)
    except OSError:
        names = []
    for name in names:
        try:
            if os.stat(os.path.join(BY_PARTUUID, name)).st_rdev == dev:
                return name.upper()
        except OSError:
            continue
    sysdev = _sysfs_dev(dev)
    if not sysdev.exists():
        return None
    disk, offset = _sysfs_backing(sysdev.resolve())
    return _uuid_at(disk, offset) if offset is not None else None


def locate(sysroot: Path, mounts: Sequence[mountinfo.Mount]) -> EspLocation:
    """The ESP of the disk holding `sysroot`: through udev where it runs, else sysfs."""
    if udev_running():
        found = locate_udev(sysroot, mounts)
        if found is not None:
            return found
    return locate_sysfs(sysroot, mounts)


@contextmanager
def open_esp(sysroot: Path, spec: str | None = None) -> Iterator[Esp]:
    """The ESP for the physical root `sysroot` (see the module docstring)."""
    if spec:
        path, sep, offset = spec.rpartition("@") if "@" in spec else (spec, "", "")
        p = Path(path)
        if not sep and p.is_dir():
            yield DirEsp(p)
            return
        if not p.exists():
            die(f"--esp {spec}: {p} does not exist")
        if sep:
            try:
                off = int(offset, 0)
            except ValueError:
                die(f"--esp {spec}: {offset!r} is not a byte offset")
            yield MtoolsEsp(p, off)
            return
        yield _image_esp(p)
        return
    mounts = _mounts()
    if Path(sysroot).resolve() == Path("/sysroot"):
        for mp in MOUNT_POINTS:
            if _esp_mounted_at(mp, mounts):
                yield DirEsp(Path(mp))
                return
    where = locate(sysroot, mounts)
    if where.node is not None:
        node = str(where.node)
        # Not another cfsboot's private mount (_mounted): it goes when that one is done.
        mounted = [
            m.mount_point
            for m in mounts
            if m.fstype == "vfat"
            and not m.is_bind
            and os.path.realpath(m.source) == node
            and not m.mount_point.startswith(f"{MOUNT_DIR}/")
        ]
        if mounted:
            yield DirEsp(Path(mounted[0]))
            return
        if _kernel_has_vfat():
            with _mounted(where.node) as e:
                yield e
            return
    log.debug("ESP of %s: partition %d of %s through mtools", sysroot, where.number, where.disk)
    yield MtoolsEsp(where.disk, where.start)
