"""GUID Partition Tables, read with their CRCs checked, as the UEFI specification lays them out.

UEFI Specification 2.10, section 5.3 "GUID Partition Table (GPT) Disk Layout":
a protective MBR in LBA 0, the primary GPT header in LBA 1 and its partition
entry array after it, and a backup header in the last LBA with its own copy of
the array before it. Section 5.3.2 says when a header may be trusted: its
signature, its HeaderSize, the CRC32 of the header (the CRC field counted as
zero), MyLBA naming the LBA it was read from, and the CRC32 of the partition
entry array it points to. The structures are declared once, below, as
`construct` data; reading checks every one of those rules, and takes the
backup header when the primary fails them (with a warning), as firmware does.
Building computes both CRCs (tests use it to rebuild what sfdisk wrote, byte
for byte).

The sector size of a disk image is not written anywhere in it: the device's
logical block size is used for a block device, else 512 and then 4096 are
tried.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import construct as cs

from cfsboot.errors import die
from cfsboot.linux.arch import ARCHES, lookup, machine

log = logging.getLogger(__name__)

# GPT partition type GUIDs: UEFI spec 5.3.3 Table 5-7 "Defined GPT Partition Entry -
# Partition Type GUIDs" (the ESP), GRUB's BIOS boot partition, and the Discoverable
# Partitions Specification's root types (cfsboot.linux.arch).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
BIOS_BOOT_TYPE = "21686148-6449-6E6F-744E-656564454649"
UNUSED_TYPE = "00000000-0000-0000-0000-000000000000"  # an unused entry (Table 5-6)

SIGNATURE = b"EFI PART"
REVISION_1_0 = 0x00010000
PRIMARY_LBA = 1
NO_SIGNATURE = "no GPT signature"
NAME_SIZE = 72  # PartitionName: 36 UTF-16LE code units
MAX_PARTITION_ENTRIES = 1024  # our limit on NumberOfPartitionEntries (sfdisk and gdisk write 128)


if TYPE_CHECKING:
    _TextAdapter = cs.Adapter[Any, Any, str, str]
else:  # construct's classes are not generic at run time
    _TextAdapter = cs.Adapter


class _Guid(_TextAdapter):
    """An EFI_GUID as text ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"): UEFI spec Appendix A,
    Data1 (UINT32), Data2 and Data3 (UINT16) in the disk's byte order, Data4 (8 bytes)."""

    def _decode(self, obj: Any, context: Any, path: Any) -> str:
        d4 = obj.Data4.hex().upper()
        return f"{obj.Data1:08X}-{obj.Data2:04X}-{obj.Data3:04X}-{d4[:4]}-{d4[4:]}"

    def _encode(self, obj: str, context: Any, path: Any) -> dict[str, Any]:
        try:
            d1, d2, d3, d4a, d4b = obj.split("-")
            return {
                "Data1": int(d1, 16),
                "Data2": int(d2, 16),
                "Data3": int(d3, 16),
                "Data4": bytes.fromhex(d4a + d4b),
            }
        except ValueError:
            raise cs.AdaptationError(f"not a GUID: {obj!r}") from None


class _PartitionName(_TextAdapter):
    """PartitionName: UTF-16LE, up to 36 code units, ended by a NUL when shorter."""

    def _decode(self, obj: bytes, context: Any, path: Any) -> str:
        return obj.decode("utf-16-le", errors="replace").split("\0", 1)[0]

    def _encode(self, obj: str, context: Any, path: Any) -> bytes:
        data = obj.encode("utf-16-le")
        if len(data) > NAME_SIZE:
            raise cs.AdaptationError(f"partition name {obj!r} is longer than 36 UTF-16 units")
        return data.ljust(NAME_SIZE, b"\0")


GUID = _Guid(
    cs.Struct(
        "Data1" / cs.Int32ul,
        "Data2" / cs.Int16ul,
        "Data3" / cs.Int16ul,
        "Data4" / cs.Bytes(8),
    )
)

