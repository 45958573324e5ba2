"""Which block devices stand on which: partitions, holders and slaves, loop devices, swap.

Everything is read from sysfs (`/sys/dev/block/MAJ:MIN` and `/sys/class/block/NAME`:
`dev`, `partition`, `holders/`, `slaves/`, `loop/backing_file`) and from `/proc/swaps`;
both roots are parameters, so tests can hand in a tree of their own. A device is
named by its number (`os.makedev`); walks are iterative (no recursion).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

SYS = Path("/sys")
PROC_SWAPS = Path("/proc/swaps")
_DELETED = " (deleted)"  # what the kernel appends to a loop's backing_file once it is unlinked


def device_number(path: str | os.PathLike[str]) -> int | None:
    """st_rdev of a block device node, None for anything else (an image file)."""
    st = os.stat(path)
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def node(dev: int, sys: Path = SYS) -> Path | None:
    """The sysfs directory of block device `dev`, or None if there is none."""
    link = sys / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}"
    return link.resolve() if link.exists() else None


def name(dev: int, sys: Path = SYS) -> str:
    """/dev/NAME as the kernel names the device (MAJ:MIN where sysfs does not know it)."""
    where = node(dev, sys)
    return f"/dev/{where.name}" if where is not None else f"{os.major(dev)}:{os.minor(dev)}"


def _number(where: Path) -> int | None:
    try:
        major, _, minor = (where / "dev").read_text().strip().partition(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None


def _entries(where: Path, sub: str) -> Iterator[Path]:
    try:
        yield from ((where / sub / n).resolve() for n in sorted(os.listdir(where / sub)))
    except FileNotFoundError:
        return


def partitions(where: Path) -> Iterator[Path]:
    """The partitions of a whole disk (the subdirectories that have a `partition` file)."""
    try:
        children = sorted(os.listdir(where))
    except FileNotFoundError:
        return
    for child in children:
        if (where / child / "partition").exists():
            yield where / child


def loop_backing_file(where: Path) -> str | None:
    """The file (or device) a loop device reads, None for other devices or a detached loop."""
    try:
        text = (where / "loop" / "backing_file").read_text().rstrip("\n")
    except OSError:
        return None
    return text.removesuffix(_DELETED) or None


def _same_file(a: str, b: os.stat_result) -> bool:
    try:
        st = os.stat(a)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (b.st_dev, b.st_ino)


def loops_of(path: str | os.PathLike[str], sys: Path = SYS) -> list[int]:
    """Loop devices whose backing file is `path` (the same inode, by whatever name)."""
    target = os.stat(path)
    found = []
    for where in _entries(sys, "block"):
        backing = loop_backing_file(where)
        if backing is not None and _same_file(backing, target):
            dev = _number(where)
            if dev is not None:
                found.append(dev)
    return found


def stacked_on(devs: Iterable[int], sys: Path = SYS) -> set[int]:
    """`devs`, their partitions, and every device built on any of them (dm, md, loop...),
    transitively: what writing over `devs` would pull the ground from under."""
    seen: set[int] = set()
    todo = list(devs)
    while todo:
        dev = todo.pop()
        if dev in seen:
            continue
        seen.add(dev)
        where = node(dev, sys)
        if where is None:
            continue
        for above in (*partitions(where), *_entries(where, "holders")):
            if (n := _number(above)) is not None:
                todo.append(n)
        todo.extend(_loops_over_device(dev, sys))
    return seen


def _loops_over_device(dev: int, sys: Path) -> Iterator[int]:
    """Loop devices whose backing file is the device node of `dev` (losetup /dev/sdb)."""
    for where in _entries(sys, "block"):
        backing = loop_backing_file(where)
        if backing is None:
            continue
        try:
            st = os.stat(backing)
        except OSError:
            continue
        if stat.S_ISBLK(st.st_mode) and st.st_rdev == dev and (n := _number(where)) is not None:
            yield n


def underneath(dev: int, sys: Path = SYS) -> set[int]:
    """`dev` and every device it is built from, transitively: slaves (dm, md), the whole
    disk of a partition, and the device holding a loop device's backing file."""
    seen: set[int] = set()
    todo = [dev]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        where = node(d, sys)
        if where is None:
            continue
        below = list(_entries(where, "slaves"))
        if (where / "partition").exists():
            below.append(where.parent)
        todo.extend(n for b in below if (n := _number(b)) is not None)
        backing = loop_backing_file(where)
        if backing is not None:
            try:
                st = os.stat(backing)
            except OSError:
                continue
            todo.append(st.st_rdev if stat.S_ISBLK(st.st_mode) else st.st_dev)
    return seen


@dataclass(frozen=True)
class Swap:
    """One line of /proc/swaps."""

    filename: str
    kind: str  # "partition" or "file"


def _unescape(field: str) -> str:
    # /proc/swaps escapes spaces, tabs, newlines and backslashes as octal (\040).
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse_swaps(text: str) -> list[Swap]:
    """The swap areas in use, from /proc/swaps (its first line is a header)."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 2:
            out.append(Swap(_unescape(fields[0]).removesuffix(_DELETED), fields[1]))
    return out


def swaps(path: Path = PROC_SWAPS) -> list[Swap]:
    try:
        return parse_swaps(path.read_text())
    except FileNotFoundError:
        return []
