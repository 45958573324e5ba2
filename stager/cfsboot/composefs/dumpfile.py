"""The composefs dumpfile format (composefs-dump(5)): a strict reader and the canonical writer.

One file per line: 11 space-separated fixed fields (PATH SIZE MODE NLINK UID GID RDEV
MTIME PAYLOAD CONTENT DIGEST) and then `KEY=VALUE` xattrs.  `parse()` builds the tree C
`mkcomposefs --from-file` would build, but refuses every input C accepts only by accident
(truncated integers, the gid/rdev error check that only fires for uid 0, NUL bytes hidden
in C strings, values that do not fit the EROFS fields).  `dumps()` prints a tree exactly
as C `composefs-info dump` prints the tree it loads from an image.
"""

from __future__ import annotations

import binascii
import gc
import re
import stat
from typing import BinaryIO

from cfsboot.composefs.dumpescape import EscapeError, escape, escape_optional, unescape
from cfsboot.composefs.tree import FILE_TYPES, Inode, walk
from cfsboot.errors import CfsbootError

# Limits of libcomposefs (lcfs-writer.h, lcfs-internal.h) and of the EROFS inode fields.
INLINE_CONTENT_MAX = 5000  # LCFS_INLINE_CONTENT_MAX
PATH_MAX = 4096  # payloads (symlink targets, object paths) must be shorter
NAME_MAX = 255  # LCFS_MAX_NAME_LENGTH, and XATTR_NAME_MAX for xattr keys
XATTR_VALUE_MAX = 0xFFFF
XATTR_BUDGET = 0xFFFF // 2  # LCFS_INODE_EXTERNAL_XATTR_MAX: per-inode xattr space from a dumpfile
XATTR_LINE_MAX = 0xFFFF  # longer xattr sections are "Too many xattrs" in C
MAX_CHUNKS = 1024  # LCFS_MAX_NONINLINE_CHUNKS: external files are one block of chunk indexes
U32_MAX = 0xFFFFFFFF
U64_MAX = (1 << 64) - 1
S64_MIN, S64_MAX = -(1 << 63), (1 << 63) - 1
DIGEST_HEX_LENGTHS = (64, 128)  # sha256 (what C knows) and sha512 (our repositories)


class DumpfileError(CfsbootError):
    """A dumpfile line that C mkcomposefs would reject, or that we refuse to guess about."""

    def __init__(self, lineno: int, reason: str) -> None:
        super().__init__(f"dumpfile line {lineno}: {reason}")
        self.lineno = lineno
        self.reason = reason


# --- writer ----------------------------------------------------------------------------


def dumps(root: Inode) -> bytes:
    """The dumpfile of `root`, byte for byte what `composefs-info dump` prints for it.

    Children are in name order; a node reachable under several names is printed in full
    at its first path and as `@` hardlink lines (with its own metadata) at later ones.
    Xattrs are printed in the tree's order, as C prints the order it loaded.
    """
    out: list[bytes] = []
    first_path: dict[int, bytes] = {}
    for path, node in walk(root):
        link = first_path.get(id(node))
        if link is None:
            first_path[id(node)] = path
            payload = escape_optional(node.payload)
        else:
            payload = escape(link, lone_dash=True)
        content = node.content
        line = b"%s %d %s%o %d %d %d %d %d.%d %s %s %s" % (
            escape(path),
            node.size,
            b"@" if link is not None else b"",
            node.mode,
            node.nlink,
            node.uid,
            node.gid,
            node.rdev,
            node.mtime,
            node.mtime_nsec,
            payload,
            b"-" if content is None else escape(content, lone_dash=True),
            b"-" if node.digest is None else node.digest.hex().encode(),
        )
        if node.xattrs:
            line += b"".join(
                b" %s=%s" % (escape(k, equal=True), escape(v, equal=True))
                for k, v in node.xattrs.items()
            )
        out.append(line)
    out.append(b"")
    return b"\n".join(out)


def write(root: Inode, out: BinaryIO) -> None:
    """Write the dumpfile of `root` to a binary stream."""
    out.write(dumps(root))


# --- reader ----------------------------------------------------------------------------

_OCTAL = re.compile(rb"[0-7]+\Z")
_MTIME = re.compile(rb"(-?[0-9]+)\.([0-9]+)\Z")
_HEX = re.compile(rb"[0-9A-Fa-f]+\Z")


class _LineError(Exception):
    pass