# UEFI spec 5.3.2 "GPT Header", Table 5-5. HeaderSize may be larger than these 92
# bytes (up to the sector); the CRC covers HeaderSize bytes.
HEADER = cs.Struct(
    "signature" / cs.Bytes(8),
    "revision" / cs.Int32ul,
    "header_size" / cs.Int32ul,
    "header_crc32" / cs.Int32ul,
    "reserved" / cs.Int32ul,
    "my_lba" / cs.Int64ul,
    "alternate_lba" / cs.Int64ul,
    "first_usable_lba" / cs.Int64ul,
    "last_usable_lba" / cs.Int64ul,
    "disk_guid" / GUID,
    "partition_entry_lba" / cs.Int64ul,
    "number_of_partition_entries" / cs.Int32ul,
    "size_of_partition_entry" / cs.Int32ul,
    "partition_entry_array_crc32" / cs.Int32ul,
)
HEADER_SIZE = HEADER.sizeof()

# UEFI spec 5.3.3 "GPT Partition Entry Array", Table 5-6. SizeOfPartitionEntry may be
# larger than these 128 bytes (128 x 2^n); the rest of each entry is reserved.
ENTRY = cs.Struct(
    "partition_type_guid" / GUID,
    "unique_partition_guid" / GUID,
    "starting_lba" / cs.Int64ul,
    "ending_lba" / cs.Int64ul,  # inclusive
    "attributes" / cs.Int64ul,
    "partition_name" / _PartitionName(cs.Bytes(NAME_SIZE)),
)
ENTRY_SIZE = ENTRY.sizeof()
GUID_SIZE = GUID.sizeof()
UNUSED_GUID = bytes(GUID_SIZE)


def entry_array(count: int, entry_size: int) -> cs.Construct[Any, Any]:
    """NumberOfPartitionEntries entries of SizeOfPartitionEntry bytes each."""
    return cs.Array(count, cs.Padded(entry_size, ENTRY))


class GptError(ValueError):
    """Why one GPT header (and the entry array it points to) cannot be trusted."""


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


# -- building (both CRCs computed) ------------------------------------------------------


def header_crc32(header: dict[str, Any], tail: bytes = b"") -> int:
    """The HeaderCRC32 of a header: CRC32 of its HeaderSize bytes with the field itself zero.

    `tail` is what HeaderSize covers past the 92 bytes declared (reserved, zero)."""
    fields = {k: v for k, v in header.items() if not k.startswith("_")}  # not construct's _io
    return zlib.crc32(HEADER.build({**fields, "header_crc32": 0}) + tail)


def build_entries(entries: Sequence[dict[str, Any]], count: int, entry_size: int) -> bytes:
    """The partition entry array: `entries`, then unused (all-zero) ones up to `count`."""
    unused = {
        "partition_type_guid": UNUSED_TYPE,
        "unique_partition_guid": UNUSED_TYPE,
        "starting_lba": 0,
        "ending_lba": 0,
        "attributes": 0,
        "partition_name": "",
    }
    padded = [*entries, *[unused] * (count - len(entries))]
    return bytes(entry_array(count, entry_size).build(padded))


def build_header(fields: dict[str, Any], entries: bytes) -> bytes:
    """A header (HEADER_SIZE bytes) for `fields`, with both CRCs computed (`entries`: its array)."""
    header = {
        "signature": SIGNATURE,
        "revision": REVISION_1_0,
        "header_size": HEADER_SIZE,
        "reserved": 0,
        **fields,
        "partition_entry_array_crc32": zlib.crc32(entries),
    }
    header["header_crc32"] = header_crc32(header)
    return bytes(HEADER.build(header))


# -- reading (both CRCs checked) --------------------------------------------------------


# A checked header (construct Container of HEADER) and its used entries: (partition number,
# Container of ENTRY). A plain tuple: making a dataclass costs start-up time, and every
# command that finds an ESP in a disk image imports this module.
_Table = tuple[Any, tuple[tuple[int, Any], ...]]


def _read_at(f: BinaryIO, offset: int, size: int) -> bytes:
    """`size` bytes at `offset`, fewer past the end (a header's LBAs and sizes are its own
    claims: read no more than the disk holds, never allocate what it says)."""
    end = f.seek(0, os.SEEK_END)  # a block device's size too (st_size is 0 there)
    if offset >= end:
        return b""
    f.seek(offset)
    return f.read(min(size, end - offset))


