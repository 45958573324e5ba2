"""A streaming tar reader for OCI layers that trusts nothing it reads.

Written here rather than on top of `tarfile` so that memory stays bounded
(tarfile reads a whole PAX header into memory, whatever size it claims) and
every hostile-input rule is checked in one place: `..` components, NUL in
names, sparse or multi-volume members, absurd sizes, bad checksums and
truncation all raise `TarError` (a one-line `CfsbootError`).

Formats understood: POSIX ustar, PAX extended headers (`x`, `g`; `path`,
`linkpath`, `size`, `uid`, `gid`, `mtime`, `SCHILY.xattr.*`,
`LIBARCHIVE.xattr.*`), GNU long names (`L`, `K`) and base-256 numbers.
"""

from __future__ import annotations

import base64
import enum
import os
import struct
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import BinaryIO

from cfsboot.errors import CfsbootError

BLOCK = 512

# POSIX.1-2001 ustar header (pax(1), "ustar Interchange Format"): name, mode, uid,
# gid, size, mtime, chksum, typeflag, linkname, magic, version, uname, gname,
# devmajor, devminor, prefix, padding.
USTAR_HEADER = struct.Struct("100s8s8s8s12s12s8s1s100s6s2s32s32s8s8s155s12s")
assert USTAR_HEADER.size == BLOCK

# Limits: beyond these a member is hostile, not merely large.
MAX_META_SIZE = 1 << 20  # PAX / GNU long-name payloads held in memory
MAX_MEMBER_SIZE = 1 << 42  # 4 TiB: larger than any real file in an OS image
MAX_ID = 0xFFFFFFFF
MAX_PATH = 4096
MAX_XATTR_VALUE = 65536


class TarError(CfsbootError):
    """A layer tarball that is corrupt, truncated or hostile."""


class Kind(enum.StrEnum):
    """What a layer entry is; also the operation of a layer record entry (oci/apply.py)."""

    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    HARDLINK = "hardlink"
    CHAR = "char"
    BLOCK = "block"
    FIFO = "fifo"
    # No typeflag gives these two: apply.whiteout_of() reads them from OCI whiteout names.
    WHITEOUT = "whiteout"  # the path names what to remove from lower layers
    OPAQUE = "opaque"  # the path names the directory whose lower contents are hidden


_TYPEFLAGS = {
    b"0": Kind.FILE,
    b"\0": Kind.FILE,
    b"7": Kind.FILE,  # contiguous file: a regular file everywhere that matters
    b"1": Kind.HARDLINK,
    b"2": Kind.SYMLINK,
    b"3": Kind.CHAR,
    b"4": Kind.BLOCK,
    b"5": Kind.DIR,
    b"6": Kind.FIFO,
}


@dataclass(frozen=True, slots=True)
class TarEntry:
    """One member, its path normalised to components joined by '/' ("" is the root)."""

    path: bytes
    kind: Kind
    mode: int  # permission bits only (0o7777)
    uid: int
    gid: int
    mtime: int
    mtime_nsec: int
    size: int  # data bytes that follow (regular files only; 0 otherwise)
    linkname: bytes = b""  # symlink target as stored, or normalised hardlink target
    rdev: int = 0
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


def normalize_path(raw: bytes, *, what: str = "path") -> bytes:
    """Components of a member path joined by '/', rejecting `..`, NUL and overlong names.

    A leading '/' and '.' components are dropped: tar writers disagree on
    `./usr`, `usr` and `/usr`, and all of them mean the same place in the layer.
    """
    if b"\0" in raw:
        raise TarError(f"tar member {what} {raw!r} contains a NUL byte")
    if len(raw) > MAX_PATH:
        raise TarError(f"tar member {what} is {len(raw)} bytes long (limit {MAX_PATH})")
    parts = [p for p in raw.split(b"/") if p and p != b"."]
    if b".." in parts:
        raise TarError(f"tar member {what} {raw.decode(errors='replace')!r} contains '..'")
    for p in parts:
        if len(p) > 255:
            raise TarError(f"tar member {what} has a component of {len(p)} bytes (limit 255)")
    return b"/".join(parts)


def _parse_number(field_: bytes, name: str) -> int:
    """An octal or GNU base-256 numeric header field."""
    if field_ and field_[0] & 0x80:
        if field_[0] & 0x40:
            raise TarError(f"tar header field {name} is negative")
        value = field_[0] & 0x3F
        for b in field_[1:]:
            value = (value << 8) | b
        return value
    text = field_.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError:
        raise TarError(f"tar header field {name} is not a number: {text!r}") from None


