"""The strict dumpfile reader behind `dumpfile.parse()`: it parses any line C mkcomposefs
accepts, or says what is wrong with it (`dumpfast.py` takes the common lines first).

Built as native code with mypyc when it can be (see `native.py`); the same source runs as
pure Python too.
"""

from __future__ import annotations

import re
import stat
from typing import Final

from cfsboot.composefs.dumpescape import EscapeError, unescape
from cfsboot.composefs.limits import (
    EXTERNAL_SIZE_MAX,
    EXTERNAL_XATTR_MAX,
    INLINE_CONTENT_MAX,
    NAME_MAX,
    PATH_MAX,
    XATTR_NAME_MAX,
    XATTR_VALUE_MAX,
)
from cfsboot.composefs.tree import FILE_TYPES, Inode
from cfsboot.errors import CfsbootError

# Limits of the dumpfile text and of the EROFS inode fields (composefs's own: limits.py).
XATTR_LINE_MAX: Final = 0xFFFF  # longer xattr sections are "Too many xattrs" in C
U32_MAX: Final = 0xFFFFFFFF
U64_MAX: Final = (1 << 64) - 1
S64_MIN: Final = -(1 << 63)
S64_MAX: Final = (1 << 63) - 1
DIGEST_HEX_LENGTHS: Final = (64, 128)  # sha256 (what C knows) and sha512 (our repositories)
# A number with more digits (leading zeros aside) is out of range of every field, and is
# refused before int() would have to convert it (CPython limits that to 4300 digits).
MAX_DIGITS: Final = 20
_UNREADABLE: Final = 1 << 80  # stands for a number of more than MAX_DIGITS digits

_IFMT: Final = 0o170000
_IFREG: Final = 0o100000
_IFDIR: Final = 0o040000
_IFLNK: Final = 0o120000

OCTAL: Final = re.compile(rb"[0-7]+\Z")
_MTIME: Final = re.compile(rb"(-?[0-9]+)\.([0-9]+)\Z")
_HEX: Final = re.compile(rb"[0-9A-Fa-f]+\Z")


class DumpfileError(CfsbootError):
    """A dumpfile line that C mkcomposefs would reject, or that we refuse to guess about."""

    def __init__(self, lineno: int, reason: str) -> None:
        super().__init__(f"dumpfile line {lineno}: {reason}")
        self.lineno = lineno
        self.reason = reason


class LineError(Exception):
    """What is wrong with the line being parsed (the caller adds its number)."""


def digits(field: bytes) -> int:
    """The value of a field of ASCII digits; -1 if it has too many digits for any field."""
    if len(field) > MAX_DIGITS:
        field = field.lstrip(b"0") or b"0"
        if len(field) > MAX_DIGITS:
            return -1
    return int(field)


def _show(value: int, field: bytes) -> str:
    """A number for a message: its value, or how long it is when it was too long to read."""
    return f"of {len(field)} digits" if value < 0 else str(value)


def _number(field: bytes, name: str, limit: int) -> int:
    # bytes.isdigit() is ASCII-only and False for b"": no sign, space or "0x" slips through.
    if not field.isdigit():
        raise LineError(f"invalid {name} {field.decode('latin-1')!r}")
    value = digits(field)
    if value < 0 or value > limit:
        raise LineError(f"{name} {_show(value, field)} is out of range (maximum {limit})")
    return value


def mtime(field: bytes) -> tuple[int, int, bytes]:
    """(seconds, nanoseconds, seconds field) of an MTIME field. Seconds with too many digits
    to read are _UNREADABLE, out of range (the caller checks the range)."""
    m = _MTIME.match(field)
    if m is None:
        raise LineError(f"invalid mtime {field.decode('latin-1')!r} (want SEC.NSEC)")
    nsec_f: bytes = m.group(2)
    nsec = digits(nsec_f)
    if nsec < 0 or nsec > 999_999_999:
        raise LineError(f"mtime nanoseconds {_show(nsec, nsec_f)} are out of range")
    sec_f: bytes = m.group(1)
    negative = sec_f.startswith(b"-")
    sec = digits(sec_f[1:] if negative else sec_f)
    if sec < 0:
        return _UNREADABLE, nsec, sec_f
    return (-sec if negative else sec), nsec, sec_f


