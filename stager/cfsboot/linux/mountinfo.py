"""/proc/self/mountinfo, parsed once and decoded: the one reader of the mount table.

proc_pid_mountinfo(5): each line is

    36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
    (1)(2)(3)   (4)   (5)      (6)      (7)   (8) (9)     (10)         (11)

mount ID, parent ID, major:minor of st_dev, root of the mount inside its
filesystem (not "/" for a bind mount of a subdirectory), mount point, per-mount
options, zero or more optional fields (`shared:N`, `master:N`,
`propagate_from:N`, `unbindable`), a lone "-", filesystem type, mount source,
per-superblock options. The kernel escapes space, tab, newline and backslash
in the text fields as octal (`\\040`, `\\011`, `\\012`, `\\134`; fs/proc_namespace.c,
mangle() and seq_path()), so fields are split on single spaces (an empty
source stays a field) and decoded afterwards.

Why not psutil.disk_partitions(): it reads /proc/self/mounts, which has no
mount IDs, no major:minor and no root, so a bind mount of a directory of a
filesystem cannot be told from the filesystem itself.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cfsboot.errors import CfsbootError

MOUNTINFO = "/proc/self/mountinfo"
SEPARATOR = b"-"
# Fields before the optional ones: ID, parent, major:minor, root, mount point, options.
FIXED_FIELDS = 6
# After the separator: type, source, superblock options.
TAIL_FIELDS = 3

_OCTAL = re.compile(rb"\\([0-7]{3})")


class MountinfoError(CfsbootError):
    """A mountinfo line cfsboot cannot read."""


def unescape(field: bytes) -> str:
    """A mountinfo text field with its octal escapes decoded (`a\\040b` -> `a b`)."""
    if b"\\" in field:
        field = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field)
    return os.fsdecode(field)


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo, decoded."""

    mount_id: int
    parent_id: int
    major: int
    minor: int
    root: str  # the directory of the filesystem mounted here ("/": the whole filesystem)
    mount_point: str
    options: tuple[str, ...]  # per-mount options (rw, nosuid, relatime, ...)
    optional: tuple[str, ...]  # shared:N, master:N, propagate_from:N, unbindable
    fstype: str  # with its subtype, as the kernel shows it (fuse.sshfs)
    source: str  # "none" or "" when the filesystem has none
    super_options: tuple[str, ...]

    @property
    def dev(self) -> int:
        """st_dev of files on this mount (btrfs: one of its anonymous devices, not the disk's)."""
        return os.makedev(self.major, self.minor)

    @property
    def is_bind(self) -> bool:
        """A mount of a directory of a filesystem rather than of its top."""
        return self.root != "/"

    def peer_group(self, tag: str = "shared") -> int | None:
        """The N of optional field `shared:N` (or `master:N`, `propagate_from:N`), if present."""
        for field in self.optional:
            name, _, value = field.partition(":")
            if name == tag and value.isdigit():
                return int(value)
        return None

    def holds(self, path: str) -> bool:
        """Is absolute, normalised `path` this mount point or below it?"""
        point = self.mount_point
        return path == point or path.startswith(point.rstrip("/") + "/")


def _options(field: bytes) -> tuple[str, ...]:
    return tuple(unescape(o) for o in field.split(b",")) if field else ()


def parse_line(line: bytes, *, where: str = MOUNTINFO) -> Mount:
    """One mountinfo line (without its newline)."""
    fields = line.split(b" ")
    try:
        sep = fields.index(SEPARATOR, FIXED_FIELDS)
    except ValueError:
        raise MountinfoError(f"{where}: no '-' separator in {line!r}") from None
    if len(fields) - sep - 1 != TAIL_FIELDS:
        raise MountinfoError(
            f"{where}: {len(fields) - sep - 1} fields after '-' (expected {TAIL_FIELDS})"
            f" in {line!r}"
        )
    try:
        major, _, minor = fields[2].partition(b":")
        mount_id, parent_id, major_n, minor_n = (
            int(fields[0]),
            int(fields[1]),
            int(major),
            int(minor),
        )
    except ValueError:
        raise MountinfoError(f"{where}: bad mount ID or major:minor in {line!r}") from None
    fstype, source, super_options = fields[sep + 1 :]
    return Mount(
        mount_id=mount_id,
        parent_id=parent_id,
        major=major_n,
        minor=minor_n,
        root=unescape(fields[3]),
        mount_point=unescape(fields[4]),
        options=_options(fields[5]),
        optional=tuple(unescape(f) for f in fields[FIXED_FIELDS:sep]),
        fstype=unescape(fstype),
        source=unescape(source),
        super_options=_options(super_options),
    )


def parse(data: bytes, *, where: str = MOUNTINFO) -> tuple[Mount, ...]:
    """Every mount in mountinfo text, in the kernel's order."""
    return tuple(parse_line(line, where=where) for line in data.split(b"\n") if line)


def read(path: str = MOUNTINFO) -> tuple[Mount, ...]:
    """The mount table (OSError if it cannot be read; MountinfoError if it is not mountinfo)."""
    with open(path, "rb") as f:
        return parse(f.read(), where=path)


def mount_of(path: str | os.PathLike[str], mounts: Iterable[Mount]) -> Mount | None:
    """The mount that holds `path` (resolved): the deepest mount point above it, the last
    one listed where several are stacked on one point (it hides those below it)."""
    target = os.path.realpath(path)
    best: Mount | None = None
    for m in mounts:
        if m.holds(target) and (best is None or len(m.mount_point) >= len(best.mount_point)):
            best = m
    return best


def mounted_at(point: str, mounts: Sequence[Mount]) -> Mount | None:
    """The mount visible at `point` (the last one mounted there), or None."""
    return next((m for m in reversed(mounts) if m.mount_point == point), None)
