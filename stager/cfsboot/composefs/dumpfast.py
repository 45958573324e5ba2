"""The fast path of the dumpfile reader: the common lines of an OS tree (directories,
regular files, symlinks, no escapes in paths and payloads) in few steps each. Any other
line, and any line with something wrong, is left to the strict `dumpread.Parser.line()`,
which parses it or says what is wrong; the two agree (tests/unit/test_dumpfile.py).

Built as native code with mypyc when it can be (see `native.py`); the same source runs as
pure Python too.
"""

from __future__ import annotations

import binascii
from typing import Final

from cfsboot.composefs.dumpescape import EscapeError, unescape
from cfsboot.composefs.dumpread import (
    OCTAL,
    S64_MAX,
    S64_MIN,
    U32_MAX,
    LineError,
    Parser,
    digits,
    mtime,
)
from cfsboot.composefs.limits import EXTERNAL_SIZE_MAX, INLINE_CONTENT_MAX, NAME_MAX, PATH_MAX
from cfsboot.composefs.tree import Inode

_IFMT: Final = 0o170000
_IFREG: Final = 0o100000
_IFDIR: Final = 0o040000
_IFLNK: Final = 0o120000
_unhexlify: Final = binascii.unhexlify


class Meta:
    """The fields MODE NLINK UID GID RDEV MTIME of a line, parsed (`meta()`)."""

    __slots__ = ("mode", "nlink", "uid", "gid", "mtime", "nsec")

    def __init__(self, mode: int, nlink: int, uid: int, gid: int, mtime: int, nsec: int) -> None:
        self.mode = mode
        self.nlink = nlink
        self.uid = uid
        self.gid = gid
        self.mtime = mtime
        self.nsec = nsec


_INVALID: Final = Meta(-1, 0, 0, 0, 0, 0)  # the MODE..MTIME fields of lines left to the strict path


def _size(field: bytes) -> int:
    """The value of a SIZE field of at most 19 digits; -1 for anything else (a loop rather
    than int(), which costs a call and a check that the field is digits)."""
    n = len(field)
    if n == 0 or n > 19:
        return -1
    value = 0
    for k in range(n):
        c = field[k]
        if c < 48 or c > 57:
            return -1
        value = value * 10 + (c - 48)
    return value


def meta(fields: list[bytes]) -> Meta | None:
    """The MODE..MTIME fields (2..7) of a line, when they are well-formed and in range for a
    directory, regular file or symlink line (the RDEV of which is dropped); else None,
    leaving the verdict to the strict path."""
    mode_f = fields[2]
    if len(mode_f) > 6 or not mode_f.isdigit() or OCTAL.match(mode_f) is None:
        return None
    mode = int(mode_f, 8)
    ftype = mode & _IFMT
    if mode > 0o177777 or (ftype != _IFREG and ftype != _IFDIR and ftype != _IFLNK):
        return None
    values = [0, 0, 0, 0]
    for k in range(4):
        f = fields[3 + k]
        if not f.isdigit():
            return None
        v = digits(f)
        if v < 0 or v > U32_MAX:
            return None
        values[k] = v
    try:
        sec, nsec, _ = mtime(fields[7])
    except LineError:
        return None
    if not S64_MIN <= sec <= S64_MAX:
        return None
    return Meta(mode, values[0], values[1], values[2], sec, nsec)


def fast_line(parser: Parser, metas: dict[bytes, Meta], line: bytes, escapes: bool) -> bool:
    """Add the inode of a common, well-formed line (a directory, a regular file or a
    symlink without escapes in its path or payload) to the parser's tree; False, having
    changed nothing, for any other line (which `Parser.line()` then parses or refuses).
    `metas` caches the MODE..MTIME fields by their text: most lines repeat them.
    `escapes` False promises that the line has no backslash (no field to unescape)."""
    fields = line.split(b" ", 11)
    if len(fields) < 11:
        return False
    path = fields[0]
    size_f = fields[1]
    # MODE..MTIME as one key: their text, which the fields' lengths locate in the line.
    start = len(path) + len(size_f) + 2
    end = start + 5
    for k in range(2, 8):
        end += len(fields[k])
    key = line[start:end]
    m = metas.get(key)
    if m is None:
        m = metas[key] = meta(fields) or _INVALID
    size = _size(size_f)
    if m is _INVALID or size < 0:
        return False
    if not path.startswith(b"/") or escapes and path.find(b"\\") >= 0:
        return False
    parent_path, _, name = path.rpartition(b"/")
    parent = parser.dirs.get(parent_path)
    if parent is None or not name or name == b"." or name == b".." or len(name) > NAME_MAX:
        return False
    children = parent.children
    if children is None or name in children:
        return False
    mode = m.mode
    ftype = mode & _IFMT
    payload_f = fields[8]
    content_f = fields[9]
    digest_f = fields[10]
    payload: bytes | None = None
    content: bytes | None = None
    digest: bytes | None = None
    sub: dict[bytes, Inode] | None = None
    if ftype == _IFREG:
        ok, payload, content, digest = _regular(size, payload_f, content_f, digest_f, escapes)
        if not ok:
            return False
    elif ftype == _IFDIR:
        if payload_f != b"-" or content_f != b"-" or digest_f != b"-":
            return False
        sub = {}
    else:  # a symlink (meta() lets only these three types through)
        if content_f != b"-" or digest_f != b"-" or payload_f == b"-" or not payload_f:
            return False
        if escapes and payload_f.find(b"\\") >= 0 or len(payload_f) >= PATH_MAX:
            return False
        payload = payload_f
        size = len(payload_f)
    xattrs: dict[bytes, bytes] = {}
    if len(fields) == 12:
        section = fields[11]
        if section:
            xattrs = parser.xattrs(section)
    node = Inode(
        mode, m.uid, m.gid, m.mtime, m.nsec, 0, m.nlink, size, xattrs, content, payload,
        digest, sub,
    )  # fmt: skip
    children[name] = node
    if sub is not None:
        parser.dirs[path] = node
    return True


def _regular(
    size: int, payload_f: bytes, content_f: bytes, digest_f: bytes, escapes: bool
) -> tuple[bool, bytes | None, bytes | None, bytes | None]:
    """(well-formed, payload, content, digest) of a regular file's fields."""
    if content_f != b"-":  # inline content
        if payload_f != b"-" or digest_f != b"-" or size <= 0 or size > INLINE_CONTENT_MAX:
            return False, None, None, None
        content = content_f
        if escapes and content_f.find(b"\\") >= 0:
            try:
                content = unescape(content_f)
            except EscapeError:
                return False, None, None, None
        return len(content) == size, None, content, None
    # an external file (or an empty one)
    digest = None
    if digest_f != b"-":
        if len(digest_f) != 64 and len(digest_f) != 128:
            return False, None, None, None
        try:
            digest = _unhexlify(digest_f)
        except binascii.Error:
            return False, None, None, None
    payload = None
    if payload_f != b"-" and payload_f:
        if escapes and payload_f.find(b"\\") >= 0 or len(payload_f) >= PATH_MAX:
            return False, None, None, None
        payload = payload_f
    if size == 0:
        return payload is None and digest is None, None, None, None
    return size <= EXTERNAL_SIZE_MAX, payload, None, digest