def mtime_range(sec: int, sec_f: bytes) -> None:
    if not S64_MIN <= sec <= S64_MAX:
        shown = f"of {len(sec_f)} digits" if sec == _UNREADABLE else str(sec)
        raise LineError(f"mtime {shown} is out of range")


def _optional(field: bytes, name: str) -> bytes | None:
    if field == b"-":
        return None
    try:
        return unescape(field)
    except EscapeError as e:
        raise LineError(f"{name}: {e}") from None


def _check_name(name: bytes, path: bytes, what: str) -> None:
    if not name:
        raise LineError(f"{what} {path!r} has an empty file name")
    if name == b"." or name == b"..":
        raise LineError(f"{what} {path!r} has a '.' or '..' component")
    if len(name) > NAME_MAX:
        raise LineError(f"{what} {path!r} has a name longer than {NAME_MAX} bytes")
    if name.find(b"\0") >= 0:
        raise LineError(f"{what} {path!r} contains a NUL byte")


def components(path: bytes, what: str) -> list[bytes]:
    """The checked names of an absolute path."""
    if not path.startswith(b"/"):
        raise LineError(f"{what} {path!r} is not absolute")
    comps = path[1:].split(b"/")
    for c in comps:
        _check_name(c, path, what)
    return comps


# A line split into its fields and checked field by field (`_strict_fields`): PATH SIZE
# IS_LINK MODE NLINK UID GID RDEV MTIME NSEC MTIME_SECONDS_FIELD PAYLOAD CONTENT DIGEST XATTRS
_Record = tuple[
    bytes, int, bool, int, int, int, int, int, int, int, bytes, bytes, bytes, bytes, bytes
]


def _strict_fields(line: bytes) -> _Record:
    """Split and check a line field by field, to say exactly what is wrong with it."""
    fields = line.split(b" ", 11)
    if len(fields) < 11:
        raise LineError(f"expected at least 11 fields, found {len(fields)}")
    mode_f = fields[2]
    is_link = mode_f.startswith(b"@")
    if is_link:
        mode_f = mode_f[1:]
    if OCTAL.match(mode_f) is None:
        raise LineError(f"invalid mode {mode_f.decode('latin-1')!r}")
    if len(mode_f.lstrip(b"0")) > MAX_DIGITS:
        raise LineError(f"mode of {len(mode_f)} digits does not fit in 16 bits")
    xattrs = fields[11] if len(fields) == 12 else b""
    if is_link:  # C ignores the other fields of a hardlink line
        mode = int(mode_f, 8)
        return (fields[0], 0, True, mode, 0, 0, 0, 0, 0, 0, b"0", fields[8], b"-", b"-", b"")
    sec, nsec, sec_f = mtime(fields[7])
    return (
        fields[0],
        _number(fields[1], "size", U64_MAX),
        False,
        int(mode_f, 8),
        _number(fields[3], "nlink", U32_MAX),
        _number(fields[4], "uid", U32_MAX),
        _number(fields[5], "gid", U32_MAX),
        _number(fields[6], "rdev", U32_MAX),
        sec,
        nsec,
        sec_f,
        fields[8],
        fields[9],
        fields[10],
        xattrs,
    )


