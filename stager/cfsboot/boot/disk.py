"""Partition and format an install target: a block device or a disk image file.

GPT with an ESP (FAT32, 1 GiB by default, as bootc's composefs backend) and a
root partition typed with the Discoverable Partitions Specification's root
UUID for the architecture, so systemd-gpt-auto-generator can find it without
`root=`. The root filesystem is ext4 with `-O verity` (the default), btrfs
(fs-verity built in) or xfs (no fs-verity in Linux 6.12: insecure only).

Filesystems are made at byte offsets into the whole target (`mkfs.ext4 -E
offset=`, `mkfs.vfat --offset`, or a loop device over the partition's byte range
for the mkfs tools that have no offset option), never through partition device
nodes: image files have none, and loop devices on this kind of host get none
either (no udev). The ESP is then written with mtools (cfsboot.boot.esp.MtoolsEsp),
never mounted.
"""

from __future__ import annotations

import os
import platform
import secrets
import struct
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cfsboot.errors import die
from cfsboot.linux.arch import ARCHES, lookup, machine
from cfsboot.linux.run import run

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_ESP_SIZE = 1 * GiB  # bootc's size for the composefs backend (room for several UKIs)
BIOS_BOOT_SIZE = 1 * MiB
ESP_LABEL = "EFI-SYSTEM"
ROOT_LABEL = "root"
# ext4 fs-verity needs the block size to equal the page size before Linux 6.3; mke2fs
# would pick 1 KiB blocks for a small root.
ROOT_BLOCK_SIZE = 4096
# Root filesystems install can make, and whether Linux (6.12) has fs-verity on them.
FILESYSTEMS = {"ext4": True, "btrfs": True, "xfs": False}

# GPT partition type UUIDs (UEFI spec "GPT Partition Entry"; Discoverable Partitions Spec).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"


def root_type(arch: str | None = None) -> str:
    """The DPS root partition type UUID for `arch` (default: this machine)."""
    found = lookup(arch)
    if found is None:
        die(
            f"no Discoverable Partitions root type known for architecture {machine(arch)}",
            hint=f"known: {', '.join(sorted(ARCHES))}",
        )
    return found.dps_root


@dataclass(frozen=True)
class DiskPlan:
    """What to create; sizes in bytes, whole MiB (sfdisk aligns partitions to 1 MiB)."""

    esp_size: int = DEFAULT_ESP_SIZE
    root_size: int | None = None  # None: the rest of the disk
    arch: str = field(default_factory=platform.machine)
    bios_boot: bool = False  # a BIOS boot partition first, for GRUB on legacy BIOS
    esp_label: str = ESP_LABEL
    root_label: str = ROOT_LABEL
    filesystem: str = "ext4"  # a key of FILESYSTEMS

    def sfdisk_script(self) -> str:
        for what, size in (("ESP", self.esp_size), ("root", self.root_size)):
            if size is not None and (size <= 0 or size % MiB):
                die(f"{what} size {size} is not a positive whole number of MiB")
        lines = ["label: gpt"]
        if self.bios_boot:
            lines.append(
                f'size={BIOS_BOOT_SIZE // MiB}MiB, type={BIOS_BOOT_TYPE}, name="BIOS-BOOT"'
            )
        lines.append(f'size={self.esp_size // MiB}MiB, type={ESP_TYPE}, name="{self.esp_label}"')
        root_size = f"size={self.root_size // MiB}MiB, " if self.root_size else ""
        lines.append(f'{root_size}type={root_type(self.arch)}, name="{self.root_label}"')
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Partition:
    number: int
    start: int  # bytes from the start of the target
    size: int  # bytes
    type_uuid: str
    uuid: str  # PARTUUID
    name: str


@dataclass(frozen=True)
class DiskLayout:
    """A GPT as sfdisk reads it back."""

    target: Path
    sector_size: int
    disk_uuid: str
    partitions: tuple[Partition, ...]

    def by_type(self, type_uuid: str) -> Partition:
        for p in self.partitions:
            if p.type_uuid.upper() == type_uuid.upper():
                return p
        die(f"{self.target} has no partition of type {type_uuid}")

    @property
    def esp(self) -> Partition:
        return self.by_type(ESP_TYPE)

    def root(self, arch: str | None = None) -> Partition:
        return self.by_type(root_type(arch))


