"""Build composefs EROFS images byte-identical to C `mkcomposefs` 1.0.8 (formats V0 and V1).

The steps mirror libcomposefs (lcfs-writer.c, lcfs-writer-erofs.c) so that the same tree gives
the same bytes, and so the same fs-verity digest:

1. number the inodes breadth-first, children in name order (`_walk`, lcfs_compute_tree), with
   the 256 `00`..`ff` whiteout stubs in / that hide the object store's fan-out directories;
   a hardlinked inode is numbered once, at its canonical name (`_place_hardlinks`);
2. rewrite for overlayfs (`_rewrite_for_overlay`): escape `trusted.overlay.*` xattrs, turn
   whiteouts into escaped regular files and mark the root opaque (the metacopy/redirect
   xattrs of external files are added by the layout, which knows them from the inode);
3. lay out inodes, shared xattrs and data blocks and emit the bytes (`layout.py`).

The input tree is never modified: nodes whose metadata the rewrite changes are replaced by
private copies in the inode order.
"""

from __future__ import annotations

import gc
import stat
import struct
from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from itertools import compress, count
from typing import Final

from cfsboot.composefs.erofs import format as fmt
from cfsboot.composefs.erofs.layout import Directory, lay_out_and_emit
from cfsboot.composefs.erofs.xattrs import XattrsTooLarge, xattr_space
from cfsboot.composefs.limits import EXTERNAL_XATTR_MAX, NAME_MAX, XATTR_VALUE_MAX
from cfsboot.composefs.tree import Inode, lookup, split_path
from cfsboot.errors import CfsbootError

_OVERLAY_PREFIX: Final = fmt.OVERLAY_PREFIX
_OVERLAY_PREFIX_LEN: Final = len(_OVERLAY_PREFIX)
_HEX: Final = "0123456789abcdef"
_STUB_NAMES: Final = tuple((_HEX[i >> 4] + _HEX[i & 15]).encode() for i in range(256))
_IFMT: Final = 0o170000
_IFDIR: Final = stat.S_IFDIR
_IFCHR: Final = stat.S_IFCHR


