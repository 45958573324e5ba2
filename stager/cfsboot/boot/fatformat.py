"""The FAT on-disk format: the boot sector (BPB), directory entries and long names.

Section names below are those of Microsoft's "FAT: General Overview of On-Disk
Format" (fatgen103, version 1.03). The boot sector is declared with
`construct` (read once per filesystem); the 32-byte directory entries stay
`struct` formats: a directory is thousands of them, unpacked in a loop, and an
exchange swaps their fields by position (cfsboot.boot.fat).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import construct as cs

from cfsboot.errors import CfsbootError

# "Boot Sector and BPB Structure": the fields at offsets 0-35, the same for every FAT type.
BPB = cs.Struct(
    "BS_jmpBoot" / cs.Bytes(3),
    "BS_OEMName" / cs.Bytes(8),
    "BPB_BytsPerSec" / cs.Int16ul,
    "BPB_SecPerClus" / cs.Int8ul,
    "BPB_RsvdSecCnt" / cs.Int16ul,
    "BPB_NumFATs" / cs.Int8ul,
    "BPB_RootEntCnt" / cs.Int16ul,
    "BPB_TotSec16" / cs.Int16ul,
    "BPB_Media" / cs.Int8ul,
    "BPB_FATSz16" / cs.Int16ul,
    "BPB_SecPerTrk" / cs.Int16ul,
    "BPB_NumHeads" / cs.Int16ul,
    "BPB_HiddSec" / cs.Int32ul,
    "BPB_TotSec32" / cs.Int32ul,
)
# "FAT32 Structure Starting at Offset 36" (FAT12/16 keep other fields there; their BPB_FATSz16
# is non-zero, which is how the code below knows not to use these).
BPB32 = cs.Struct(
    "BPB_FATSz32" / cs.Int32ul,
    "BPB_ExtFlags" / cs.Int16ul,
    "BPB_FSVer" / cs.Int16ul,
    "BPB_RootClus" / cs.Int32ul,
    "BPB_FSInfo" / cs.Int16ul,
    "BPB_BkBootSec" / cs.Int16ul,
    "BPB_Reserved" / cs.Bytes(12),
    "BS_DrvNum" / cs.Int8ul,
    "BS_Reserved1" / cs.Int8ul,
    "BS_BootSig" / cs.Int8ul,
    "BS_VolID" / cs.Int32ul,
    "BS_VolLab" / cs.Bytes(11),
    "BS_FilSysType" / cs.Bytes(8),
)
# "Boot Sector and BPB Structure": sector 0, ending with 0x55 0xAA at bytes 510 and 511.
BOOT_SECTOR_SIZE = 512
SIGNATURE_WORD = 0xAA55
BOOT_SECTOR = cs.Struct(
    "bpb" / BPB,
    "bpb32" / BPB32,
    cs.Padding(BOOT_SECTOR_SIZE - 2 - BPB.sizeof() - BPB32.sizeof()),
    "Signature_word" / cs.Int16ul,
)
assert BPB.sizeof() == 36 and BPB.sizeof() + BPB32.sizeof() == 90
assert BOOT_SECTOR.sizeof() == BOOT_SECTOR_SIZE
# BPB_ExtFlags: bit 7 set = only one FAT is active (bits 0-3 say which), else all are mirrors.
EXT_FLAGS_NO_MIRROR = 0x80
EXT_FLAGS_ACTIVE_FAT = 0x0F
# Valid BPB_BytsPerSec and BPB_SecPerClus values.
SECTOR_SIZES = (512, 1024, 2048, 4096)
CLUSTER_SECTORS = (1, 2, 4, 8, 16, 32, 64, 128)

# "FAT Directory Structure": DIR_Name, DIR_Attr, DIR_NTRes, DIR_CrtTimeTenth, DIR_CrtTime,
# DIR_CrtDate, DIR_LstAccDate, DIR_FstClusHI, DIR_WrtTime, DIR_WrtDate, DIR_FstClusLO,
# DIR_FileSize.
DIR_ENTRY = struct.Struct("<11sBBBHHHHHHHL")
assert DIR_ENTRY.size == 32
# The fields that stay with the name (DIR_Name and DIR_NTRes, the NT lower-case bits);
# every other field says what the name points to and moves in an exchange.
NAME_FIELDS = (0, 2)
FSTCLUSHI_FIELD, FSTCLUSLO_FIELD = 7, 10
# "FAT Long Directory Entries": LDIR_Ord, LDIR_Name1, LDIR_Attr, LDIR_Type, LDIR_Chksum,
# LDIR_Name2, LDIR_FstClusLO, LDIR_Name3.
LFN_ENTRY = struct.Struct("<B10sBBB12sH4s")
assert LFN_ENTRY.size == 32
LAST_LONG_ENTRY = 0x40
LFN_ORD_MASK = 0x3F
LFN_MAX_ENTRIES = 20  # 255 characters, 13 per entry

# DIR_Attr bits ("FAT Directory Structure").
ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20
ATTR_LONG_NAME = ATTR_READ_ONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_VOLUME_ID
ATTR_LONG_NAME_MASK = ATTR_LONG_NAME | ATTR_DIRECTORY | ATTR_ARCHIVE
# DIR_Name[0] markers: free, free and no used entry after it, a real 0xE5 first byte (KANJI).
SLOT_FREE = 0xE5
SLOT_END = 0x00
SLOT_KANJI_E5 = 0x05
DOT_NAMES = (b".          ", b"..         ")
# DIR_NTRes bits Windows NT (and Linux, mtools) use: base name / extension shown in lower case.
NTRES_LOWER_BASE = 0x08
NTRES_LOWER_EXT = 0x10
OEM_CODEPAGE = "cp437"

# "FAT Type Determination": the cluster count alone decides the type.
MAX_FAT12_CLUSTERS = 4084
MAX_FAT16_CLUSTERS = 65524
FIRST_CLUSTER = 2  # clusters 0 and 1 are reserved; data starts at cluster 2


class FatType(enum.StrEnum):
    FAT12 = "FAT12"
    FAT16 = "FAT16"
    FAT32 = "FAT32"


# "FAT Data Structure": FAT entry values at or above these end a cluster chain; one below is "bad".
END_OF_CHAIN = {FatType.FAT12: 0xFF8, FatType.FAT16: 0xFFF8, FatType.FAT32: 0x0FFFFFF8}
FAT32_ENTRY_MASK = 0x0FFFFFFF  # the high 4 bits are reserved


class FatError(CfsbootError):
    """A FAT filesystem cfsboot cannot read, or an edit it refuses to make."""


@dataclass(frozen=True)
class Geometry:
    """Where things are in a FAT filesystem (from its boot sector); byte offsets from its start."""

    fat_type: FatType
    bytes_per_sector: int
    sectors_per_cluster: int
    fat_offset: int  # the active FAT
    root_dir_offset: int  # FAT12/16: the fixed root directory region
    root_dir_entries: int  # FAT12/16
    root_cluster: int  # FAT32
    data_offset: int  # cluster 2
    cluster_count: int

    @property
    def cluster_size(self) -> int:
        return self.bytes_per_sector * self.sectors_per_cluster

    def cluster_offset(self, cluster: int) -> int:
        return self.data_offset + (cluster - FIRST_CLUSTER) * self.cluster_size

    def valid_cluster(self, cluster: int) -> bool:
        return FIRST_CLUSTER <= cluster < self.cluster_count + FIRST_CLUSTER

    def sector_of(self, pos: int) -> int:
        return pos // self.bytes_per_sector


def parse_boot_sector(data: bytes) -> Geometry:
    """The geometry of a FAT filesystem from its first sector (at least 512 bytes)."""
    if len(data) < BOOT_SECTOR_SIZE:
        raise FatError("not a FAT filesystem: the boot sector is truncated")
    sector = BOOT_SECTOR.parse(data)
    bpb, bpb32 = sector.bpb, sector.bpb32
    bytes_per_sector: int = bpb.BPB_BytsPerSec
    sectors_per_cluster: int = bpb.BPB_SecPerClus
    reserved: int = bpb.BPB_RsvdSecCnt
    num_fats: int = bpb.BPB_NumFATs
    root_entries: int = bpb.BPB_RootEntCnt
    fat_size16: int = bpb.BPB_FATSz16
    ext_flags: int = bpb32.BPB_ExtFlags
    root_cluster: int = bpb32.BPB_RootClus
    if (
        sector.Signature_word != SIGNATURE_WORD
        or bytes_per_sector not in SECTOR_SIZES
        or sectors_per_cluster not in CLUSTER_SECTORS
        or reserved == 0
        or num_fats == 0
    ):
        raise FatError("not a FAT filesystem: no valid boot sector (BPB)")
    fat_size: int = fat_size16 or bpb32.BPB_FATSz32
    total: int = bpb.BPB_TotSec16 or bpb.BPB_TotSec32
    root_dir_sectors = (root_entries * DIR_ENTRY.size + bytes_per_sector - 1) // bytes_per_sector
    first_data_sector = reserved + num_fats * fat_size + root_dir_sectors
    if fat_size == 0 or total <= first_data_sector:
        raise FatError("not a FAT filesystem: the BPB's sizes do not add up")
    cluster_count = (total - first_data_sector) // sectors_per_cluster
    if cluster_count <= MAX_FAT12_CLUSTERS:
        fat_type = FatType.FAT12
    elif cluster_count <= MAX_FAT16_CLUSTERS:
        fat_type = FatType.FAT16
    else:
        fat_type = FatType.FAT32
    active_fat = 0
    if fat_type is FatType.FAT32:
        if root_entries != 0 or fat_size16 != 0:
            raise FatError("not a FAT filesystem: FAT32 cluster count with a FAT16 BPB")
        if ext_flags & EXT_FLAGS_NO_MIRROR:
            active_fat = ext_flags & EXT_FLAGS_ACTIVE_FAT
            if active_fat >= num_fats:
                raise FatError(f"FAT32 BPB names FAT {active_fat} active of {num_fats}")
    elif root_entries == 0:
        raise FatError(f"not a FAT filesystem: {fat_type} without a root directory")
    geo = Geometry(
        fat_type=fat_type,
        bytes_per_sector=bytes_per_sector,
        sectors_per_cluster=sectors_per_cluster,
        fat_offset=(reserved + active_fat * fat_size) * bytes_per_sector,
        root_dir_offset=(reserved + num_fats * fat_size) * bytes_per_sector,
        root_dir_entries=root_entries,
        root_cluster=root_cluster if fat_type is FatType.FAT32 else 0,
        data_offset=first_data_sector * bytes_per_sector,
        cluster_count=cluster_count,
    )
    if fat_type is FatType.FAT32 and not geo.valid_cluster(root_cluster):
        raise FatError(f"FAT32 root directory at invalid cluster {root_cluster}")
    return geo


def lfn_checksum(short_name: bytes) -> int:
    """The checksum of an 11-byte 8.3 name that its LFN entries carry ("ChkSum")."""
    s = 0
    for byte in short_name:
        s = (((s & 1) << 7) + (s >> 1) + byte) & 0xFF
    return s


def short_name_text(raw_name: bytes, ntres: int) -> str:
    """`README.TXT` from `README  TXT`, lower-cased where the NT case bits say so."""
    name = bytes([0xE5]) + raw_name[1:] if raw_name[0] == SLOT_KANJI_E5 else raw_name
    base = name[:8].rstrip(b" ").decode(OEM_CODEPAGE)
    ext = name[8:].rstrip(b" ").decode(OEM_CODEPAGE)
    if ntres & NTRES_LOWER_BASE:
        base = base.lower()
    if ntres & NTRES_LOWER_EXT:
        ext = ext.lower()
    return f"{base}.{ext}" if ext else base


def _long_name(lfns: Sequence[bytes], checksum: int) -> str | None:
    """The long name the LFN entries before a short entry spell, or None if they do not belong.

    "FAT Long Directory Entries": the entries are stored last part first; the first
    carries LAST_LONG_ENTRY, their ordinals count down to 1, and each carries the
    checksum of the 8.3 name that follows.
    """
    if not lfns or len(lfns) > LFN_MAX_ENTRIES:
        return None
    units = b""
    for k, raw in enumerate(lfns):
        order, name1, _attr, kind, chksum, name2, cluster, name3 = LFN_ENTRY.unpack(raw)
        expect = len(lfns) - k
        last_flag = LAST_LONG_ENTRY if k == 0 else 0
        if order & ~LFN_ORD_MASK != last_flag or order & LFN_ORD_MASK != expect:
            return None
        if kind != 0 or cluster != 0 or chksum != checksum:
            return None
        units = name1 + name2 + name3 + units
    chars = [units[i : i + 2] for i in range(0, len(units), 2)]
    if b"\0\0" in chars:
        chars = chars[: chars.index(b"\0\0")]
    return b"".join(chars).decode("utf-16-le", errors="surrogatepass") or None


@dataclass(frozen=True)
class DirEntry:
    """A used name in a directory: its short entry and the LFN entries that belong to it."""

    short_name: str
    long_name: str | None
    index: int  # slot of the short entry in Directory.slots
    lfn_indices: tuple[int, ...]  # its LFN slots, in on-disk order
    attr: int
    first_cluster: int
    size: int

    @property
    def name(self) -> str:
        return self.long_name or self.short_name

    @property
    def is_dir(self) -> bool:
        return bool(self.attr & ATTR_DIRECTORY)

    def matches(self, name: str) -> bool:
        """Does `name` name this entry? FAT compares names case-insensitively."""
        want = name.casefold()
        return want == self.short_name.casefold() or (
            self.long_name is not None and want == self.long_name.casefold()
        )


@dataclass(frozen=True)
class Directory:
    """A directory's 32-byte slots (byte offsets in the filesystem and contents) and names."""

    positions: tuple[int, ...]
    slots: tuple[bytes, ...]
    entries: tuple[DirEntry, ...]
    end: int  # index of the first SLOT_END slot (no used slot from here on), or len(slots)

    def find(self, name: str) -> DirEntry | None:
        hits = [e for e in self.entries if e.matches(name)]
        if len(hits) > 1:
            names = ", ".join(e.name for e in hits)
            raise FatError(f"{name!r} names more than one directory entry ({names})")
        return hits[0] if hits else None

    def is_free(self, index: int) -> bool:
        return index >= self.end or self.slots[index][0] == SLOT_FREE


