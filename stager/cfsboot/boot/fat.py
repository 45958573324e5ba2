"""Direct edits of FAT directories: RENAME_EXCHANGE for an ESP that mtools writes.

mtools cannot swap two names, and a FAT filesystem in an image file or on a
block device cannot be mounted on every host, so cfsboot edits the directory
itself. Section names below are those of Microsoft's "FAT: General Overview of
On-Disk Format" (fatgen103, version 1.03).

In FAT a directory entry *is* the inode: the 32-byte short entry holds the
name together with what it points to (attributes, first cluster, size,
timestamps), and optional long-name (LFN) entries in the slots just before it
hold the long name. Exchanging two names of one directory is therefore
swapping the "what it points to" fields of the two short entries while each
keeps its name (the 8.3 name, the NT case bits and its LFN entries, whose
checksum covers only the 8.3 name): the effect renameat2(RENAME_EXCHANGE) has
on a mounted vfat, where inodes (and so attributes and times) move, names stay.

Nothing inside an exchanged directory needs to change ("FAT Directory
Structure"): its `.` entry points to the directory's own first cluster, which
travels with its contents, and its `..` entry points to the parent's first
cluster (0 for the root), and both names have the same parent. No cluster
is allocated or freed, so the FATs and the FAT32 FSInfo sector stay as they
are.

Atomicity: a single sector write is atomic on disks (torn writes happen
between sectors, not inside one), as long as the filesystem's sectors are the
disk's, i.e. the partition starts on a sector boundary (GPT partitions do).
Every 32-byte entry lies inside one sector (entries are 32-byte aligned), and
each edit below rewrites whole sectors with one pwrite followed by fsync, so:

- both short entries in one sector: the exchange is one sector write and an
  fsync. A power cut leaves the old or the new pair.
- in different sectors: no order of the two in-place writes is safe. After
  either write both names point to the same clusters (a cross-link): fsck
  "repairs" one of them, and deleting the stale name (say the leftover
  `entries.staged`) frees clusters the other name still uses. Instead `b`'s
  entries are moved into `a`'s sector first: (1) delete `b` (its short entry's
  sector first), fsync; (2) in one write of `a`'s sector, point `a` at `b`'s
  old contents and recreate `b`'s entries, byte for byte, in free slots of
  that sector, pointing at `a`'s old contents; fsync. A power cut between the
  steps leaves `a` untouched and `b` missing, its contents a lost cluster
  chain (space `fsck.vfat -a` reclaims; nothing points at it, so nothing can
  be corrupted). If `a`'s sector has no room for `b`'s entries, the exchange
  is refused before anything is written.

So `a` is the name that must never go missing (`loader/entries`), `b` the one
that may (`loader/entries.staged`).
"""

from __future__ import annotations

import enum
import fcntl
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cfsboot.errors import CfsbootError

# "Boot Sector and BPB Structure", offsets 0-35 (all FAT types): BS_jmpBoot, BS_OEMName,
# BPB_BytsPerSec, BPB_SecPerClus, BPB_RsvdSecCnt, BPB_NumFATs, BPB_RootEntCnt, BPB_TotSec16,
# BPB_Media, BPB_FATSz16, BPB_SecPerTrk, BPB_NumHeads, BPB_HiddSec, BPB_TotSec32.
BPB = struct.Struct("<3s8sHBHBHHBHHHLL")
# "FAT32 Structure Starting at Offset 36": BPB_FATSz32, BPB_ExtFlags, BPB_FSVer, BPB_RootClus,
# BPB_FSInfo, BPB_BkBootSec, BPB_Reserved, BS_DrvNum, BS_Reserved1, BS_BootSig, BS_VolID,
# BS_VolLab, BS_FilSysType.
BPB32 = struct.Struct("<LHHLHH12sBBBL11s8s")
assert BPB.size == 36 and BPB.size + BPB32.size == 90
# "Boot Sector and BPB Structure": 0x55 0xAA at bytes 510 and 511 of sector 0.
BOOT_SIGNATURE = struct.Struct("<H")
BOOT_SIGNATURE_OFFSET = 510
BOOT_SIGNATURE_VALUE = 0xAA55
# BPB_ExtFlags: bit 7 set = only one FAT is active (bits 0-3 say which), else all are mirrors.
EXT_FLAGS_NO_MIRROR = 0x80
EXT_FLAGS_ACTIVE_FAT = 0x0F

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
    if len(data) < BOOT_SIGNATURE_OFFSET + BOOT_SIGNATURE.size:
        raise FatError("not a FAT filesystem: the boot sector is truncated")
    (sig,) = BOOT_SIGNATURE.unpack_from(data, BOOT_SIGNATURE_OFFSET)
    (
        _jmp,
        _oem,
        bytes_per_sector,
        sectors_per_cluster,
        reserved,
        num_fats,
        root_entries,
        total16,
        _media,
        fat_size16,
        _spt,
        _heads,
        _hidden,
        total32,
    ) = BPB.unpack_from(data, 0)
    fat_size32, ext_flags, _ver, root_cluster, *_ = BPB32.unpack_from(data, BPB.size)
    if (
        sig != BOOT_SIGNATURE_VALUE
        or bytes_per_sector not in (512, 1024, 2048, 4096)
        or sectors_per_cluster not in (1, 2, 4, 8, 16, 32, 64, 128)
        or reserved == 0
        or num_fats == 0
    ):
        raise FatError("not a FAT filesystem: no valid boot sector (BPB)")
    fat_size = fat_size16 or fat_size32
    total = total16 or total32
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