def _cstr(field_: bytes) -> bytes:
    return field_.split(b"\0", 1)[0]


def _checksum_ok(block: bytes) -> bool:
    stored = _parse_number(block[148:156], "chksum")
    # The checksum is computed with its own field read as eight spaces.
    unsigned = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
    if stored == unsigned:
        return True
    # Some old writers summed signed chars.
    high = sum(1 for b in block[:148] + block[156:] if b > 127)
    return stored == unsigned - 256 * high


def _parse_pax(data: bytes) -> dict[bytes, bytes]:
    """PAX records: "LEN KEY=VALUE\\n", LEN counting the whole record."""
    out: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(data):
        if data[pos:] == b"\0" * (len(data) - pos):
            break  # some writers pad with NULs
        sp = data.find(b" ", pos)
        if sp < 0:
            raise TarError("corrupt PAX header: record without a length")
        try:
            length = int(data[pos:sp])
        except ValueError:
            raise TarError("corrupt PAX header: bad record length") from None
        end = pos + length
        if length <= sp - pos + 1 or end > len(data) or data[end - 1 : end] != b"\n":
            raise TarError("corrupt PAX header: record length out of range")
        key, eq, value = data[sp + 1 : end - 1].partition(b"=")
        if not eq or not key:
            raise TarError("corrupt PAX header: record without '='")
        out[key] = value
        pos = end
    return out


def _pax_int(value: bytes, key: str, limit: int) -> int:
    if len(value) > 40:  # far past any limit here, and past int()'s 4300 digits at worst
        raise TarError(f"PAX header {key} is {len(value)} bytes long: out of range")
    try:
        n = int(value)
    except ValueError:
        raise TarError(f"PAX header {key}={value!r} is not a number") from None
    if n < 0 or n > limit:
        raise TarError(f"PAX header {key}={n} is out of range")
    return n


def _pax_time(value: bytes) -> tuple[int, int]:
    sec_s, _, frac = value.partition(b".")
    if not sec_s.isdigit() or (frac and not frac.isdigit()):
        raise TarError(f"PAX header mtime={value[:40]!r} is not a non-negative time")
    sec_s = sec_s.lstrip(b"0") or b"0"
    if len(sec_s) > 19:  # past 2^63 (the check after this), and maybe int()'s digit limit
        raise TarError(f"PAX header mtime has {len(sec_s)} digits of seconds: out of range")
    nsec = int((frac + b"000000000")[:9]) if frac else 0
    return int(sec_s), nsec


def _xattrs_from_pax(pax: dict[bytes, bytes]) -> dict[bytes, bytes]:
    xattrs: dict[bytes, bytes] = {}
    for key, value in pax.items():
        if key.startswith(b"SCHILY.xattr."):
            name = key[len(b"SCHILY.xattr.") :]
        elif key.startswith(b"LIBARCHIVE.xattr."):
            name = urllib.parse.unquote_to_bytes(key[len(b"LIBARCHIVE.xattr.") :])
            try:
                value = base64.b64decode(value + b"=" * (-len(value) % 4), validate=True)
            except ValueError:
                raise TarError(f"bad base64 in PAX header {key!r}") from None
        else:
            continue
        if not name or b"\0" in name or len(name) > 255:
            raise TarError(f"invalid xattr name {name!r} in PAX header")
        if len(value) > MAX_XATTR_VALUE:
            raise TarError(f"xattr {name.decode(errors='replace')} value is too large")
        xattrs[name] = value
    return xattrs