@dataclass(frozen=True)
class Disk:
    """A partitioned and formatted target, with what boot entries and GRUB need to find things."""

    layout: DiskLayout
    esp: Partition
    root: Partition
    esp_volume_id: str  # FAT volume serial as blkid/GRUB print it: "ABCD-1234"
    root_fs_uuid: str


# UEFI spec, "GPT Header": signature, revision, header size, header CRC32, reserved,
# my LBA, alternate LBA, first usable LBA, last usable LBA, disk GUID, partition entry
# LBA, number of entries, size of an entry, entries CRC32.
GPT_HEADER = struct.Struct("<8sIIII QQQQ 16s QIII")
GPT_SIGNATURE = b"EFI PART"
# UEFI spec, "GPT Partition Entry": type GUID, unique GUID, first LBA, last LBA
# (inclusive), attributes, name (36 UTF-16LE code units).
GPT_ENTRY = struct.Struct("<16s16sQQQ72s")
MAX_GPT_ENTRIES = 1024


def _sector_sizes(target: Path) -> tuple[int, ...]:
    """Logical sector sizes to try: the device's own, else 512 then 4096 (image files)."""
    try:
        name = os.path.realpath(target).rsplit("/", 1)[-1]
        with open(f"/sys/class/block/{name}/queue/logical_block_size") as f:
            return (int(f.read()),)
    except (OSError, ValueError):
        return (512, 4096)


def read_layout(target: Path) -> DiskLayout:
    """The GPT of a disk or disk image, read directly (no tool needed on a booted system)."""
    try:
        with open(target, "rb") as f:
            for sector in _sector_sizes(target):
                f.seek(sector)
                raw = f.read(GPT_HEADER.size)
                if len(raw) == GPT_HEADER.size and raw.startswith(GPT_SIGNATURE):
                    break
            else:
                die(f"{target} has no GPT partition table")
            hdr = GPT_HEADER.unpack(raw)
            disk_guid, entries_lba, count, entry_size = hdr[9], hdr[10], hdr[11], hdr[12]
            if entry_size < GPT_ENTRY.size or count > MAX_GPT_ENTRIES:
                die(f"{target}: damaged GPT header (entry size {entry_size}, {count} entries)")
            f.seek(entries_lba * sector)
            table = f.read(count * entry_size)
    except OSError as e:
        die(f"cannot read the partition table of {target}: {e.strerror}")
    parts = []
    number = 0
    for i in range(count):
        chunk = table[i * entry_size : i * entry_size + GPT_ENTRY.size]
        if len(chunk) < GPT_ENTRY.size:
            break
        type_b, uniq_b, first, last, _attrs, name_b = GPT_ENTRY.unpack(chunk)
        number = i + 1
        if type_b == bytes(16):
            continue
        parts.append(
            Partition(
                number=number,
                start=first * sector,
                size=(last - first + 1) * sector,
                type_uuid=str(uuid.UUID(bytes_le=type_b)).upper(),
                uuid=str(uuid.UUID(bytes_le=uniq_b)).upper(),
                name=name_b.decode("utf-16-le", errors="replace").split("\0", 1)[0],
            )
        )
    return DiskLayout(target, sector, str(uuid.UUID(bytes_le=disk_guid)).upper(), tuple(parts))


def partition(target: Path, plan: DiskPlan) -> DiskLayout:
    """Write a new GPT to `target`, wiping old signatures, and read it back."""
    run(
        [
            "sfdisk",
            "--quiet",
            "--wipe",
            "always",
            "--wipe-partitions",
            "always",
            target,
        ],
        input=plan.sfdisk_script().encode(),
    )
    return read_layout(target)


