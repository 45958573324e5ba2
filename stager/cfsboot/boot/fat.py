"""Direct edits of FAT directories: RENAME_EXCHANGE for an ESP that mtools writes.

mtools cannot swap two names, and a FAT filesystem in an image file or on a
block device cannot be mounted on every host, so cfsboot edits the directory
itself. The on-disk format is declared in cfsboot.boot.fatformat; section names
are those of Microsoft's "FAT: General Overview of On-Disk Format" (fatgen103,
version 1.03).

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

import fcntl
import os
import struct
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from cfsboot.boot.fatformat import (
    ATTR_ARCHIVE,
    ATTR_DIRECTORY,
    ATTR_LONG_NAME,
    ATTR_VOLUME_ID,
    BOOT_SECTOR_SIZE,
    DIR_ENTRY,
    END_OF_CHAIN,
    FAT32_ENTRY_MASK,
    LAST_LONG_ENTRY,
    LFN_ENTRY,
    NTRES_LOWER_BASE,
    NTRES_LOWER_EXT,
    SLOT_END,
    SLOT_FREE,
    Directory,
    DirEntry,
    FatError,
    FatType,
    Geometry,
    lfn_checksum,
    parse_boot_sector,
    parse_directory,
    short_name_text,
    with_target,
)

# The format's names that callers (and tests) reach through this module.
__all__ = [
    "FatFs",
    "ATTR_ARCHIVE",
    "ATTR_DIRECTORY",
    "ATTR_LONG_NAME",
    "ATTR_VOLUME_ID",
    "DIR_ENTRY",
    "LAST_LONG_ENTRY",
    "LFN_ENTRY",
    "NTRES_LOWER_BASE",
    "NTRES_LOWER_EXT",
    "SLOT_FREE",
    "DirEntry",
    "Directory",
    "FatError",
    "FatType",
    "Geometry",
    "lfn_checksum",
    "parse_boot_sector",
    "parse_directory",
    "short_name_text",
    "with_target",
]


class FatFs:
    """A FAT filesystem at byte `offset` of an open image file or block device."""

    def __init__(self, fd: int, offset: int = 0) -> None:
        self.fd = fd
        self.offset = offset
        self.geometry = parse_boot_sector(self._read(0, BOOT_SECTOR_SIZE))

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
