"""Fuzz targets for the boot disk: its GPT and the ESP's FAT filesystem.

`gpt`: the fuzzed bytes are a primary GPT header (its first 92 bytes) and the entry
array that follows it at LBA 2 of a small disk image; the harness makes both CRCs
right (where the header's own fields let it), so that what is behind them is reached.

`fat`: the fuzzed bytes are the start of a FAT12 image (padded with zeros to 64 KiB,
where a small ESP's metadata ends well before): the boot sector, directory lookups
and the in-place exchange of two entries (the one edit FatFs makes). Writes land in
the image file, inside the target's directory; any other exception than FatError, a
hang or a write elsewhere fails.
"""

from __future__ import annotations

import os
import struct
import subprocess
import tempfile
import zlib
from functools import cache
from pathlib import Path

from cfsboot.boot import gpt
from cfsboot.boot.fat import FatError, FatFs
from cfsboot.errors import CfsbootError
from cfstest.fuzzing import Target

SECTOR = 512
DISK_SECTORS = 64

IMAGE_SIZE = 64 << 10
MTOOLS_ENV = {**os.environ, "MTOOLS_SKIP_CHECK": "1", "TZ": "UTC"}


def _fat(data: bytes, tmp: Path) -> None:
    image = tmp / "esp.img"
    image.write_bytes(data + bytes(max(0, IMAGE_SIZE - len(data))))
    fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        fs = FatFs(fd)
        for path in ([], ["EFI"], ["EFI", "Linux"], ["loader", "entries"]):
            try:
                d = fs.directory(path)
            except FatError:
                continue
            for e in d.entries:
                e.name, e.is_dir, e.matches("a.conf")
        fs.exchange(["loader", "entries"], "a.conf", "b-long-name.conf")
        fs.directory(["loader", "entries"])  # still readable after the edit
    finally:
        os.close(fd)


@cache
def _seeds() -> tuple[bytes, ...]:
    """A FAT12 ESP made by mkfs.fat and filled by mtools, cut where its metadata ends."""
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "esp.img"
        with open(image, "wb") as f:
            f.truncate(IMAGE_SIZE)
        subprocess.run(
            ["mkfs.fat", "-F", "12", "-r", "16", "-s", "1", "-S", "512", str(image), "64"],
            check=True,
            capture_output=True,
        )

        def mt(*argv: str, data: bytes | None = None) -> None:
            subprocess.run([*argv], input=data, env=MTOOLS_ENV, check=True, capture_output=True)

        mt("mmd", "-i", str(image), "::/EFI", "::/EFI/Linux", "::/loader", "::/loader/entries")
        for name, body in (("a.conf", b"title A\n"), ("b-long-name.conf", b"title B\n")):
            mt("mcopy", "-i", str(image), "-", f"::/loader/entries/{name}", data=body)
        mt("mcopy", "-i", str(image), "-", "::/EFI/Linux/x.efi", data=b"MZ" * 300)
        data = image.read_bytes()
    used = max(i for i in range(0, IMAGE_SIZE, 512) if data[i : i + 512].strip(b"\0"))
    return (data[: used + 512],)


def _gpt(data: bytes, tmp: Path) -> None:
    disk = bytearray(DISK_SECTORS * SECTOR)
    disk[SECTOR : SECTOR + 92] = data[:92].ljust(92, b"\0")
    table = data[92 : 92 + (DISK_SECTORS - 3) * SECTOR]
    disk[2 * SECTOR : 2 * SECTOR + len(table)] = table
    # CRCs: the entry array's over what the header says it is, then the header's.
    (header_size,) = struct.unpack_from("<I", disk, SECTOR + 12)
    (entry_lba,) = struct.unpack_from("<Q", disk, SECTOR + 72)
    count, entry_size = struct.unpack_from("<II", disk, SECTOR + 80)
    start, length = entry_lba * SECTOR, count * entry_size
    if start + length <= len(disk):
        struct.pack_into("<I", disk, SECTOR + 88, zlib.crc32(disk[start : start + length]))
    if 92 <= header_size <= SECTOR:
        raw = bytes(disk[SECTOR : SECTOR + header_size])
        crc = zlib.crc32(raw[:16] + bytes(4) + raw[20:])
        struct.pack_into("<I", disk, SECTOR + 16, crc)
    path = tmp / "disk.img"
    path.write_bytes(disk)
    layout = gpt.read_layout(path)
    for part in layout.partitions:  # what install and the ESP finder use
        assert part.start >= 0 and part.size > 0, part
        part.type_uuid.upper(), part.name.encode()
    assert layout.esp.number >= 1


@cache
def _gpt_seeds() -> tuple[bytes, ...]:
    entries = [
        {
            "partition_type_guid": gpt.ESP_TYPE,
            "unique_partition_guid": "01234567-89AB-CDEF-0123-456789ABCDEF",
            "starting_lba": 34,
            "ending_lba": 40,
            "attributes": 0,
            "partition_name": "EFI System",
        },
        {
            "partition_type_guid": gpt.root_type("x86_64"),
            "unique_partition_guid": "11234567-89AB-CDEF-0123-456789ABCDEF",
            "starting_lba": 41,
            "ending_lba": 60,
            "attributes": 1 << 59,
            "partition_name": "root ünïcode",
        },
    ]
    seeds = []
    for count, size in ((4, gpt.ENTRY_SIZE), (2, 2 * gpt.ENTRY_SIZE)):
        table = gpt.build_entries(entries, count, size)
        fields = {
            "header_crc32": 0,
            "my_lba": 1,
            "alternate_lba": DISK_SECTORS - 1,
            "first_usable_lba": 34,
            "last_usable_lba": DISK_SECTORS - 2,
            "disk_guid": "21234567-89AB-CDEF-0123-456789ABCDEF",
            "partition_entry_lba": 2,
            "number_of_partition_entries": count,
            "size_of_partition_entry": size,
        }
        seeds.append(gpt.build_header(fields, table) + table)
    return tuple(seeds)


def esp_targets() -> list[Target]:
    """The targets of this module, or none where mkfs.fat and mtools are missing."""
    try:
        seeds = _seeds()
    except (OSError, subprocess.CalledProcessError):
        return []  # test_fuzz's budget check names the target that went missing
    return [
        Target("gpt", _gpt, (CfsbootError,), _gpt_seeds(), (b"EFI PART", b"\xff" * 8)),
        Target("fat", _fat, (FatError,), seeds, (b"\xff\x0f", b"\xe5", b"\x0f")),
    ]
