"""Layer records and their application to a tree with OCI whiteout semantics.

A layer record is what the import keeps of a layer tarball: every entry's
metadata, inline content for small files and object digests for the rest. It
is enough to rebuild the image tree without reading the tarball again.

Within one layer, whiteouts apply only to what lower layers made (OCI image
spec, "Whiteouts"), so a record is applied in two passes: first its
whiteouts and opaque markers against the lower tree, then its entries.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import zstandard

from cfsboot.composefs.tree import INLINE_MAX, Inode, lookup, split_path
from cfsboot.errors import CfsbootError
from cfsboot.oci.tar import MAX_PATH, MAX_XATTR_VALUE, Kind

WHITEOUT_PREFIX = b".wh."
OPAQUE_MARKER = b".wh..wh..opq"
RECORD_FORMAT = 1


class LayerError(CfsbootError):
    """A layer whose entries cannot be applied (hostile or inconsistent)."""


# A record entry's operation: a tar member's kind, or one of the two OCI whiteouts.
Op = Kind


_IFMT = {
    Op.FILE: stat.S_IFREG,
    Op.DIR: stat.S_IFDIR,
    Op.SYMLINK: stat.S_IFLNK,
    Op.CHAR: stat.S_IFCHR,
    Op.BLOCK: stat.S_IFBLK,
    Op.FIFO: stat.S_IFIFO,
}


@dataclass(frozen=True, slots=True)
class RecordEntry:
    op: Op
    path: bytes  # components joined by '/', "" = root
    mode: int = 0
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    mtime_nsec: int = 0
    size: int = 0
    link: bytes = b""  # symlink target or hardlink target path
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)
    content: bytes | None = None  # inline content (files of 64 bytes or less)
    digest: str | None = None  # object hex digest (larger files)


@dataclass
class LayerRecord:
    diff_id: str
    algorithm: str  # fs-verity algorithm of the object digests
    entries: list[RecordEntry]

    def objects(self) -> set[str]:
        return {e.digest for e in self.entries if e.digest is not None}

    def content_size(self) -> int:
        return sum(e.size for e in self.entries if e.op is Op.FILE)

    # Serialised as zstd-compressed JSON; bytes travel as latin-1 strings (lossless).
    def to_bytes(self) -> bytes:
        rows = [_row(e) for e in self.entries]
        doc = {
            "format": RECORD_FORMAT,
            "diff_id": self.diff_id,
            "algorithm": self.algorithm,
            "entries": rows,
        }
        raw = json.dumps(doc, separators=(",", ":")).encode()
        return bytes(zstandard.ZstdCompressor(level=3).compress(raw))

    @classmethod
    def from_bytes(cls, data: bytes) -> LayerRecord:
        try:
            doc = json.loads(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 31))
            if doc["format"] != RECORD_FORMAT:
                raise ValueError(f"unknown format {doc['format']!r:.40}")
            diff_id, algorithm = doc["diff_id"], doc["algorithm"]
            if not isinstance(diff_id, str) or not isinstance(algorithm, str):
                raise TypeError("diff_id or algorithm is not a string")
            entries = [_unrow(r) for r in doc["entries"]]
            return cls(diff_id, algorithm, entries)
        except (
            ValueError,
            KeyError,
            TypeError,
            IndexError,
            AttributeError,  # a value of the wrong JSON type (`.items()` of a list, ...)
            OverflowError,  # int() of Infinity
            RecursionError,  # json.loads of [[[[...
            zstandard.ZstdError,
        ) as e:
            raise LayerError(f"corrupt layer record in the repository ({e!s:.200})") from None


def _s(b: bytes) -> str:
    return b.decode("latin-1")


def _b(s: str) -> bytes:
    return s.encode("latin-1")


def _row(e: RecordEntry) -> list[Any]:
    return [
        str(e.op),
        _s(e.path),
        e.mode,
        e.uid,
        e.gid,
        e.mtime,
        e.mtime_nsec,
        e.size,
        _s(e.link),
        e.rdev,
        {_s(k): _s(v) for k, v in e.xattrs.items()},
        None if e.content is None else _s(e.content),
        e.digest,
    ]


def _fits(path: bytes) -> bool:
    """A path as the tar reader normalises them: no `..`, NUL or overlong name."""
    comps = split_path(path)
    return (
        len(path) <= MAX_PATH
        and b"\0" not in path
        and b".." not in comps
        and all(len(c) <= 255 for c in comps)
    )


# Row fields that are numbers, with what the EROFS image can hold (the tar reader's limits).
_NUMBERS = (
    (2, 0o7777, "mode"),
    (3, 0xFFFFFFFF, "uid"),
    (4, 0xFFFFFFFF, "gid"),
    (5, (1 << 63) - 1, "mtime"),
    (6, 999_999_999, "mtime_nsec"),
    (7, 1 << 42, "size"),
    (9, 0xFFFFFFFF, "rdev"),
)


def _unrow(r: list[Any]) -> RecordEntry:
    """A record entry back from its row, checked as far as using it needs (the repository's
    files are ours, but a damaged one must be a LayerError, not a crash or a path outside)."""
    if not isinstance(r, list) or len(r) != 13:
        raise ValueError("an entry is not a row of 13 values")
    path, link, digest, content = r[1], r[8], r[12], r[11]
    if not isinstance(path, str) or not isinstance(link, str) or not _fits(_b(path)):
        raise ValueError(f"bad entry path {path!r:.80}")
    if len(link) > MAX_PATH or "\0" in link:
        raise ValueError(f"bad link target of {path!r:.80}")
    if content is not None and not (isinstance(content, str) and len(content) <= INLINE_MAX):
        raise ValueError(f"bad inline content of {path!r:.80}")
    if not isinstance(r[10], dict) or not all(
        isinstance(k, str) and 0 < len(k) <= 255 and "\0" not in k
        and isinstance(v, str) and len(v) <= MAX_XATTR_VALUE
        for k, v in r[10].items()
    ):  # fmt: skip
        raise ValueError(f"bad xattrs of {path!r:.80}")
    for i, limit, what in _NUMBERS:
        if not (isinstance(r[i], int) and 0 <= r[i] <= limit):
            raise ValueError(f"bad {what} of {path!r:.80}")
    if digest is not None and not (
        isinstance(digest, str)
        and len(digest) in (64, 128)
        and digest.isascii()
        and all(c in "0123456789abcdef" for c in digest)
    ):
        raise ValueError(f"bad object digest of {path!r:.80}")
    return RecordEntry(
        op=Op(r[0]),
        path=_b(r[1]),
        mode=int(r[2]),
        uid=int(r[3]),
        gid=int(r[4]),
        mtime=int(r[5]),
        mtime_nsec=int(r[6]),
        size=int(r[7]),
        link=_b(r[8]),
        rdev=int(r[9]),
        xattrs={_b(k): _b(v) for k, v in r[10].items()},
        content=None if r[11] is None else _b(r[11]),
        digest=r[12],
    )


def is_aufs_meta(path: bytes) -> bool:
    """`.wh..wh.*` names other than the opaque marker: aufs bookkeeping (plnk, aufs), skipped."""
    name = path.rpartition(b"/")[2]
    return name.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX) and name != OPAQUE_MARKER


def whiteout_of(path: bytes) -> RecordEntry | None:
    """The whiteout/opaque operation a member path stands for, or None for an ordinary entry."""
    parent, _, name = path.rpartition(b"/")
    if not name.startswith(WHITEOUT_PREFIX):
        return None
    if name == OPAQUE_MARKER:
        return RecordEntry(Op.OPAQUE, parent)
    target = name[len(WHITEOUT_PREFIX) :]
    if target in (b"", b".", b"..") and not parent:
        raise LayerError(f"layer whites out the root directory ({path.decode(errors='replace')})")
    if target in (b"", b".", b".."):
        raise LayerError(f"invalid whiteout {path.decode(errors='replace')!r}")
    return RecordEntry(Op.WHITEOUT, parent + b"/" + target if parent else target)


class RecordBuilder:
    """Collects entries of one layer in tar order, rejecting duplicates."""

    def __init__(self, diff_id: str, algorithm: str) -> None:
        self.record = LayerRecord(diff_id, algorithm, [])
        self._seen: set[bytes] = set()

    def add(self, entry: RecordEntry, member_path: bytes) -> None:
        if member_path in self._seen:
            shown = member_path.decode(errors="replace") or "/"
            raise LayerError(f"layer {self.record.diff_id} has duplicate entries for {shown!r}")
        self._seen.add(member_path)
        if entry.path == b"" and entry.op is not Op.DIR and entry.op is not Op.OPAQUE:
            raise LayerError(
                f"layer {self.record.diff_id} has a root entry that is not a directory"
            )
        self.record.entries.append(entry)


def _new_inode(e: RecordEntry) -> Inode:
    if e.op is Op.DIR:
        node = Inode.directory(e.mode)
    else:
        node = Inode(mode=_IFMT[e.op] | (e.mode & 0o7777))
    node.uid, node.gid = e.uid, e.gid
    node.mtime, node.mtime_nsec = e.mtime, e.mtime_nsec
    node.xattrs = dict(e.xattrs)
    if e.op is Op.FILE:
        node.size = e.size
        if e.digest is not None:
            node.digest = bytes.fromhex(e.digest)
            node.payload = f"{e.digest[:2]}/{e.digest[2:]}".encode()
        elif e.size:
            node.content = e.content
    elif e.op is Op.SYMLINK:
        node.payload = e.link
        node.size = len(e.link)
    elif e.op in (Op.CHAR, Op.BLOCK):
        node.rdev = e.rdev
    return node


def _parent_dir(root: Inode, comps: list[bytes], path: bytes) -> Inode:
    """The directory holding `path`, created (0755 root:root, mtime 0) where missing."""
    node = root
    for c in comps:
        assert node.children is not None
        child = node.children.get(c)
        if child is None:
            child = Inode.directory(0o755)
            node.children[c] = child
        elif not child.is_dir():
            shown = path.decode(errors="replace")
            raise LayerError(
                f"cannot create {shown!r}: a parent is not a directory (symlinks are not followed)"
            )
        node = child
    return node


def apply_layer(root: Inode, record: LayerRecord) -> None:
    """Apply one layer record on top of `root` (mutated in place)."""
    # Pass 1: whiteouts and opaque markers against the lower layers.
    for e in record.entries:
        if e.op is Op.WHITEOUT:
            comps = split_path(e.path)
            parent = lookup(root, b"/".join(comps[:-1]))
            if parent is not None and parent.children is not None:
                parent.children.pop(comps[-1], None)
        elif e.op is Op.OPAQUE:
            d = lookup(root, e.path)
            if d is not None and d.children is not None:
                d.children.clear()
    # Pass 2: the layer's own entries, in tar order.
    for e in record.entries:
        if e.op in (Op.WHITEOUT, Op.OPAQUE):
            if e.op is Op.OPAQUE and e.path:
                _parent_dir(root, split_path(e.path), e.path)  # the marker implies the directory
            continue
        if not e.path:
            root.mode = stat.S_IFDIR | (e.mode & 0o7777)
            root.uid, root.gid = e.uid, e.gid
            root.mtime, root.mtime_nsec = e.mtime, e.mtime_nsec
            root.xattrs = dict(e.xattrs)
            continue
        comps = split_path(e.path)
        parent = _parent_dir(root, comps[:-1], e.path)
        assert parent.children is not None
        name = comps[-1]
        existing = parent.children.get(name)
        if e.op is Op.HARDLINK:
            target = lookup(root, e.link)
            if target is None:
                raise LayerError(
                    f"hardlink {e.path.decode(errors='replace')!r} points to "
                    f"{e.link.decode(errors='replace')!r}, which does not exist"
                )
            if target.is_dir():
                raise LayerError(
                    f"hardlink {e.path.decode(errors='replace')!r} points to a directory"
                )
            parent.children[name] = target
        elif e.op is Op.DIR and existing is not None and existing.is_dir():
            # A directory in several layers takes its metadata from the most-derived one.
            existing.mode = stat.S_IFDIR | (e.mode & 0o7777)
            existing.uid, existing.gid = e.uid, e.gid
            existing.mtime, existing.mtime_nsec = e.mtime, e.mtime_nsec
            existing.xattrs = dict(e.xattrs)
        else:
            parent.children[name] = _new_inode(e)


def build_tree(records: Iterable[LayerRecord]) -> Inode:
    """The merged tree of layers, bottom first (root: 0755 root:root mtime 0 unless set)."""
    root = Inode.directory(0o755)
    for rec in records:
        apply_layer(root, rec)
    return root
