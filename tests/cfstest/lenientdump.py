"""A lenient dumpfile reader for the C test assets that only C's lenient parser accepts
(e.g. honggfuzz-longlink-unterminated.dump, with fewer than 11 fields); everything else
goes through the strict `cfsboot.composefs.dumpfile.parse`."""

from __future__ import annotations

import re
import stat

from cfsboot.composefs.tree import Inode

_ESC = re.compile(rb"\\(x[0-9a-fA-F]{2}|.)")
_SHORT = {b"\\": b"\\", b"n": b"\n", b"r": b"\r", b"t": b"\t"}


def _unescape(field: bytes) -> bytes:
    def sub(m: re.Match[bytes]) -> bytes:
        s = m.group(1)
        if s[:1] == b"x" and len(s) == 3:
            return bytes([int(s[1:], 16)])
        return _SHORT[s]

    return _ESC.sub(sub, field)


def _opt(field: bytes) -> bytes | None:
    return None if field == b"-" else _unescape(field)


def local_parse(data: bytes) -> Inode:
    """A lenient parse, for assets only C's lenient parser accepts."""
    root: Inode | None = None
    by_path: dict[bytes, Inode] = {}
    links: list[tuple[bytes, bytes]] = []
    for line in data.split(b"\n"):
        if not line:
            continue
        f = line.split(b" ")
        f += [b"-"] * (11 - len(f))  # C fills missing trailing fields with "unset"
        path = _unescape(f[0])
        mode_s = f[2]
        if mode_s.startswith(b"@"):
            links.append((path, _unescape(f[8])))
            continue
        mode = int(mode_s, 8)
        sec, _, nsec = f[7].partition(b".")
        node = Inode(
            mode=mode,
            uid=int(f[4]),
            gid=int(f[5]),
            rdev=int(f[6]),
            nlink=int(f[3]),
            mtime=int(sec),
            mtime_nsec=int(nsec or b"0"),
            size=int(f[1]),
        )
        if stat.S_ISDIR(mode):
            node.children = {}
        payload = _opt(f[8])
        content = _opt(f[9])
        digest = None if f[10] == b"-" else bytes.fromhex(f[10].decode())
        node.payload = payload
        if stat.S_ISREG(mode):
            node.content = content if content else None
            node.digest = digest
        elif stat.S_ISLNK(mode):
            node.size = len(payload or b"")
        for x in f[11:]:
            if not x:
                continue
            k, _, v = x.partition(b"=")
            node.xattrs[_unescape(k)] = _unescape(v)
        if path == b"/":
            root = node
        else:
            parent_path, _, name = path.rpartition(b"/")
            parent = by_path[parent_path or b"/"]
            assert parent.children is not None
            parent.children[name] = node
        by_path[path] = node
    assert root is not None
    for path, target in links:
        parent_path, _, name = path.rpartition(b"/")
        parent = by_path[parent_path or b"/"]
        assert parent.children is not None
        parent.children[name] = by_path[target]
    return root