def _read_table(f: BinaryIO, sector: int, lba: int) -> _Table:
    """The header at `lba` and its entry array, checked as UEFI 5.3.2 says; GptError if bad."""
    raw = _read_at(f, lba * sector, sector)
    if len(raw) < HEADER_SIZE or not raw.startswith(SIGNATURE):
        raise GptError(NO_SIGNATURE)
    header = HEADER.parse(raw)
    size = header.header_size
    if not HEADER_SIZE <= size <= sector:
        raise GptError(f"header size {size} out of range")
    crc = header_crc32(header, raw[HEADER_SIZE:size])
    if crc != header.header_crc32:
        raise GptError(
            f"GPT header CRC mismatch (stored {header.header_crc32:#010x}, computed {crc:#010x})"
        )
    if header.my_lba != lba:
        raise GptError(f"the header says it is at LBA {header.my_lba}")
    count, entry_size = header.number_of_partition_entries, header.size_of_partition_entry
    if entry_size < ENTRY_SIZE or entry_size % ENTRY_SIZE or count > MAX_PARTITION_ENTRIES:
        raise GptError(f"damaged GPT header (entry size {entry_size}, {count} entries)")
    table = _read_at(f, header.partition_entry_lba * sector, count * entry_size)
    if len(table) != count * entry_size:
        raise GptError("the partition entry array lies past the end of the disk")
    crc = zlib.crc32(table)
    if crc != header.partition_entry_array_crc32:
        stored = header.partition_entry_array_crc32
        raise GptError(
            f"partition entry array CRC mismatch (stored {stored:#010x}, computed {crc:#010x})"
        )
    # Only used entries are parsed (most of the 128 are not): an entry whose
    # PartitionTypeGUID, its first field, is all zero is unused (Table 5-6).
    starts = range(0, count * entry_size, entry_size)
    used = tuple(
        (n, ENTRY.parse(table[at : at + ENTRY_SIZE]))
        for n, at in enumerate(starts, 1)
        if table[at : at + GUID_SIZE] != UNUSED_GUID
    )
    for n, e in used:  # EndingLBA is inclusive: a partition of no sectors is damage
        if e.ending_lba < e.starting_lba:
            raise GptError(
                f"partition {n} ends at LBA {e.ending_lba}, before it starts ({e.starting_lba})"
            )
    return header, used


def _sector_sizes(target: Path) -> tuple[int, ...]:
    """Logical sector sizes to try: the device's own, else 512 then 4096 (image files)."""
    try:
        name = os.path.realpath(target).rsplit("/", 1)[-1]
        with open(f"/sys/class/block/{name}/queue/logical_block_size") as f:
            return (int(f.read()),)
    except (OSError, ValueError):
        return (512, 4096)


def _layout(target: Path, sector: int, table: _Table) -> DiskLayout:
    parts = tuple(
        Partition(
            number=i,
            start=e.starting_lba * sector,
            size=(e.ending_lba - e.starting_lba + 1) * sector,
            type_uuid=e.partition_type_guid,
            uuid=e.unique_partition_guid,
            name=e.partition_name,
        )
        for i, e in table[1]
    )
    return DiskLayout(target, sector, table[0].disk_guid, parts)


def _find(f: BinaryIO, target: Path) -> tuple[int, _Table]:
    """(sector size, a valid table): the primary, else the backup in the last LBA."""
    disk_size = f.seek(0, os.SEEK_END)
    damaged: str | None = None
    for sector in _sector_sizes(target):
        last = disk_size // sector - 1
        try:
            return sector, _read_table(f, sector, PRIMARY_LBA)
        except GptError as e:
            primary = str(e)
        try:
            backup = _read_table(f, sector, last)
        except GptError as e:
            if primary != NO_SIGNATURE and damaged is None:
                damaged = (
                    f"primary header (LBA {PRIMARY_LBA}): {primary};"
                    f" backup header (LBA {last}): {e}"
                )
            continue
        log.warning(
            "%s: the primary GPT header is damaged (%s); using the backup header at LBA %d",
            target,
            primary,
            last,
        )
        return sector, backup
    if damaged is not None:
        die(
            f"{target}: damaged GPT: {damaged}",
            hint="check it with `sfdisk --verify`; gdisk can rebuild one header from the other",
        )
    die(f"{target} has no GPT partition table")


def read_layout(target: Path) -> DiskLayout:
    """The GPT of a disk or disk image, read directly (no tool needed on a booted system)."""
    try:
        with open(target, "rb") as f:
            sector, table = _find(f, target)
    except OSError as e:
        die(f"cannot read the partition table of {target}: {e.strerror}")
    return _layout(target, sector, table)
