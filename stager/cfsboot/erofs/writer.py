"""Build composefs EROFS images byte-identical to C `mkcomposefs` 1.0.8 (formats V0 and V1).

The steps mirror libcomposefs (lcfs-writer.c, lcfs-writer-erofs.c) so that the same tree gives
the same bytes, and so the same fs-verity digest:

1. prepare (`_prepare`): copy the tree into private `_Node`s (the input is never modified),
   pick each hardlinked inode's canonical name (first in depth-first name order, which is how
   a dumpfile names it), escape `trusted.overlay.*` xattrs, add the overlay metacopy/redirect
   xattrs of external files, turn whiteouts into escaped regular files, mark the root opaque
   and add the 256 `00`..`ff` whiteout stubs that hide the object store's fan-out directories;
2. number the inodes breadth-first, children in name order (`_bfs`);
3. lay out inodes, shared xattrs and data blocks (`layout.py`), then emit the bytes.
"""

from __future__ import annotations

import gc
import stat
import struct
from collections.abc import Iterable, Iterator

from cfsboot.erofs import format as fmt
from cfsboot.erofs.layout import Node, lay_out_and_emit
from cfsboot.tree import FILE_TYPES, Inode, lookup, split_path

_OVERLAY_PREFIX = fmt.OVERLAY_PREFIX
_OVERLAY_PREFIX_LEN = len(_OVERLAY_PREFIX)
_HEX = "0123456789abcdef"
_STUB_NAMES = tuple((_HEX[i >> 4] + _HEX[i & 15]).encode() for i in range(256))


def build_image(
    root: Inode,
    *,
    min_version: int = 0,
    max_version: int = 1,
    link_paths: Iterable[bytes] = (),
) -> bytes:
    """The composefs image of `root`, byte-identical to C `mkcomposefs` for the same tree.

    `min_version`/`max_version` are mkcomposefs's --min-version/--max-version: the image is
    V0 unless the tree has whiteouts and V1 is allowed (or V1 is required).

    A hardlinked inode is stored once, at its first name in dumpfile order; C instead uses
    the name of the dumpfile line that is not an '@' hardlink line. Pass those '@' paths as
    `link_paths` (see `dumpfile_link_paths`) to place such inodes exactly as C does.
    """
    if not root.is_dir():
        raise ValueError("the root of an image must be a directory")
    if min_version < 0 or max_version < 0:
        raise ValueError("format versions are non-negative")
    if min_version > fmt.COMPOSEFS_VERSION_MAX or max_version > fmt.COMPOSEFS_VERSION_MAX:
        raise ValueError(f"unsupported composefs format version (max {fmt.COMPOSEFS_VERSION_MAX})")
    max_version = max(max_version, min_version)
    # The build makes a few objects per inode and frees none until the end: cyclic garbage
    # collection passes over the large live heap would only cost time (2x on big trees).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        nodes_root, has_whiteouts = _copy_tree(root, _link_keys(root, link_paths))
        version = min_version
        if version < 1 <= max_version and has_whiteouts:
            version = 1
        _rewrite_for_overlay(nodes_root, version)
        return lay_out_and_emit(_bfs(nodes_root), version)
    except struct.error as e:  # a number that does not fit its on-disk field
        raise ValueError(f"value out of range for a composefs image: {e}") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def _copy_tree(root: Inode, link_keys: set[tuple[int, bytes]]) -> tuple[Node, bool]:
    """Private nodes for the tree; a hardlinked inode becomes one node, placed at its first
    name in depth-first name order that is not in `link_keys` ((id(parent), name) of the
    dumpfile's '@' lines). Also: are there whiteouts?"""
    rootn = _new_node(root, None)
    node_of: dict[int, Node] = {id(root): rootn}
    unplaced: set[int] = set()  # nodes only seen under '@' names so far
    has_whiteouts = False
    assert root.children is not None
    stack: list[tuple[Node, Inode, Iterator[tuple[bytes, Inode]]]] = [
        (rootn, root, iter(sorted(root.children.items())))
    ]
    while stack:
        dn, dinode, it = stack[-1]
        entries = dn.entries
        for name, child in it:
            cn = node_of.get(id(child))
            is_link = bool(link_keys) and (id(dinode), name) in link_keys
            if cn is not None:
                if cn.is_dir:
                    raise ValueError(f"directory hardlinked as {name!r}")
                if is_link or id(cn) not in unplaced:
                    entries.append((name, cn, False))
                    continue
                unplaced.discard(id(cn))
                cn.parent = dn
                entries.append((name, cn, True))
                continue
            if not name or len(name) > fmt.NAME_MAX or name in (b".", b"..") or b"/" in name:
                raise ValueError(f"invalid file name {name!r}")
            cn = _new_node(child, None if is_link else dn)
            node_of[id(child)] = cn
            if cn.is_whiteout:
                has_whiteouts = True
            if is_link:
                if cn.is_dir:
                    raise ValueError(f"directory hardlinked as {name!r}")
                unplaced.add(id(cn))
                entries.append((name, cn, False))
                continue
            entries.append((name, cn, True))
            if cn.is_dir:
                assert child.children is not None
                stack.append((cn, child, iter(sorted(child.children.items()))))
                break
        else:
            stack.pop()
    if unplaced:
        raise ValueError("a hardlinked inode has only '@' names (no hardlink target)")
    return rootn, has_whiteouts


