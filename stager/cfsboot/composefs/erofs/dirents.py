"""Directory entries of a composefs EROFS image (lcfs-writer-erofs.c, composefs 1.0.8).

A directory's entries ('.', '..' and its children, in name byte order) are cut into
blocks of at most 4096 bytes; each block holds all its dirents, then all its names. The
last block is stored inline after the inode when it fits (the layout decides).
"""

from __future__ import annotations

import struct
from bisect import bisect_left
from collections.abc import Callable
from typing import Final

from cfsboot.composefs.erofs import format as fmt
from cfsboot.composefs.erofs.format import DIRENT

BLK: Final = fmt.BLOCK_SIZE
_DIRENT_LEN: Final = 12  # fmt.DIRENT.size


class Directory:
    """A directory's entries: names in byte order and the inodes (indexes) they name."""

    __slots__ = ("parent", "names", "name_bytes", "first", "targets", "nlink")

    def __init__(
        self,
        parent: int,
        names: list[bytes],
        name_bytes: int,
        first: int,
        targets: list[int] | None,
        nlink: int,
    ) -> None:
        self.parent = parent  # index of '..'
        self.names = names
        self.name_bytes = name_bytes  # sum of the name lengths
        # Index of the first child placed in this directory; the children placed here
        # follow it. `targets` is None when every entry is a child placed here (names[k]
        # is inode first + k), else the index of each entry's inode (hardlinks).
        self.first = first
        self.targets = targets
        self.nlink = nlink  # 2 + subdirectories, as lcfs_compute_tree counts


def block_sizes(d: Directory) -> tuple[int, int]:
    """(number of blocks of entries, byte size of the last one) of a directory."""
    total = _DIRENT_LEN * (len(d.names) + 2) + d.name_bytes + 3
    if total <= BLK:
        return 1, total
    count = 1
    used = 0
    for name in _with_dots(d.names):
        ln = _DIRENT_LEN + len(name)
        if used + ln > BLK:
            count += 1
            used = 0
        used += ln
    return count, used


def _with_dots(names: list[bytes]) -> list[bytes]:
    out = list(names)
    out.insert(bisect_left(out, b"."), b".")
    out.insert(bisect_left(out, b".."), b"..")
    return out


def write(
    buf: bytearray,
    index: int,
    d: Directory,
    nids: list[int],
    fts: list[int],
    starts: list[int],
) -> None:
    """Write the entries of directory `index` into `buf`, block k at starts[k] (the last
    one may be the inline tail: the layout says where)."""
    names = d.names
    targets = d.targets
    first = d.first
    # "." and ".." go where strcmp order puts them among the names: "." at `dot`, and
    # ".." after the names between the two (such as ".-x").
    dot = bisect_left(names, b".")
    dotdot = bisect_left(names, b"..") + 1
    total = len(names) + 2
    counts = [total] if len(starts) == 1 else _block_counts(names, dot, dotdot)
    k = 0
    for block, count in enumerate(counts):
        values: list[int] = []  # nid, name offset and file type of each dirent
        block_names: list[bytes] = []
        nameoff = _DIRENT_LEN * count
        for _ in range(count):
            if k == dot:
                name = b"."
                target = index
            elif k == dotdot:
                name = b".."
                target = d.parent
            else:
                j = k if k < dot else k - 1 if k < dotdot else k - 2
                name = names[j]
                target = first + j if targets is None else targets[j]
            values.append(nids[target])
            values.append(nameoff)
            values.append(fts[target])
            block_names.append(name)
            nameoff += len(name)
            k += 1
        pack = _PACKERS.get(count)
        if pack is None:
            pack = _PACKERS[count] = struct.Struct(
                "<" + DIRENT.format.lstrip("<") * count
            ).pack_into
        start = starts[block]
        pack(buf, start, *values)
        blob = b"".join(block_names)
        off = start + _DIRENT_LEN * count
        buf[off : off + len(blob)] = blob


def _block_counts(names: list[bytes], dot: int, dotdot: int) -> list[int]:
    """How many entries each block holds, for a directory of more than one block."""
    counts: list[int] = []
    count = used = 0
    j = 0
    for k in range(len(names) + 2):
        if k == dot:
            ln = _DIRENT_LEN + 1
        elif k == dotdot:
            ln = _DIRENT_LEN + 2
        else:
            ln = _DIRENT_LEN + len(names[j])
            j += 1
        if used + ln > BLK:
            counts.append(count)
            count = used = 0
        used += ln
        count += 1
    counts.append(count)
    return counts


# pack_into of a block's dirents, by their number (at most 4096 / 13)
_PACKERS: Final[dict[int, Callable[..., None]]] = {}