def _number(field: bytes, name: str, limit: int) -> int:
    # bytes.isdigit() is ASCII-only and False for b"": no sign, space or "0x" slips through.
    if not field.isdigit():
        raise _LineError(f"invalid {name} {field.decode('latin-1')!r}")
    value = int(field)
    if value > limit:
        raise _LineError(f"{name} {value} is out of range (maximum {limit})")
    return value


def _optional(field: bytes, name: str) -> bytes | None:
    if field == b"-":
        return None
    try:
        return unescape(field)
    except EscapeError as e:
        raise _LineError(f"{name}: {e}") from None


def _check_name(name: bytes, path: bytes, what: str) -> None:
    if not name:
        raise _LineError(f"{what} {path!r} has an empty file name")
    if name == b"." or name == b"..":
        raise _LineError(f"{what} {path!r} has a '.' or '..' component")
    if len(name) > NAME_MAX:
        raise _LineError(f"{what} {path!r} has a name longer than {NAME_MAX} bytes")
    if b"\0" in name:
        raise _LineError(f"{what} {path!r} contains a NUL byte")


def _components(path: bytes, what: str) -> list[bytes]:
    if not path.startswith(b"/"):
        raise _LineError(f"{what} {path!r} is not absolute")
    comps = path[1:].split(b"/")
    for c in comps:
        _check_name(c, path, what)
    return comps


# C caps the chunk size at 2^(12+31) bytes (EROFS_CHUNK_FORMAT_BLKBITS_MASK), so the largest
# external file that fits in MAX_CHUNKS chunks has 2^53 bytes.
MAX_EXTERNAL_SIZE = MAX_CHUNKS << (12 + 31)


_Record = tuple[bytes, int, bool, int, int, int, int, int, int, int, bytes, bytes, bytes, bytes]


def _slow_fields(line: bytes) -> _Record:
    """Split and check a line field by field, to say exactly what is wrong with it."""
    fields = line.split(b" ", 11)
    if len(fields) < 11:
        raise _LineError(f"expected at least 11 fields, found {len(fields)}")
    mode_f = fields[2]
    is_link = mode_f.startswith(b"@")
    if is_link:
        mode_f = mode_f[1:]
    if not _OCTAL.match(mode_f):
        raise _LineError(f"invalid mode {mode_f.decode('latin-1')!r}")
    xattrs = fields[11] if len(fields) == 12 else b""
    if is_link:  # C ignores the other fields of a hardlink line
        return (fields[0], 0, True, int(mode_f, 8), 0, 0, 0, 0, 0, 0, fields[8], b"-", b"-", b"")
    m = _MTIME.match(fields[7])
    if m is None:
        raise _LineError(f"invalid mtime {fields[7].decode('latin-1')!r} (want SEC.NSEC)")
    nsec = int(m.group(2))
    if nsec > 999_999_999:
        raise _LineError(f"mtime nanoseconds {nsec} are out of range")
    return (
        fields[0],
        _number(fields[1], "size", U64_MAX),
        False,
        int(mode_f, 8),
        _number(fields[3], "nlink", U32_MAX),
        _number(fields[4], "uid", U32_MAX),
        _number(fields[5], "gid", U32_MAX),
        _number(fields[6], "rdev", U32_MAX),
        int(m.group(1)),
        nsec,
        fields[8],
        fields[9],
        fields[10],
        xattrs,
    )


# The fields MODE NLINK UID GID RDEV MTIME of a line, as parsed by `_meta`.
_Meta = tuple[int, int, int, int, int, int, int]
_MetaKey = tuple[bytes, bytes, bytes, bytes, bytes, bytes]


def _meta(key: _MetaKey) -> _Meta | None:
    """(mode, nlink, uid, gid, rdev, mtime, nsec) when these fields are well-formed and in
    range for an inode that is not a hardlink line, else None (leaving the verdict to
    `_Parser.line`)."""
    mode_f, nlink_f, uid_f, gid_f, rdev_f, mtime_f = key
    if not (mode_f.isdigit() and _OCTAL.match(mode_f)):
        return None
    mode = int(mode_f, 8)
    if mode > 0o177777 or stat.S_IFMT(mode) not in FILE_TYPES:
        return None
    for f in (nlink_f, uid_f, gid_f, rdev_f):
        if not f.isdigit() or int(f) > U32_MAX:
            return None
    m = _MTIME.match(mtime_f)
    if m is None:
        return None
    mtime = int(m.group(1))
    nsec = int(m.group(2))
    if nsec > 999_999_999 or not S64_MIN <= mtime <= S64_MAX:
        return None
    return (mode, int(nlink_f), int(uid_f), int(gid_f), int(rdev_f), mtime, nsec)