def parse_directory(positions: Sequence[int], slots: Sequence[bytes]) -> Directory:
    """The names in a directory's slots, without deleted entries, `.`, `..` and volume labels."""
    entries: list[DirEntry] = []
    pending: list[int] = []  # LFN slots since the last short entry
    end = len(slots)
    for i, raw in enumerate(slots):
        fields = DIR_ENTRY.unpack(raw)
        first, attr = raw[0], fields[1]
        if first == SLOT_END:
            end = i
            break
        if first == SLOT_FREE:
            pending = []
            continue
        if attr & ATTR_LONG_NAME_MASK == ATTR_LONG_NAME:
            pending = [i] if first & LAST_LONG_ENTRY else [*pending, i] if pending else []
            continue
        name11 = fields[0]
        if attr & ATTR_VOLUME_ID or name11 in DOT_NAMES:
            pending = []
            continue
        long_name = _long_name([slots[j] for j in pending], lfn_checksum(name11))
        entries.append(
            DirEntry(
                short_name=short_name_text(name11, fields[2]),
                long_name=long_name,
                index=i,
                lfn_indices=tuple(pending) if long_name is not None else (),
                attr=attr,
                first_cluster=fields[FSTCLUSHI_FIELD] << 16 | fields[FSTCLUSLO_FIELD],
                size=fields[-1],
            )
        )
        pending = []
    return Directory(tuple(positions), tuple(slots), tuple(entries), end)


def with_target(entry: bytes, target: bytes) -> bytes:
    """Short entry `entry` keeping its name but pointing where `target` points."""
    mine, theirs = DIR_ENTRY.unpack(entry), DIR_ENTRY.unpack(target)
    return DIR_ENTRY.pack(
        *(m if i in NAME_FIELDS else t for i, (m, t) in enumerate(zip(mine, theirs, strict=True)))
    )