def _link_keys(root: Inode, link_paths: Iterable[bytes]) -> set[tuple[int, bytes]]:
    keys: set[tuple[int, bytes]] = set()
    for path in link_paths:
        parts = split_path(path)
        if not parts:
            raise ValueError(f"invalid hardlink path {path!r}")
        parent = lookup(root, b"/".join(parts[:-1]))
        if parent is None or parent.children is None:
            raise ValueError(f"hardlink path {path!r} is not in the tree")
        keys.add((id(parent), parts[-1]))
    return keys


def _new_node(inode: Inode, parent: Node | None) -> Node:
    mode = inode.mode
    ftype = mode & 0o170000
    if ftype not in FILE_TYPES:
        raise ValueError(f"invalid file type in mode {mode:o}")
    if (inode.uid | inode.gid | inode.nlink | inode.mtime_nsec | inode.rdev) >> 32 or (
        inode.uid | inode.gid | inode.nlink | inode.mtime_nsec | inode.rdev
    ) < 0:
        raise ValueError("uid, gid, nlink, rdev and mtime nsec must fit in 32 bits")
    n = Node(inode, parent)
    if ftype == stat.S_IFDIR:
        if inode.children is None:
            raise ValueError("directory without children mapping")
        n.is_dir = True
    elif ftype == stat.S_IFREG:
        content = inode.content
        if content:
            if len(content) > fmt.INLINE_CONTENT_MAX:
                raise ValueError(
                    f"inline content of {len(content)} bytes exceeds {fmt.INLINE_CONTENT_MAX}"
                )
            n.content = content
            n.size = len(content)
        else:
            n.size = inode.size
            if n.size > 0:
                n.external = True
    elif ftype == stat.S_IFLNK:
        target = inode.payload
        if not target:
            raise ValueError("symlink with an empty target")
        n.symlink = target
        n.size = len(target)
    else:
        n.size = inode.size
        if ftype == stat.S_IFCHR and inode.rdev == 0:
            n.is_whiteout = True
    return n


def _rewrite_for_overlay(rootn: Node, version: int) -> None:
    """The xattrs overlayfs needs (lcfs-writer-erofs.c rewrite_tree_for_erofs)."""
    budget: dict[int, int] = {}
    stack = [rootn]
    while stack:
        n = stack.pop()
        inode = n.src
        assert inode is not None  # only the whiteout stubs have no source, added below
        src = inode.xattrs
        if src:
            # Share the input's dict unless something changes it (copy on write below).
            xattrs = src
            for key in src:
                if key.startswith(_OVERLAY_PREFIX):
                    xattrs = {
                        (
                            fmt.OVERLAY_ESCAPED_PREFIX + k[_OVERLAY_PREFIX_LEN:]
                            if k.startswith(_OVERLAY_PREFIX)
                            else k
                        ): v
                        for k, v in src.items()
                    }
                    break
            n.xattrs = xattrs
        if n.external:
            xattrs = dict(n.xattrs)
            digest = inode.digest
            xattrs[fmt.XATTR_METACOPY] = fmt.metacopy_value(digest) if digest else b""
            payload = inode.payload
            if payload:
                xattrs[fmt.XATTR_REDIRECT] = b"/" + payload
            n.xattrs = xattrs
        elif n.is_whiteout:
            n.mode = stat.S_IFREG | (n.mode & ~0o170000)
            n.size = 0
            parent = n.parent
            assert parent is not None
            _c_set_xattr(n, fmt.XATTR_ESCAPED_WHITEOUT, b"", budget)
            _c_set_xattr(n, fmt.XATTR_USER_WHITEOUT, b"", budget)
            _c_set_xattr(parent, fmt.XATTR_ESCAPED_WHITEOUTS, b"", budget)
            _c_set_xattr(parent, fmt.XATTR_USER_WHITEOUTS, b"", budget)
            if version >= 1:
                _c_set_xattr(parent, fmt.XATTR_ESCAPED_OPAQUE, b"x", budget)
                _c_set_xattr(parent, fmt.XATTR_USER_OPAQUE, b"x", budget)
        if n.is_dir:
            stack.extend(c for _, c, canonical in n.entries if canonical)
    rootn.xattrs = dict(rootn.xattrs)
    rootn.xattrs[fmt.XATTR_OPAQUE] = b"y"
    _add_whiteout_stubs(rootn)