class FatFs:
    """A FAT filesystem at byte `offset` of an open image file or block device."""

    def __init__(self, fd: int, offset: int = 0) -> None:
        self.fd = fd
        self.offset = offset
        self.geometry = parse_boot_sector(self._read(0, 512))

    @classmethod
    @contextmanager
    def open(cls, image: Path, offset: int = 0) -> Iterator[FatFs]:
        """Open for editing, holding an exclusive flock like mtools' own device lock."""
        try:
            fd = os.open(image, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise FatError(f"cannot open {image}: {e.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield cls(fd, offset)
        finally:
            os.close(fd)

    # -- reading ---------------------------------------------------------------

    def _read(self, pos: int, size: int) -> bytes:
        data = os.pread(self.fd, size, self.offset + pos)
        if len(data) != size:
            raise FatError(f"FAT filesystem truncated: no {size} bytes at offset {pos}")
        return data

    def fat_entry(self, cluster: int) -> int:
        """The active FAT's entry for `cluster`: the next cluster, 0 (free) or end of chain."""
        geo = self.geometry
        if geo.fat_type is FatType.FAT32:
            (value,) = struct.unpack("<L", self._read(geo.fat_offset + 4 * cluster, 4))
            return int(value) & FAT32_ENTRY_MASK
        if geo.fat_type is FatType.FAT16:
            (value,) = struct.unpack("<H", self._read(geo.fat_offset + 2 * cluster, 2))
            return int(value)
        # FAT12: 12-bit entries packed in pairs; an odd cluster uses the high 12 bits.
        (pair,) = struct.unpack("<H", self._read(geo.fat_offset + cluster + cluster // 2, 2))
        return int(pair) >> 4 if cluster & 1 else int(pair) & 0xFFF

    def chain(self, first: int) -> list[int]:
        """The clusters of a chain starting at `first`."""
        geo = self.geometry
        clusters: list[int] = []
        cluster = first
        while True:
            if not geo.valid_cluster(cluster) or len(clusters) >= geo.cluster_count:
                raise FatError(f"corrupt FAT: invalid cluster {cluster} in the chain at {first}")
            clusters.append(cluster)
            cluster = self.fat_entry(cluster)
            if cluster >= END_OF_CHAIN[geo.fat_type]:
                return clusters

    def read_directory(self, first_cluster: int | None) -> Directory:
        """The directory whose first cluster is given; None (or 0, as `..` says) is the root."""
        geo = self.geometry
        if not first_cluster and geo.fat_type is not FatType.FAT32:
            extents = [(geo.root_dir_offset, geo.root_dir_entries * DIR_ENTRY.size)]
        else:
            start = first_cluster or geo.root_cluster
            extents = [(geo.cluster_offset(c), geo.cluster_size) for c in self.chain(start)]
        positions: list[int] = []
        slots: list[bytes] = []
        for pos, size in extents:
            data = self._read(pos, size)
            for off in range(0, size, DIR_ENTRY.size):
                positions.append(pos + off)
                slots.append(data[off : off + DIR_ENTRY.size])
        return parse_directory(positions, slots)

    def directory(self, path: Sequence[str]) -> Directory:
        """The directory at `path` (components from the root)."""
        d = self.read_directory(None)
        for i, part in enumerate(path):
            e = d.find(part)
            if e is None or not e.is_dir or e.first_cluster == 0:
                raise FatError(f"no directory {'/'.join(path[: i + 1])}")
            d = self.read_directory(e.first_cluster)
        return d

    # -- writing ---------------------------------------------------------------

    def _write_sector(self, sector: int, changes: Mapping[int, bytes]) -> None:
        """Rewrite slots (byte offset -> 32 bytes) with one write of their sector, then fsync."""
        size = self.geometry.bytes_per_sector
        start = sector * size
        data = bytearray(self._read(start, size))
        for pos, raw in changes.items():
            if self.geometry.sector_of(pos) != sector or len(raw) != DIR_ENTRY.size:
                raise AssertionError(f"slot at {pos} is not in sector {sector}")
            data[pos - start : pos - start + DIR_ENTRY.size] = raw
        if os.pwrite(self.fd, bytes(data), self.offset + start) != size:
            raise FatError(f"short write to sector {sector}")
        os.fsync(self.fd)

    def exchange(self, parent: Sequence[str], a: str, b: str) -> None:
        """Swap what names `a` and `b` of directory `parent` point to; `a` never goes missing."""
        d = self.directory(parent)
        ea, eb = d.find(a), d.find(b)
        where = "/".join(parent) or "/"
        for name, e in ((a, ea), (b, eb)):
            if e is None:
                raise FatError(f"no {name} in {where}")
        assert ea is not None and eb is not None
        if ea.index == eb.index:
            raise FatError(f"{a} and {b} are the same entry in {where}")
        raw_a, raw_b = d.slots[ea.index], d.slots[eb.index]
        new_a, new_b = with_target(raw_a, raw_b), with_target(raw_b, raw_a)
        pos_a, pos_b = d.positions[ea.index], d.positions[eb.index]
        sector_a = self.geometry.sector_of(pos_a)
        if sector_a == self.geometry.sector_of(pos_b):
            self._write_sector(sector_a, {pos_a: new_a, pos_b: new_b})
            return
        b_slots = [*eb.lfn_indices, eb.index]
        run = self._free_run(d, sector_a, len(b_slots), set(b_slots))
        if run is None:
            raise FatError(
                f"not atomic: the entries of {a} and {b} are in different sectors of {where}, "
                f"and {a}'s has no {len(b_slots)} free slots to take {b}'s",
                hint=f"recreate {b} (its new entry may land next to {a}'s), or run the "
                "exchange on a mounted filesystem",
            )
        # Step 1: delete b, short entry first (then any LFN entries in other sectors), so a
        # crash never leaves b visible under its 8.3 alias.
        by_sector: dict[int, dict[int, bytes]] = {}
        for i in reversed(b_slots):
            pos = d.positions[i]
            by_sector.setdefault(self.geometry.sector_of(pos), {})[pos] = (
                bytes([SLOT_FREE]) + d.slots[i][1:]
            )
        for sector, changes in by_sector.items():
            self._write_sector(sector, changes)
        # Step 2, one sector: a points at b's old contents; b is back, pointing at a's.
        changes = {pos_a: new_a}
        for k, i in enumerate(b_slots):
            changes[d.positions[run + k]] = new_b if i == eb.index else d.slots[i]
        self._write_sector(sector_a, changes)

    def _free_run(self, d: Directory, sector: int, count: int, freed: set[int]) -> int | None:
        """The first slot of `count` consecutive free slots in `sector` (counting `freed`)."""
        inside = [i for i, pos in enumerate(d.positions) if self.geometry.sector_of(pos) == sector]
        run: list[int] = []
        for i in inside:
            run = [*run, i] if d.is_free(i) or i in freed else []
            if len(run) == count:
                after = run[-1] + 1
                # Slots past the end marker are free; the one after a run that moves the
                # end must still read as the end, or stale bytes would show up as names.
                if run[-1] >= d.end and after < len(d.slots) and d.slots[after][0] != SLOT_END:
                    return None
                return run[0]
        return None