def build_image(
    root: Inode,
    *,
    min_version: int = 0,
    max_version: int = 1,
    link_paths: Iterable[bytes] = (),
) -> bytearray:
    """The composefs image of `root`, byte-identical to C `mkcomposefs` for the same tree
    (a bytearray: the buffer it was built in, not copied).

    `min_version`/`max_version` are mkcomposefs's --min-version/--max-version: the image is
    V0 unless the tree has whiteouts and V1 is allowed (or V1 is required).

    A hardlinked inode is stored once, at its first name in dumpfile order; C instead uses
    the name of the dumpfile line that is not an '@' hardlink line. Pass those '@' paths as
    `link_paths` (see `dumpfile.link_paths`) to place such inodes exactly as C does.
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
        link_keys = _link_keys(root, link_paths)
        order, dirs, stubs = _walk(root)
        if link_keys or len(set(order)) != len(order):  # (Inode hashes by identity)
            names = Counter(map(id, order))  # of each inode
            order, dirs = _place_hardlinks(order, dirs, names, link_keys)
        stub_ids = set(map(id, stubs))
        whiteouts = [
            i
            for i, x in enumerate(order)
            if x.mode & _IFMT == _IFCHR and x.rdev == 0 and id(x) not in stub_ids
        ]
        version = min_version
        if version < 1 <= max_version and whiteouts:
            version = 1
        final_xattrs = _rewrite_for_overlay(order, dirs, whiteouts, version)
        return lay_out_and_emit(order, dirs, final_xattrs, version)
    except struct.error as e:  # a number that does not fit its on-disk field
        raise ValueError(f"value out of range for a composefs image: {e}") from None
    except XattrsTooLarge:
        raise _xattrs_too_large(root) from None
    finally:
        if gc_was_enabled:
            gc.enable()


class ImageLimitError(CfsbootError):
    """A tree that an EROFS image cannot hold as it is: one line that names the file."""


def _xattrs_too_large(root: Inode) -> ImageLimitError:
    """The error for the first file (depth first, by name) whose xattrs C's writer would
    refuse; only called once the build has met one."""
    stack: list[tuple[bytes, Inode]] = [(b"/", root)]
    while stack:
        path, node = stack.pop()
        space = xattr_space(node.xattrs)
        if space > EXTERNAL_XATTR_MAX:
            key, value = max(node.xattrs.items(), key=lambda kv: len(kv[1]))
            return ImageLimitError(
                f"cannot build the composefs image: the xattrs of"
                f" {path.decode(errors='backslashreplace')} take {space} bytes"
                f" ({key.decode(errors='backslashreplace')} alone {len(value)}),"
                f" more than the {EXTERNAL_XATTR_MAX} composefs allows for one file",
                hint="remove or shorten them in the source",
            )
        if node.children:
            prefix = path if path.endswith(b"/") else path + b"/"
            stack.extend(
                (prefix + name, node.children[name]) for name in sorted(node.children, reverse=True)
            )
    return ImageLimitError(
        f"cannot build the composefs image: an xattr value exceeds {XATTR_VALUE_MAX} bytes"
    )


def _walk(root: Inode) -> tuple[list[Inode], dict[int, Directory], list[Inode]]:
    """Every name's inode in breadth-first order, children by name (a hardlinked inode is
    there once per name), the directories by their index in that order, and the whiteout
    stubs added to the root."""
    assert root.children is not None
    children = dict(root.children)
    stubs = []
    for name in _STUB_NAMES:
        if name not in children:
            stub = _stub(root)
            children[name] = stub
            stubs.append(stub)
    order = [root]
    dirs: dict[int, Directory] = {}
    seen: set[int] = set()
    # Directories to list: (directory, its index, its parent's index, its children).
    queue: list[tuple[Inode, int, int, dict[bytes, Inode] | None]] = [(root, 0, 0, children)]
    q = 0
    while q < len(queue):
        node, index, parent, kids = queue[q]
        q += 1
        if kids is None:
            raise ValueError("directory without children mapping")
        if id(node) in seen:
            raise ValueError("directory hardlinked (reachable under two names)")
        seen.add(id(node))
        names = sorted(kids)
        start = len(order)
        name_bytes = 0
        subdirs = 0
        slashes = b"".join(names).find(b"/") >= 0
        for name in names:
            n = len(name)
            if (
                not n
                or n > NAME_MAX
                or name == b"."
                or name == b".."
                or (slashes and name.find(b"/") >= 0)
            ):
                raise ValueError(f"invalid file name {name!r}")
            name_bytes += n
            child = kids[name]
            if child.mode & _IFMT == _IFDIR:
                queue.append((child, len(order), index, child.children))
                subdirs += 1
            order.append(child)
        dirs[index] = Directory(parent, names, name_bytes, start, None, 2 + subdirs)
    return order, dirs, stubs


def _stub(root: Inode) -> Inode:
    """A real whiteout 00..ff in /: it hides an object store fan-out directory in the overlay."""
    selinux = root.xattrs.get(b"security.selinux")
    return Inode(
        mode=stat.S_IFCHR | 0o644,
        uid=root.uid,
        gid=root.gid,
        mtime=root.mtime,
        mtime_nsec=root.mtime_nsec,
        xattrs={} if selinux is None else {b"security.selinux": selinux},
    )


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


def _place_hardlinks(
    order: list[Inode],
    dirs: dict[int, Directory],
    names: Counter[int],
    link_keys: set[tuple[int, bytes]],
) -> tuple[list[Inode], dict[int, Directory]]:
    """Keep each hardlinked inode once in the order, at its canonical name: the first one in
    depth-first name order that is not in `link_keys` ((id(parent), name) of the dumpfile's
    '@' lines); its other names become directory entries that point there. `names` counts
    the names of each inode (by id)."""
    dir_list = sorted(dirs.items())
    starts = [d.first for _, d in dir_list]

    def parent_of(pos: int) -> tuple[int, Directory]:
        return dir_list[bisect_right(starts, pos) - 1]

    def path_of(pos: int) -> list[bytes]:
        comps = []
        while pos:
            index, d = parent_of(pos)
            comps.append(d.names[pos - d.first])
            pos = index
        comps.reverse()
        return comps

    link_pos: set[int] = set()
    if link_keys:
        by_id = {id(order[index]): d for index, d in dir_list}
        for parent_id, name in link_keys:
            d = by_id.get(parent_id)
            if d is None:
                continue  # a directory reachable only through the links themselves
            j = bisect_left(d.names, name)
            if j < len(d.names) and d.names[j] == name:
                link_pos.add(d.first + j)
    for pos in link_pos:
        if order[pos].mode & _IFMT == _IFDIR:
            raise ValueError(f"directory hardlinked as {path_of(pos)[-1]!r}")
    multi = {k for k, n in names.items() if n > 1}
    multi.update(id(order[pos]) for pos in link_pos)
    names_of: dict[int, list[int]] = {}
    for pos in compress(count(), map(multi.__contains__, map(id, order))):
        names_of.setdefault(id(order[pos]), []).append(pos)
    canonical_of: dict[int, int] = {}  # position of a non-canonical name -> canonical position
    for positions in names_of.values():
        candidates = [pos for pos in positions if pos not in link_pos]
        if not candidates:
            raise ValueError("a hardlinked inode has only '@' names (no hardlink target)")
        canonical = min(candidates, key=path_of) if len(candidates) > 1 else candidates[0]
        for pos in positions:
            if pos != canonical:
                canonical_of[pos] = canonical
    return _renumber(order, dir_list, canonical_of)


def _renumber(
    order: list[Inode],
    dir_list: list[tuple[int, Directory]],
    canonical_of: dict[int, int],
) -> tuple[list[Inode], dict[int, Directory]]:
    """The order and directories without the non-canonical names of hardlinked inodes
    (`canonical_of`: their positions, and where their inode is kept)."""
    removed = sorted(canonical_of)

    def new_index(pos: int) -> int:
        return pos - bisect_left(removed, pos)

    new_order: list[Inode] = []
    prev = 0
    for pos in removed:
        new_order += order[prev:pos]
        prev = pos + 1
    new_order += order[prev:]
    new_dirs: dict[int, Directory] = {}
    for index, d in dir_list:
        first = d.first
        end = first + len(d.names)
        targets: list[int] | None = None
        lo = bisect_left(removed, first)
        hi = bisect_left(removed, end)
        if lo != hi:
            # the names placed here keep consecutive indexes between the removed ones
            targets = []
            kept = first - lo  # new_index(first)
            pos = first
            for other in removed[lo:hi]:
                targets += range(kept, kept + other - pos)
                kept += other - pos
                targets.append(new_index(canonical_of[other]))
                pos = other + 1
            targets += range(kept, kept + end - pos)
        new_dirs[new_index(index)] = Directory(
            new_index(d.parent),
            d.names,
            d.name_bytes,
            new_index(first),
            targets,
            d.nlink,
        )
    return new_order, new_dirs


def _escaped(xattrs: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """A copy of `xattrs` with user `trusted.overlay.*` xattrs escaped for overlayfs."""
    return {
        (
            fmt.OVERLAY_ESCAPED_PREFIX + k[_OVERLAY_PREFIX_LEN:]
            if k.startswith(_OVERLAY_PREFIX)
            else k
        ): v
        for k, v in xattrs.items()
    }


def _rewrite_for_overlay(
    order: list[Inode], dirs: dict[int, Directory], whiteouts: list[int], version: int
) -> dict[int, dict[bytes, bytes]]:
    """The xattrs overlayfs needs on whiteouts, their directories and the root
    (lcfs-writer-erofs.c rewrite_tree_for_erofs); the nodes whose xattrs change are
    replaced in `order` by private copies, and their final xattrs returned by index."""
    final: dict[int, dict[bytes, bytes]] = {}
    budget: dict[int, int] = {}

    def xattrs_of(index: int) -> dict[bytes, bytes]:
        got = final.get(index)
        if got is None:
            got = final[index] = _escaped(order[index].xattrs)
        return got

    if whiteouts:
        dir_list = sorted(dirs.items())
        starts = [d.first for _, d in dir_list]
        for w in whiteouts:
            parent = dir_list[bisect_right(starts, w) - 1][0]
            x = xattrs_of(w)
            _c_set_xattr(x, fmt.XATTR_ESCAPED_WHITEOUT, b"", budget, w)
            _c_set_xattr(x, fmt.XATTR_USER_WHITEOUT, b"", budget, w)
            p = xattrs_of(parent)
            _c_set_xattr(p, fmt.XATTR_ESCAPED_WHITEOUTS, b"", budget, parent)
            _c_set_xattr(p, fmt.XATTR_USER_WHITEOUTS, b"", budget, parent)
            if version >= 1:
                _c_set_xattr(p, fmt.XATTR_ESCAPED_OPAQUE, b"x", budget, parent)
                _c_set_xattr(p, fmt.XATTR_USER_OPAQUE, b"x", budget, parent)
            src = order[w]
            order[w] = Inode(
                mode=stat.S_IFREG | (src.mode & ~_IFMT),
                uid=src.uid,
                gid=src.gid,
                mtime=src.mtime,
                mtime_nsec=src.mtime_nsec,
                nlink=src.nlink,
            )
    xattrs_of(0)[fmt.XATTR_OPAQUE] = b"y"
    for index in final:
        if index not in dirs:
            continue
        src = order[index]
        # A private copy: it keeps the input's children mapping (which is only read).
        order[index] = Inode(
            mode=src.mode,
            uid=src.uid,
            gid=src.gid,
            mtime=src.mtime,
            mtime_nsec=src.mtime_nsec,
            nlink=src.nlink,
            size=src.size,
            children=src.children,
        )
    return final


_XATTR_META: Final = 4  # LCFS_INODE_XATTRMETA_SIZE
_XATTR_HEADER: Final = 12  # LCFS_XATTR_HEADER_SIZE
_SIZE_T: Final = (1 << 64) - 1


def _c_set_xattr(
    xattrs: dict[bytes, bytes],
    key: bytes,
    value: bytes,
    budget: dict[int, int],
    index: int,
) -> None:
    """Set an xattr the way lcfs_node_set_xattr() does on C's cloned tree, failing where it fails.

    C keeps a size_t estimate of each node's xattr space, and the deep clone made before
    writing resets it to 0. Replacing an xattr that came from the input subtracts its size,
    which can wrap around and then fails with ERANGE ("Numerical result out of range"):
    e.g. a whiteout that carries a long `user.overlay.whiteout` value. Same input, same
    failure, instead of an image C would never produce.
    """
    used = budget.get(index, 0)
    old = xattrs.pop(key, None)
    if old is not None:
        if xattrs:
            used = (used - (2 * _XATTR_META - 1) - len(key) - len(old)) & _SIZE_T
        else:
            used = 0
    entry = 2 * _XATTR_META - 1 + len(key) + len(value)
    if not xattrs:
        entry += _XATTR_HEADER
    if ((used + entry) & _SIZE_T) > EXTERNAL_XATTR_MAX:
        raise ValueError(
            f"xattr {key.decode(errors='replace')} does not fit "
            "(C mkcomposefs fails here with 'Numerical result out of range')"
        )
    xattrs[key] = value
    budget[index] = used + entry