class Parser:
    """Builds the tree line by line; hardlinks are resolved after the last line."""

    def __init__(self) -> None:
        self.root: Inode | None = None
        # Directories by path; the root is b"" (and b"/", so that "//x" is in the root).
        self.dirs: dict[bytes, Inode] = {}
        self.lineno = 0  # of the line being parsed
        # Hardlink lines: (lineno, parent, name, target path); resolved after the last line.
        self.links: list[tuple[int, Inode, bytes, bytes]] = []
        self.placeholders: dict[int, int] = {}  # id(placeholder) -> index in self.links
        self.link_paths: list[bytes] = []  # of the hardlink lines, for build_image
        # Parsed xattr sections by their text: an OS tree has few (SELinux labels).
        self.xattr_sections: dict[bytes, dict[bytes, bytes]] = {}

    def xattrs(self, section: bytes) -> dict[bytes, bytes]:
        """A new dict of the xattrs of a line's KEY=VALUE section."""
        parsed = self.xattr_sections.get(section)
        if parsed is None:
            parsed = self.xattr_sections[section] = _xattrs(section)
        return parsed.copy()

    def line(self, line: bytes) -> None:
        """Add the inode of any line, or say (LineError) what is wrong with it."""
        rec = _strict_fields(line)
        path_f, size, is_link, mode, nlink, uid, gid, rdev, sec, nsec, sec_f = rec[:11]
        payload_f, content_f, digest_f, xattrs_f = rec[11:]
        try:
            path = unescape(path_f)
        except EscapeError as e:
            raise LineError(f"path: {e}") from None
        if not path:
            raise LineError("empty path")
        if mode > 0o177777:
            raise LineError(f"mode {mode:o} does not fit in 16 bits")
        ftype = stat.S_IFMT(mode)
        if ftype not in FILE_TYPES:
            raise LineError(f"invalid file type in mode {mode:o}")
        parent, name = self._place(path, ftype, is_link)
        if is_link:
            self._link(parent, name, mode, ftype, payload_f)
            self.link_paths.append(path)
            return
        mtime_range(sec, sec_f)
        node = Inode(mode=mode, uid=uid, gid=gid, mtime=sec, mtime_nsec=nsec, nlink=nlink)
        self._content(node, ftype, size, rdev, payload_f, content_f, digest_f)
        if xattrs_f:
            node.xattrs = self.xattrs(xattrs_f)
        if parent is None:
            self.root = node
            self.dirs[b""] = self.dirs[b"/"] = node
        else:
            assert parent.children is not None
            parent.children[name] = node
            if node.children is not None:
                self.dirs[path] = node

    def _place(self, path: bytes, ftype: int, is_link: bool) -> tuple[Inode | None, bytes]:
        """(parent directory, name) of a new line's path; (None, b"") for the root."""
        if path == b"/":
            if self.root is not None:
                raise LineError("a second root '/'")
            if ftype != stat.S_IFDIR or is_link:
                raise LineError("the root must be a directory")
            return None, b""
        if self.root is None:
            raise LineError("the first line must be the root '/'")
        if path[0] != 0x2F:
            raise LineError(f"path {path!r} is not absolute")
        # Only the last name needs checking: `dirs` holds checked paths only.
        slash = path.rindex(b"/")
        name = path[slash + 1 :]
        _check_name(name, path, "path")
        parent = self.dirs.get(path[:slash])
        if parent is None:
            raise LineError(f"parent directory of {path!r} is missing or not a directory")
        assert parent.children is not None
        if name in parent.children:
            raise LineError(f"path {path!r} already exists")
        return parent, name

    def _link(
        self, parent: Inode | None, name: bytes, mode: int, ftype: int, target_f: bytes
    ) -> None:
        if ftype == stat.S_IFDIR:
            raise LineError("directories cannot be hardlinked")
        target = _optional(target_f, "hardlink target")
        if target is None:
            raise LineError("hardlink without a target path")
        # The other fields of a hardlink line are ignored (composefs-dump(5)).
        placeholder = Inode(mode=mode)
        assert parent is not None and parent.children is not None
        parent.children[name] = placeholder
        self.placeholders[id(placeholder)] = len(self.links)
        self.links.append((self.lineno, parent, name, target))

    def _content(
        self,
        node: Inode,
        ftype: int,
        size: int,
        rdev: int,
        payload_f: bytes,
        content_f: bytes,
        digest_f: bytes,
    ) -> None:
        payload = _optional(payload_f, "payload")
        content = _optional(content_f, "content")
        digest = None
        if digest_f != b"-":
            if len(digest_f) not in DIGEST_HEX_LENGTHS or not _HEX.match(digest_f):
                raise LineError("digest must be 64 (sha256) or 128 (sha512) hex digits")
            digest = bytes.fromhex(digest_f.decode())
        if content is not None and len(content) != size:
            raise LineError(f"content size {len(content)} does not match size {size}")

        if ftype == stat.S_IFREG:
            _regular(node, size, payload, content, digest)
            return
        if digest is not None:
            raise LineError("a digest is only valid on regular files")
        if content:
            raise LineError("inline content is only valid on regular files")
        if ftype == stat.S_IFLNK:
            if not payload:
                raise LineError("symlink without a target")
            if payload.find(b"\0") >= 0:
                raise LineError("symlink target contains a NUL byte")
            if len(payload) >= PATH_MAX:
                raise LineError(f"symlink target longer than {PATH_MAX - 1} bytes")
            # C ignores SIZE for symlinks and uses the target's length.
            node.payload = payload
            node.size = len(payload)
            return
        if payload is not None:
            raise LineError("a payload is only valid on regular files and symlinks")
        node.size = size
        if ftype == stat.S_IFDIR:
            node.children = {}
        elif ftype == stat.S_IFCHR or ftype == stat.S_IFBLK:
            node.rdev = rdev
        # The RDEV of a non-device is dropped, as C does (no-newline.dump has one on "/").

    def resolve_links(self) -> None:
        for index, (lineno, parent, name, target_path) in enumerate(self.links):
            node = self._resolve(target_path, index, lineno)
            assert parent.children is not None
            parent.children[name] = node

    def _resolve(self, target_path: bytes, index: int, lineno: int) -> Inode:
        """The inode a hardlink line names, following chains of hardlinks (a loop, not
        recursion: a chain may be as long as the dumpfile)."""
        assert self.root is not None
        seen = {index}
        while True:
            try:
                comps = [] if target_path == b"/" else components(target_path, "hardlink target")
            except LineError as e:
                raise DumpfileError(lineno, str(e)) from None
            node = self.root
            for comp in comps:
                children = node.children
                if children is None or comp not in children:
                    raise DumpfileError(lineno, f"no target at {target_path!r} for hardlink")
                node = children[comp]
            if node.is_dir():
                raise DumpfileError(lineno, f"hardlink target {target_path!r} is a directory")
            other = self.placeholders.get(id(node))
            if other is None:
                return node
            if other in seen:
                raise DumpfileError(lineno, f"hardlink {target_path!r} refers to itself")
            seen.add(other)
            target_path = self.links[other][3]