_XATTR_META = 4  # LCFS_INODE_XATTRMETA_SIZE
_XATTR_HEADER = 12  # LCFS_XATTR_HEADER_SIZE
_EXTERNAL_XATTR_MAX = 0xFFFF // 2  # LCFS_INODE_EXTERNAL_XATTR_MAX
_SIZE_T = (1 << 64) - 1


def _c_set_xattr(n: Node, key: bytes, value: bytes, budget: dict[int, int]) -> None:
    """Set an xattr the way lcfs_node_set_xattr() does on C's cloned tree, failing where it fails.

    C keeps a size_t estimate of each node's xattr space, and the deep clone made before
    writing resets it to 0. Replacing an xattr that came from the input subtracts its size,
    which can wrap around and then fails with ERANGE ("Numerical result out of range"):
    e.g. a whiteout that carries a long `user.overlay.whiteout` value. Same input, same
    failure, instead of an image C would never produce.
    """
    if n.src is not None and n.xattrs is n.src.xattrs:
        n.xattrs = dict(n.xattrs)  # never change the input tree
    used = budget.get(id(n), 0)
    old = n.xattrs.pop(key, None)
    if old is not None:
        if n.xattrs:
            used = (used - (2 * _XATTR_META - 1) - len(key) - len(old)) & _SIZE_T
        else:
            used = 0
    entry = 2 * _XATTR_META - 1 + len(key) + len(value)
    if not n.xattrs:
        entry += _XATTR_HEADER
    if ((used + entry) & _SIZE_T) > _EXTERNAL_XATTR_MAX:
        raise ValueError(
            f"xattr {key.decode(errors='replace')} does not fit "
            "(C mkcomposefs fails here with 'Numerical result out of range')"
        )
    n.xattrs[key] = value
    budget[id(n)] = used + entry


def _add_whiteout_stubs(rootn: Node) -> None:
    """Real whiteouts 00..ff in / hide the object store's fan-out directories in the overlay."""
    existing = {name for name, _, _ in rootn.entries}
    selinux = rootn.xattrs.get(b"security.selinux")
    stubs: list[tuple[bytes, Node, bool]] = []
    for name in _STUB_NAMES:
        if name in existing:
            continue
        stub = Node(None, rootn)
        stub.mode = stat.S_IFCHR | 0o644
        stub.uid = rootn.uid
        stub.gid = rootn.gid
        stub.mtime = rootn.mtime
        stub.mtime_nsec = rootn.mtime_nsec
        if selinux is not None:
            stub.xattrs = {b"security.selinux": selinux}
        stubs.append((name, stub, True))
    if stubs:
        rootn.entries = sorted(rootn.entries + stubs, key=_entry_name)
    # The stubs stay character devices 0/0: they are whiteouts for overlayfs, not escaped ones.


def _entry_name(entry: tuple[bytes, Node, bool]) -> bytes:
    return entry[0]


def _bfs(rootn: Node) -> list[Node]:
    """Inodes in breadth-first order, children by name (lcfs_compute_tree), and directory
    nlinks fixed up to 2 + subdirectories as C does."""
    queue = [rootn]
    append = queue.append
    for n in queue:
        if n.is_dir:
            nlink = 2
            for _, c, canonical in n.entries:
                if canonical:
                    append(c)
                if c.is_dir:
                    nlink += 1
            n.nlink = nlink
    return queue


def dumpfile_link_paths(data: bytes) -> list[bytes]:
    """The (unescaped) paths of a dumpfile's '@' hardlink lines, for `build_image`."""
    if b" @" not in data:
        return []
    from cfsboot.dumpfile import unescape

    paths = []
    for line in data.split(b"\n"):
        fields = line.split(b" ", 3)
        if len(fields) > 2 and fields[2][:1] == b"@":
            paths.append(unescape(fields[0]))
    return paths