def format_esp(layout: DiskLayout, part: Partition, *, label: str, volume_id: str) -> None:
    """FAT32 at the partition's offset; `volume_id` is 8 hex digits (the serial)."""
    run(
        [
            "mkfs.vfat",
            "-F",
            "32",
            "-n",
            label,
            "-i",
            volume_id,
            # --offset counts logical sectors (as sfdisk's), the block count 1 KiB units.
            "--offset",
            str(part.start // layout.sector_size),
            layout.target,
            str(part.size // 1024),
        ],
        capture=True,  # its banner on stdout is noise in cfsboot's output
    )


@contextmanager
def loop_device(target: Path, part: Partition) -> Iterator[str]:
    """A loop device over the byte range of `part` in `target` (detached at the end)."""
    proc = run(
        ["losetup", "--find", "--show", "--offset", str(part.start),
         "--sizelimit", str(part.size), target],
        capture=True,
    )  # fmt: skip
    loop = proc.stdout.decode().strip()
    try:
        yield loop
    finally:
        run(["losetup", "--detach", loop], check=False)


def format_root(
    layout: DiskLayout,
    part: Partition,
    *,
    label: str,
    fs_uuid: str,
    filesystem: str = "ext4",
    verity: bool = True,
) -> None:
    """The root filesystem (ext4 with the verity feature by default) in the partition."""
    if filesystem not in FILESYSTEMS:
        die(f"cannot make a {filesystem} root filesystem",
            hint=f"use one of {', '.join(FILESYSTEMS)}")  # fmt: skip
    if filesystem != "ext4":
        # fs-verity is always there on btrfs; -K: no discard of the image file's range.
        mkfs = {
            "btrfs": ["mkfs.btrfs", "-q", "-f", "-K", "-L", label, "-U", fs_uuid],
            "xfs": ["mkfs.xfs", "-q", "-f", "-K", "-L", label, "-m", f"uuid={fs_uuid}"],
        }[filesystem]
        with loop_device(layout.target, part) as loop:
            run([*mkfs, loop], capture=True)
        return
    blocks = part.size // ROOT_BLOCK_SIZE
    run(
        [
            "mkfs.ext4",
            "-q",
            # A regular file, or a whole disk that already holds a partition table.
            "-F",
            "-b",
            str(ROOT_BLOCK_SIZE),
            "-L",
            label,
            "-U",
            fs_uuid,
            *(["-O", "verity"] if verity else []),
            # nodiscard: discarding through an offset is not what we want on an image file.
            "-E",
            f"offset={part.start},nodiscard",
            layout.target,
            f"{blocks * ROOT_BLOCK_SIZE // 1024}k",
        ]
    )


def create_disk(
    target: Path,
    plan: DiskPlan | None = None,
    *,
    root_fs_uuid: str | None = None,
    esp_volume_id: str | None = None,
) -> Disk:
    """Partition `target` and make both filesystems; everything on it is lost."""
    plan = plan or DiskPlan()
    if not target.exists():
        die(f"{target} does not exist", hint="create an image file first (truncate -s 10G FILE)")
    volume_id = (esp_volume_id or secrets.token_hex(4)).upper()
    if len(volume_id) != 8 or any(c not in "0123456789ABCDEF" for c in volume_id):
        die(f"invalid FAT volume id {esp_volume_id!r}: expected 8 hex digits")
    try:
        fs_uuid = str(uuid.UUID(root_fs_uuid)) if root_fs_uuid else str(uuid.uuid4())
    except ValueError:
        die(f"invalid filesystem UUID {root_fs_uuid!r}")
    layout = partition(target, plan)
    esp, root = layout.esp, layout.root(plan.arch)
    format_esp(layout, esp, label=plan.esp_label, volume_id=volume_id)
    format_root(layout, root, label=plan.root_label, fs_uuid=fs_uuid, filesystem=plan.filesystem)
    return Disk(layout, esp, root, f"{volume_id[:4]}-{volume_id[4:]}", fs_uuid)


def create_image_file(path: Path, size: int) -> None:
    """A sparse image file of `size` bytes (an existing file is resized, its data kept)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
