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
never mounted. The GPT is read back by cfsboot.boot.gpt (re-exported here).
"""

from __future__ import annotations

import os
import platform
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cfsboot.boot.gpt import BIOS_BOOT_TYPE as BIOS_BOOT_TYPE
from cfsboot.boot.gpt import ESP_TYPE as ESP_TYPE
from cfsboot.boot.gpt import DiskLayout as DiskLayout
from cfsboot.boot.gpt import Partition as Partition
from cfsboot.boot.gpt import read_layout as read_layout
from cfsboot.boot.gpt import root_type as root_type
from cfsboot.errors import die
from cfsboot.linux.run import run

MiB = 1 << 20
GiB = 1 << 30
DEFAULT_ESP_SIZE = 1 * GiB  # bootc's size for the composefs backend (room for several UKIs)
BIOS_BOOT_SIZE = 1 * MiB
MIN_ROOT_SIZE = 64 * MiB  # below this a root cannot hold a repository worth installing
ESP_LABEL = "EFI-SYSTEM"
ROOT_LABEL = "root"
# ext4 fs-verity needs the block size to equal the page size before Linux 6.3; mke2fs
# would pick 1 KiB blocks for a small root.
ROOT_BLOCK_SIZE = 4096
# Root filesystems install can make, and whether Linux (6.12) has fs-verity on them.
FILESYSTEMS = {"ext4": True, "btrfs": True, "xfs": False}


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
class Disk:
    """A partitioned and formatted target, with what boot entries and GRUB need to find things."""

    layout: DiskLayout
    esp: Partition
    root: Partition
    esp_volume_id: str  # FAT volume serial as blkid/GRUB print it: "ABCD-1234"
    root_fs_uuid: str


def partition(target: Path, plan: DiskPlan) -> DiskLayout:
    """Write a new GPT to `target`, wiping old signatures, and read it back."""
    script = plan.sfdisk_script()
    check_fits(target, plan)
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
        input=script.encode(),
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


def check_fits(target: Path, plan: DiskPlan) -> None:
    """Refuse a target too small for the plan's partitions: sfdisk would cut the last one
    short (an ESP of a few MiB, or a root of 1 MiB) instead of failing."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)
    root = plan.root_size or MIN_ROOT_SIZE
    # 1 MiB before the first partition (alignment, the GPT) and up to 1 MiB after the last
    # (the backup GPT, and the alignment sfdisk rounds the last partition down to).
    needed = 2 * MiB + (BIOS_BOOT_SIZE if plan.bios_boot else 0) + plan.esp_size + root
    if size < needed:
        what = (
            f"a root of {root // MiB} MiB"
            if plan.root_size
            else f"a root of at least {root // MiB} MiB"
        )
        die(
            f"{target} is too small: {size // MiB} MiB, and a {plan.esp_size // MiB} MiB ESP and"
            f" {what} need {needed // MiB} MiB",
            hint="use a larger disk or --size",
        )


def create_image_file(path: Path, size: int) -> None:
    """A sparse image file of `size` bytes (an existing file is resized, its data kept)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(fd, size)
    finally:
        os.close(fd)