class _Source:
    """Exact reads from the (decompressed) layer stream, failing loudly on truncation."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.offset = 0

    def read_exact(self, n: int, what: str) -> bytes:
        chunks = []
        left = n
        while left:
            chunk = self.stream.read(min(left, 1 << 20))
            if not chunk:
                raise TarError(
                    f"truncated tar: end of stream inside {what} at offset {self.offset}"
                )
            chunks.append(chunk)
            left -= len(chunk)
            self.offset += len(chunk)
        return b"".join(chunks)

    def readinto_exact(self, view: memoryview, what: str) -> None:
        """Fill all of `view` from the stream (no new buffer: a caller's pooled one)."""
        got = 0
        while got < len(view):
            n = self.stream.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                raise TarError(
                    f"truncated tar: end of stream inside {what} at offset {self.offset}"
                )
            got += n
            self.offset += n

    def read_block_or_eof(self) -> bytes | None:
        first = self.stream.read(BLOCK)
        if not first:
            return None
        self.offset += len(first)
        if len(first) < BLOCK:
            return first + self.read_exact(BLOCK - len(first), "a header")
        return first


class EntryData:
    """The data of the current member; read it (or not) before asking for the next one."""

    def __init__(self, src: _Source, size: int) -> None:
        self._src = src
        self.remaining = size
        self._pad = -size % BLOCK

    def read(self, n: int = 1 << 20) -> bytes:
        if self.remaining <= 0:
            return b""
        data = self._src.read_exact(min(n, self.remaining), "file data")
        self.remaining -= len(data)
        return data

    def readinto(self, view: memoryview) -> None:
        """Fill all of `view` (at most what remains) with the member's next bytes."""
        if len(view) > self.remaining:
            raise ValueError(f"{len(view)} bytes asked of a member with {self.remaining} left")
        self._src.readinto_exact(view, "file data")
        self.remaining -= len(view)

    def _finish(self) -> None:
        while self.remaining:
            self.read()
        if self._pad:
            self._src.read_exact(self._pad, "padding")
            self._pad = 0


class _Extended:
    """Extended headers read since the last member: they describe the next one."""

    def __init__(self) -> None:
        self.global_pax: dict[bytes, bytes] = {}
        self.pax: dict[bytes, bytes] = {}
        self.longname: bytes | None = None
        self.longlink: bytes | None = None

    def pending(self) -> bool:
        return bool(self.pax) or self.longname is not None or self.longlink is not None

    def add(self, typeflag: bytes, data: bytes) -> None:
        if typeflag == b"x":
            self.pax.update(_parse_pax(data))
        elif typeflag == b"g":
            # Global records set defaults (uid, mtime, xattrs...); a global path or size
            # would apply to every member and make no sense, so those are ignored.
            glob = _parse_pax(data)
            for key in (b"path", b"linkpath", b"size"):
                glob.pop(key, None)
            self.global_pax.update(glob)
        elif typeflag == b"L":
            self.longname = _gnu_long(data, "name")
        else:
            self.longlink = _gnu_long(data, "link name")

    def take(
        self, name: bytes, linkname: bytes, magic: bytes, prefix: bytes
    ) -> tuple[dict[bytes, bytes], bytes, bytes]:
        """(PAX records, name, link target) of the member whose header fields are given."""
        merged = {**self.global_pax, **self.pax}
        self.pax = {}
        if b"GNU.sparse.major" in merged or b"GNU.sparse.map" in merged:
            raise TarError("unsupported tar member: a PAX sparse file")
        if b"path" in merged:
            raw_name = merged[b"path"]
        elif self.longname is not None:
            raw_name = self.longname
        elif magic == b"ustar\0" and _cstr(prefix):  # POSIX only: GNU keeps times there
            raw_name = _cstr(prefix) + b"/" + _cstr(name)
        else:
            raw_name = _cstr(name)
        longlink = self.longlink
        raw_link = merged.get(b"linkpath", longlink if longlink is not None else _cstr(linkname))
        self.longname = self.longlink = None
        return merged, raw_name, raw_link


_UNSUPPORTED = {
    b"S": "a GNU sparse file",
    b"M": "a multi-volume member",
    b"V": "a volume label",
}


def _member_kind(typeflag: bytes) -> Kind:
    kind = _TYPEFLAGS.get(typeflag)
    if kind is None:
        desc = _UNSUPPORTED.get(typeflag, f"unknown member type {typeflag!r}")
        raise TarError(f"unsupported tar member: {desc}")
    return kind


def _rdev(entry: TarEntry, devmajor: bytes, devminor: bytes) -> int:
    major = _parse_number(devmajor, "devmajor")
    minor = _parse_number(devminor, "devminor")
    # What an EROFS inode holds: Linux's 32-bit device number (12 bits of major, 20 of minor).
    if major >= 1 << 12 or minor >= 1 << 20:
        shown = entry.path.decode(errors="replace")
        raise TarError(
            f"tar member {shown!r} has device number {major}:{minor}, past what composefs"
            " can store (major < 4096, minor < 1048576)"
        )
    return os.makedev(major, minor)


def entries(stream: BinaryIO) -> Iterator[tuple[TarEntry, EntryData]]:
    """Members of a tar stream in order, with their data readers.

    Reads to the end-of-archive marker (or a clean EOF at a header boundary,
    which Go's and Python's readers accept too) and no further: the caller
    drains the rest of the stream when it must verify a digest.
    """
    src = _Source(stream)
    extended = _Extended()
    while True:
        block = src.read_block_or_eof()
        if block is None or block == b"\0" * BLOCK:
            if extended.pending():
                raise TarError("truncated tar: extended header without a member")
            return
        if not _checksum_ok(block):
            raise TarError(f"corrupt tar: bad header checksum at offset {src.offset - BLOCK}")
        (
            name,
            mode,
            uid,
            gid,
            size,
            mtime,
            _chk,
            typeflag,
            linkname,
            magic,
            _version,
            _uname,
            _gname,
            devmajor,
            devminor,
            prefix,
            _pad,
        ) = USTAR_HEADER.unpack(block)
        size_n = _parse_number(size, "size")
        if size_n > MAX_MEMBER_SIZE:
            raise TarError(f"tar member claims an absurd size of {size_n} bytes")
        if typeflag in (b"x", b"g", b"L", b"K"):
            if size_n > MAX_META_SIZE:
                raise TarError(f"tar extended header of {size_n} bytes (limit {MAX_META_SIZE})")
            data = src.read_exact(size_n + (-size_n % BLOCK), "an extended header")[:size_n]
            extended.add(typeflag, data)
            continue
        kind = _member_kind(typeflag)
        pax, raw_name, raw_link = extended.take(name, linkname, magic, prefix)
        if kind is Kind.FILE and raw_name.endswith(b"/") and typeflag == b"\0":
            kind = Kind.DIR  # pre-POSIX tars mark directories with a trailing slash only
        entry = _make_entry(pax, kind, raw_name, raw_link, mode, uid, gid, size_n, mtime)
        if kind in (Kind.CHAR, Kind.BLOCK):
            entry = replace(entry, rdev=_rdev(entry, devmajor, devminor))
        # Only regular files carry data: like Go's and Python's readers, a size field on a
        # link, directory or device is not followed by data.
        body = EntryData(src, entry.size)
        yield entry, body
        body._finish()


def _gnu_long(data: bytes, what: str) -> bytes:
    value = data.rstrip(b"\0")
    if b"\0" in value:
        raise TarError(f"GNU long {what} contains a NUL byte")
    return value


def _make_entry(
    pax: dict[bytes, bytes],
    kind: Kind,
    raw_name: bytes,
    raw_link: bytes,
    mode: bytes,
    uid: bytes,
    gid: bytes,
    size: int,
    mtime: bytes,
) -> TarEntry:
    if not raw_name:
        raise TarError("tar member with an empty name")
    path = normalize_path(raw_name)
    if raw_name.endswith(b"/") and kind is not Kind.DIR:
        raise TarError(f"tar member {raw_name!r} ends with '/' but is not a directory")
    if b"size" in pax:
        size = _pax_int(pax[b"size"], "size", MAX_MEMBER_SIZE)
    uid_n = _pax_int(pax[b"uid"], "uid", MAX_ID) if b"uid" in pax else _parse_number(uid, "uid")
    gid_n = _pax_int(pax[b"gid"], "gid", MAX_ID) if b"gid" in pax else _parse_number(gid, "gid")
    if uid_n > MAX_ID or gid_n > MAX_ID:
        raise TarError(f"tar member {raw_name!r} has an absurd uid/gid")
    if b"mtime" in pax:
        sec, nsec = _pax_time(pax[b"mtime"])
    else:
        sec, nsec = _parse_number(mtime, "mtime"), 0
    if sec >= 1 << 63:
        raise TarError(f"tar member {raw_name!r} has an absurd mtime")
    link = b""
    if kind is Kind.SYMLINK:
        if not raw_link or b"\0" in raw_link or len(raw_link) > MAX_PATH:
            raise TarError(f"symlink {raw_name!r} has an invalid target")
        link = raw_link  # stored as is, never followed
    elif kind is Kind.HARDLINK:
        if not raw_link:
            raise TarError(f"hardlink {raw_name!r} has no target")
        link = normalize_path(raw_link, what="hardlink target")
        if not link:
            raise TarError(f"hardlink {raw_name!r} points at the root directory")
    return TarEntry(
        path=path,
        kind=kind,
        mode=_parse_number(mode, "mode") & 0o7777,
        uid=uid_n,
        gid=gid_n,
        mtime=sec,
        mtime_nsec=nsec,
        size=size if kind is Kind.FILE else 0,
        linkname=link,
        xattrs=_xattrs_from_pax(pax),
    )