class _Parser:
    def __init__(self) -> None:
        self.root: Inode | None = None
        self.dirs: dict[bytes, Inode] = {}
        self.lineno = 0  # of the line being parsed
        # Hardlink lines: (lineno, parent, name, target path); resolved after the last line.
        self.links: list[tuple[int, Inode, bytes, bytes]] = []
        self.placeholders: dict[int, int] = {}  # id(placeholder) -> index in self.links
        # Parsed fields by their text: in a dumpfile of an OS tree most lines repeat the
        # same mode, ownership and mtime, and the same few xattr sections (SELinux labels).
        self.metas: dict[_MetaKey, _Meta | None] = {}
        self.xattr_sections: dict[bytes, dict[bytes, bytes]] = {}

    def fast_line(self, line: bytes) -> bool:
        """Add the inode of a common, well-formed line (a directory, a regular file or a
        symlink without escapes in its path or payload); False, having changed nothing,
        for any other line (which `line()` then parses or refuses)."""
        fields = line.split(b" ", 11)
        if len(fields) < 11:
            return False
        path = fields[0]
        size_f = fields[1]
        key = (fields[2], fields[3], fields[4], fields[5], fields[6], fields[7])
        try:
            meta = self.metas[key]
        except KeyError:
            meta = self.metas[key] = _meta(key)
        if meta is None or not size_f.isdigit() or b"\\" in path or path[:1] != b"/":
            return False
        slash = path.rindex(b"/")
        name = path[slash + 1 :]
        parent = self.dirs.get(path[:slash] or b"/")
        if parent is None or not name or name == b"." or name == b".." or len(name) > NAME_MAX:
            return False
        children = parent.children
        assert children is not None
        if name in children:
            return False
        mode, nlink, uid, gid, _, mtime, nsec = meta
        size = int(size_f)
        if size > U64_MAX:
            return False
        payload_f, content_f, digest_f = fields[8], fields[9], fields[10]
        ftype = mode & 0o170000
        payload = content = digest = None
        sub: dict[bytes, Inode] | None = None
        if ftype == stat.S_IFREG:
            if content_f == b"-":  # an external file (or an empty one)
                if digest_f != b"-":
                    if len(digest_f) not in DIGEST_HEX_LENGTHS:
                        return False
                    try:
                        digest = binascii.unhexlify(digest_f)
                    except binascii.Error:
                        return False
                if payload_f != b"-" and payload_f:
                    if b"\\" in payload_f or len(payload_f) >= PATH_MAX:
                        return False
                    payload = payload_f
                if size == 0:
                    if payload is not None or digest is not None:
                        return False
                elif size > MAX_EXTERNAL_SIZE:
                    return False
            else:  # inline content
                if payload_f != b"-" or digest_f != b"-" or not 0 < size <= INLINE_CONTENT_MAX:
                    return False
                content = content_f
                if b"\\" in content:
                    try:
                        content = unescape(content)
                    except EscapeError:
                        return False
                if len(content) != size:
                    return False
        elif ftype == stat.S_IFDIR:
            if payload_f != b"-" or content_f != b"-" or digest_f != b"-":
                return False
            sub = {}
        elif ftype == stat.S_IFLNK:
            if content_f != b"-" or digest_f != b"-" or payload_f == b"-" or not payload_f:
                return False
            if b"\\" in payload_f or len(payload_f) >= PATH_MAX:
                return False
            payload = payload_f
            size = len(payload)
        else:
            return False
        xattrs = {}
        if len(fields) == 12 and fields[11]:
            section = fields[11]
            parsed = self.xattr_sections.get(section)
            if parsed is None:
                parsed = self.xattr_sections[section] = self._xattrs(section)
            xattrs = parsed.copy()
        node = Inode(
            mode, uid, gid, mtime, nsec, 0, nlink, size, xattrs, content, payload, digest, sub
        )
        children[name] = node
        if sub is not None:
            self.dirs[path] = node
        return True

    def line(self, line: bytes) -> None:
        rec = _slow_fields(line)
        (path_f, size, is_link, mode, nlink, uid, gid, rdev, mtime, nsec) = rec[:10]
        (payload_f, content_f, digest_f, xattrs_f) = rec[10:]
        try:
            path = unescape(path_f)
        except EscapeError as e:
            raise _LineError(f"path: {e}") from None
        if not path:
            raise _LineError("empty path")
        if mode > 0o177777:
            raise _LineError(f"mode {mode:o} does not fit in 16 bits")
        ftype = stat.S_IFMT(mode)
        if ftype not in FILE_TYPES:
            raise _LineError(f"invalid file type in mode {mode:o}")

        if path == b"/":
            if self.root is not None:
                raise _LineError("a second root '/'")
            if ftype != stat.S_IFDIR or is_link:
                raise _LineError("the root must be a directory")
            parent = None
            name = b""
        else:
            if self.root is None:
                raise _LineError("the first line must be the root '/'")
            if path[0] != 0x2F:
                raise _LineError(f"path {path!r} is not absolute")
            # Only the last name needs checking: `dirs` holds checked paths only.
            slash = path.rindex(b"/")
            name = path[slash + 1 :]
            _check_name(name, path, "path")
            found = self.dirs.get(path[:slash] or b"/")
            if found is None:
                raise _LineError(f"parent directory of {path!r} is missing or not a directory")
            parent = found
            assert parent.children is not None
            if name in parent.children:
                raise _LineError(f"path {path!r} already exists")

        if is_link:
            if ftype == stat.S_IFDIR:
                raise _LineError("directories cannot be hardlinked")
            target = _optional(payload_f, "hardlink target")
            if target is None:
                raise _LineError("hardlink without a target path")
            # The other fields of a hardlink line are ignored (composefs-dump(5)).
            placeholder = Inode(mode=mode)
            assert parent is not None and parent.children is not None
            parent.children[name] = placeholder
            self.placeholders[id(placeholder)] = len(self.links)
            self.links.append((self.lineno, parent, name, target))
            return

        if size > U64_MAX:
            raise _LineError(f"size {size} is out of range (maximum {U64_MAX})")
        if nlink > U32_MAX or uid > U32_MAX or gid > U32_MAX or rdev > U32_MAX:
            for value, what in ((nlink, "nlink"), (uid, "uid"), (gid, "gid"), (rdev, "rdev")):
                if value > U32_MAX:
                    raise _LineError(f"{what} {value} is out of range (maximum {U32_MAX})")
        if not S64_MIN <= mtime <= S64_MAX:
            raise _LineError(f"mtime {mtime} is out of range")
        node = Inode(mode=mode, uid=uid, gid=gid, mtime=mtime, mtime_nsec=nsec, nlink=nlink)
        self._content(node, ftype, size, rdev, payload_f, content_f, digest_f)
        if xattrs_f:
            parsed = self.xattr_sections.get(xattrs_f)
            if parsed is None:
                parsed = self.xattr_sections[xattrs_f] = self._xattrs(xattrs_f)
            node.xattrs = parsed.copy()
        if parent is None:
            self.root = node
            self.dirs[b"/"] = node
        else:
            assert parent.children is not None
            parent.children[name] = node
            if node.children is not None:
                self.dirs[path] = node

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
                raise _LineError("digest must be 64 (sha256) or 128 (sha512) hex digits")
            digest = bytes.fromhex(digest_f.decode())
        if content is not None and len(content) != size:
            raise _LineError(f"content size {len(content)} does not match size {size}")

        if ftype == stat.S_IFREG:
            self._regular(node, size, payload, content, digest)
            return
        if digest is not None:
            raise _LineError("a digest is only valid on regular files")
        if content:
            raise _LineError("inline content is only valid on regular files")
        if ftype == stat.S_IFLNK:
            if not payload:
                raise _LineError("symlink without a target")
            if b"\0" in payload:
                raise _LineError("symlink target contains a NUL byte")
            if len(payload) >= PATH_MAX:
                raise _LineError(f"symlink target longer than {PATH_MAX - 1} bytes")
            # C ignores SIZE for symlinks and uses the target's length.
            node.payload = payload
            node.size = len(payload)
            return
        if payload is not None:
            raise _LineError("a payload is only valid on regular files and symlinks")
        node.size = size
        if ftype == stat.S_IFDIR:
            node.children = {}
        elif ftype in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = rdev
        # The RDEV of a non-device is dropped, as C does (no-newline.dump has one on "/").

    @staticmethod
    def _regular(
        node: Inode, size: int, payload: bytes | None, content: bytes | None, digest: bytes | None
    ) -> None:
        node.size = size
        if payload == b"":
            payload = None  # C writes no redirect for an empty payload
        if payload is not None:
            if b"\0" in payload:
                raise _LineError("payload contains a NUL byte")
            if len(payload) >= PATH_MAX:
                raise _LineError(f"payload longer than {PATH_MAX - 1} bytes")
        if content is not None and size > 0:
            if size > INLINE_CONTENT_MAX:
                raise _LineError(f"inline content size {size} exceeds {INLINE_CONTENT_MAX}")
            if payload is not None or digest is not None:
                raise _LineError("a file has either inline content or a payload/digest")
            node.content = content
            return
        if size == 0:
            if payload is not None or digest is not None:
                raise _LineError("an empty file cannot have a payload or digest")
            return
        if size > MAX_EXTERNAL_SIZE:
            raise _LineError(f"file size {size} is too big for a composefs image")
        node.payload = payload
        node.digest = digest

    @staticmethod
    def _xattrs(section: bytes) -> dict[bytes, bytes]:
        """The xattrs of a line's KEY=VALUE section."""
        if len(section) > XATTR_LINE_MAX:
            raise _LineError(f"xattrs take more than {XATTR_LINE_MAX} bytes")
        budget = 12  # LCFS_XATTR_HEADER_SIZE
        xattrs: dict[bytes, bytes] = {}
        items = section.split(b" ")
        if items[-1] == b"":
            items.pop()  # C tolerates one trailing space
        for item in items:
            key, eq, value = item.partition(b"=")
            if not eq:
                raise _LineError(f"xattr {item[:40]!r} has no '='")
            try:
                key = unescape(key)
                value = unescape(value)
            except EscapeError as e:
                raise _LineError(f"xattr: {e}") from None
            if not key or len(key) > NAME_MAX:
                raise _LineError(f"xattr name length {len(key)} is not in 1..{NAME_MAX}")
            if b"\0" in key:
                raise _LineError("xattr name contains a NUL byte")
            if len(value) > XATTR_VALUE_MAX:
                raise _LineError(f"xattr {key!r} value is longer than {XATTR_VALUE_MAX} bytes")
            if key in xattrs:
                raise _LineError(f"duplicate xattr {key!r}")
            budget += 7 + len(key) + len(value)
            if budget > XATTR_BUDGET:
                raise _LineError(f"xattrs exceed the {XATTR_BUDGET}-byte limit of one inode")
            xattrs[key] = value
        return xattrs

    def resolve_links(self) -> None:
        for index, (lineno, parent, name, target_path) in enumerate(self.links):
            node = self._resolve(target_path, {index}, lineno)
            assert parent.children is not None
            parent.children[name] = node

    def _resolve(self, target_path: bytes, seen: set[int], lineno: int) -> Inode:
        assert self.root is not None
        try:
            comps = [] if target_path == b"/" else _components(target_path, "hardlink target")
        except _LineError as e:
            raise DumpfileError(lineno, str(e)) from None
        node = self.root
        for comp in comps:
            if node.children is None or comp not in node.children:
                raise DumpfileError(lineno, f"no target at {target_path!r} for hardlink")
            node = node.children[comp]
        if node.is_dir():
            raise DumpfileError(lineno, f"hardlink target {target_path!r} is a directory")
        index = self.placeholders.get(id(node))
        if index is not None:
            if index in seen:
                raise DumpfileError(lineno, f"hardlink {target_path!r} refers to itself")
            seen.add(index)
            return self._resolve(self.links[index][3], seen, lineno)
        return node


def parse(data: bytes | BinaryIO) -> Inode:
    """Parse a dumpfile into a tree (hardlinks are shared `Inode` objects)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        data = data.read()
    data = bytes(data)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the final newline (C accepts a last line without one, too)
    if not lines:
        raise DumpfileError(1, "no files in dumpfile")
    parser = _Parser()
    nul = data.find(b"\0")
    nul_line = data.count(b"\n", 0, nul) + 1 if nul >= 0 else 0
    fast_line = parser.fast_line
    # The parse makes a few objects per line and frees none: cyclic garbage collection
    # passes over the growing heap would only cost time (a third more on 100k lines).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for lineno, line in enumerate(lines, 1):
            if lineno == nul_line:
                raise DumpfileError(lineno, "embedded NUL byte")
            try:
                if not fast_line(line):
                    parser.lineno = lineno
                    parser.line(line)
            except _LineError as e:
                raise DumpfileError(lineno, str(e)) from None
        parser.resolve_links()
    finally:
        if gc_was_enabled:
            gc.enable()
    assert parser.root is not None
    return parser.root
