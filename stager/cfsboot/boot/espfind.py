"""Find the ESP that boots a physical root, and open it (mounted, or through mtools).

`--esp` names it explicitly: a directory (a mounted ESP, or any directory
standing in for one), or a disk image / block device holding a GPT (the ESP
partition is found in it), or `FILE@OFFSET` (a FAT filesystem at that byte
offset). Without it:

1. an ESP already mounted at /efi, /boot/efi or /boot (booted system) is used;
2. else the disk holding the physical root is read: its GPT names the ESP.
   A loop-mounted root (a disk image on the host) leads to the image file
   behind the loop device. The ESP is mounted (vfat) when the kernel can, into
   a private directory under /run/cfsboot, else reached through mtools.
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cfsboot.boot import disk
from cfsboot.boot.esp import DirEsp, Esp, MtoolsEsp
from cfsboot.errors import die
from cfsboot.linux.run import run

log = logging.getLogger(__name__)

MOUNT_POINTS = ("/efi", "/boot/efi", "/boot")
MOUNT_DIR = "/run/cfsboot"


def _vfat_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """mount point -> source of every vfat mount."""
    out: dict[str, str] = {}
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                sep = fields.index("-", 6)
                if fields[sep + 1] == "vfat":
                    out[fields[4].replace("\\040", " ")] = fields[sep + 2]
    except (OSError, ValueError):
        pass
    return out


def _sysfs_dev(st_dev: int) -> Path:
    return Path(f"/sys/dev/block/{os.major(st_dev)}:{os.minor(st_dev)}")


def _mount_source_dev(path: Path, mountinfo: str = "/proc/self/mountinfo") -> int | None:
    """The block device that the mount holding `path` names as its source.

    btrfs gives files anonymous device numbers (0:N, another one per subvolume, and
    not even the one mountinfo lists), not the disk's; the mount's source still names it.
    """
    target = os.path.realpath(path)
    best: tuple[int, str] | None = None
    try:
        with open(mountinfo) as f:
            for line in f:
                fields = line.split()
                point = fields[4].replace("\\040", " ")
                if target != point and not target.startswith(point.rstrip("/") + "/"):
                    continue
                if best is None or len(point) >= best[0]:  # later mounts hide earlier ones
                    best = (len(point), fields[fields.index("-", 6) + 2])
    except (OSError, ValueError, IndexError):
        return None
    if best is None:
        return None
    try:
        st = os.stat(best[1])
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def _disk_of(path: Path) -> tuple[Path, int | None]:
    """(whole disk or disk image, byte offset of the filesystem in it when known)."""
    st = os.stat(path)
    sysdev = _sysfs_dev(st.st_dev)
    if not sysdev.exists() and (dev := _mount_source_dev(path)) is not None:
        sysdev = _sysfs_dev(dev)
    if not sysdev.exists():
        die(
            f"cannot tell which disk holds {path} (device {os.major(st.st_dev)}:"
            f"{os.minor(st.st_dev)} has no block device)",
            hint="name the ESP with --esp",
        )
    real = sysdev.resolve()
    loop = real / "loop"
    if loop.is_dir():
        backing = Path((loop / "backing_file").read_text().strip())
        offset = int((loop / "offset").read_text().strip() or 0)
        return backing, offset
    if (real / "partition").exists():
        parent = real.parent
        if (parent / "loop").is_dir():
            # A partition node of a loop device (losetup -P with udev).
            backing = Path((parent / "loop" / "backing_file").read_text().strip())
            return backing, None
        return Path("/dev") / parent.name, None
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
    where = tempfile.mkdtemp(prefix="esp.", dir=MOUNT_DIR)
    run(["mount", "-t", "vfat", "-o", "umask=0077", node, where])
    try:
        yield DirEsp(Path(where))
    finally:
        run(["umount", where], check=False)
        os.rmdir(where)


def _image_esp(image: Path) -> Esp:
    """The ESP partition of a GPT disk image or device, through mtools."""
    layout = disk.read_layout(image)
    return MtoolsEsp(image, layout.esp.start)


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
    mounts = _vfat_mounts()
    if Path(sysroot).resolve() == Path("/sysroot"):
        for mp in MOUNT_POINTS:
            if mp in mounts:
                yield DirEsp(Path(mp))
                return
    disk_path, _ = _disk_of(sysroot)
    layout = disk.read_layout(disk_path)
    esp = layout.esp
    node = _partition_node(disk_path, esp.number)
    if node is not None:
        mounted = [mp for mp, src in mounts.items() if os.path.realpath(src) == str(node)]
        if mounted:
            yield DirEsp(Path(mounted[0]))
            return
        if _kernel_has_vfat():
            with _mounted(node) as e:
                yield e
            return
    log.debug("ESP of %s: partition %d of %s through mtools", sysroot, esp.number, disk_path)
    yield MtoolsEsp(disk_path, esp.start)