def _regular(
    node: Inode, size: int, payload: bytes | None, content: bytes | None, digest: bytes | None
) -> None:
    node.size = size
    if payload == b"":
        payload = None  # C writes no redirect for an empty payload
    if payload is not None:
        if payload.find(b"\0") >= 0:
            raise LineError("payload contains a NUL byte")
        if len(payload) >= PATH_MAX:
            raise LineError(f"payload longer than {PATH_MAX - 1} bytes")
    if content is not None and size > 0:
        if size > INLINE_CONTENT_MAX:
            raise LineError(f"inline content size {size} exceeds {INLINE_CONTENT_MAX}")
        if payload is not None or digest is not None:
            raise LineError("a file has either inline content or a payload/digest")
        node.content = content
        return
    if size == 0:
        if payload is not None or digest is not None:
            raise LineError("an empty file cannot have a payload or digest")
        return
    if size > EXTERNAL_SIZE_MAX:
        raise LineError(f"file size {size} is too big for a composefs image")
    node.payload = payload
    node.digest = digest


def _xattrs(section: bytes) -> dict[bytes, bytes]:
    """The xattrs of a line's KEY=VALUE section."""
    if len(section) > XATTR_LINE_MAX:
        raise LineError(f"xattrs take more than {XATTR_LINE_MAX} bytes")
    budget = 12  # LCFS_XATTR_HEADER_SIZE
    xattrs: dict[bytes, bytes] = {}
    items = section.split(b" ")
    if items[-1] == b"":
        items.pop()  # C tolerates one trailing space
    for item in items:
        key, eq, value = item.partition(b"=")
        if not eq:
            raise LineError(f"xattr {item[:40]!r} has no '='")
        try:
            key = unescape(key)
            value = unescape(value)
        except EscapeError as e:
            raise LineError(f"xattr: {e}") from None
        if not key or len(key) > XATTR_NAME_MAX:
            raise LineError(f"xattr name length {len(key)} is not in 1..{XATTR_NAME_MAX}")
        if key.find(b"\0") >= 0:
            raise LineError("xattr name contains a NUL byte")
        if len(value) > XATTR_VALUE_MAX:
            raise LineError(f"xattr {key!r} value is longer than {XATTR_VALUE_MAX} bytes")
        if key in xattrs:
            raise LineError(f"duplicate xattr {key!r}")
        budget += 7 + len(key) + len(value)
        if budget > EXTERNAL_XATTR_MAX:
            raise LineError(f"xattrs exceed the {EXTERNAL_XATTR_MAX}-byte limit of one inode")
        xattrs[key] = value
    return xattrs
