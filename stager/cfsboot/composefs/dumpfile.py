"""The composefs dumpfile format (composefs-dump(5)): a strict reader and the canonical writer.

One file per line: 11 space-separated fixed fields (PATH SIZE MODE NLINK UID GID RDEV
MTIME PAYLOAD CONTENT DIGEST) and then `KEY=VALUE` xattrs.  `parse()` builds the tree C
`mkcomposefs --from-file` would build, but refuses every input C accepts only by accident
(truncated integers, the gid/rdev error check that only fires for uid 0, NUL bytes hidden
in C strings, values that do not fit the EROFS fields).  `dumps()` prints a tree exactly
as C `composefs-info dump` prints the tree it loads from an image.
"""

from __future__ import annotations

import gc
import io
from typing import BinaryIO

from cfsboot.composefs.dumpescape import escape, escape_optional, unescape
from cfsboot.composefs.dumpfast import Meta, fast_line
from cfsboot.composefs.dumpread import (
    DIGEST_HEX_LENGTHS,
    XATTR_LINE_MAX,
    DumpfileError,
    LineError,
    Parser,
)
from cfsboot.composefs.tree import Inode, walk

__all__ = [
    "DIGEST_HEX_LENGTHS",
    "XATTR_LINE_MAX",
    "DumpfileError",
    "dumps",
    "link_paths",
    "parse",
    "parse_links",
    "write",
]


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


def parse(data: bytes | bytearray | memoryview | BinaryIO, *, fast_path: bool = True) -> Inode:
    """Parse a dumpfile into a tree (hardlinks are shared `Inode` objects).

    `fast_path=False` sends every line through the strict parser, which the fast path
    must agree with (the tests compare the two)."""
    return parse_links(data, fast_path=fast_path)[0]


def parse_links(
    data: bytes | bytearray | memoryview | BinaryIO, *, fast_path: bool = True
) -> tuple[Inode, list[bytes]]:
    """`parse()`, and the paths of the '@' hardlink lines (`link_paths()`, found while
    parsing), which `build_image` needs to place hardlinks where C does."""
    if not isinstance(data, bytes | bytearray | memoryview):
        data = data.read()
    raw = bytes(data)
    nul = raw.find(b"\0")
    nul_line = raw.count(b"\n", 0, nul) + 1 if nul >= 0 else 0
    # The parse makes a few objects per line and frees none: cyclic garbage collection
    # passes over the growing heap would only cost time (a third more on 100k lines).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _read(raw, nul_line, fast_path)
    finally:
        if gc_was_enabled:
            gc.enable()


def _read(raw: bytes, nul_line: int, fast_path: bool) -> tuple[Inode, list[bytes]]:
    parser = Parser()
    metas: dict[bytes, Meta] = {}
    lineno = 0
    # Most lines have no escape: the fast path need not look for one in their fields.
    # (Where the next backslash is: `pos` follows the start of each line in `raw`.)
    backslash = raw.find(b"\\")
    pos = 0
    try:
        # One line at a time (BytesIO finds them in C): a list of all of them would be
        # as big as the dumpfile again (and measured slower than this, as were lists of
        # a megabyte of lines at a time).
        for line in io.BytesIO(raw):
            lineno += 1
            end = pos + len(line)
            if line.endswith(b"\n"):  # all but perhaps the last (C accepts that)
                line = line[:-1]
            if lineno == nul_line:
                raise LineError("embedded NUL byte")
            escapes = 0 <= backslash < end
            if escapes:
                backslash = raw.find(b"\\", end)
            pos = end
            if not (fast_path and fast_line(parser, metas, line, escapes)):
                parser.lineno = lineno
                parser.line(line)
    except LineError as e:
        raise DumpfileError(lineno, str(e)) from None
    if parser.root is None:
        raise DumpfileError(1, "no files in dumpfile")
    parser.resolve_links()
    return parser.root, parser.link_paths


def link_paths(data: bytes) -> list[bytes]:
    """The (unescaped) paths of a dumpfile's '@' hardlink lines: where C places a hardlinked
    inode depends on them (see `erofs.writer.build_image`)."""
    paths = []
    # A hardlink line's third field (MODE) starts with '@'. Spaces in fields are escaped,
    # so every " @" starts a field; it is MODE if one space precedes it on its line.
    at = data.find(b" @")
    while at >= 0:
        start = data.rfind(b"\n", 0, at) + 1
        first = data.find(b" ", start, at)
        if first >= 0 and data.find(b" ", first + 1, at) < 0:
            paths.append(unescape(data[start:first]))
        at = data.find(b" @", at + 1)
    return paths
