"""Read a composefs EROFS image back into a tree, as C `lcfs_load_node_from_image` does.

The composefs transforms are reversed the way the C reader reverses them, so that
`dumps(read_image(img))` is byte for byte `composefs-info dump img`:
- `trusted.overlay.metacopy` / `.redirect` become the file's digest and payload;
- escaped `trusted.overlay.overlay.*` xattrs lose one `overlay.`; other `trusted.overlay.*`
  xattrs (the root's opaque=y) are dropped;
- escaped whiteouts (regular files with `trusted.overlay.overlay.whiteout`) become
  character devices 0/0; the marker xattrs `*.overlay.whiteout(s)` are dropped;
- real whiteouts (the 00..ff stubs in the root) are skipped, and so are `.` and `..`.

Unlike the C reader every offset is checked: a truncated or corrupt image is an
`ImageFormatError` naming what is wrong, never an IndexError or a read past the end.
"""

from __future__ import annotations

import stat
import struct

from cfsboot.composefs.erofs import format as f
from cfsboot.composefs.limits import INLINE_CONTENT_MAX, NAME_MAX, PATH_MAX, XATTR_NAME_MAX
from cfsboot.composefs.tree import Inode
from cfsboot.errors import CfsbootError

_VALID_TYPES = frozenset(f.FILE_TYPE_OF_MODE)
_XATTR_LIMIT = 0xFFFF  # total xattr space of one inode when loading an image (lcfs-writer.c)


class ImageFormatError(CfsbootError):
    """The data is not a composefs image we can read (or it is damaged)."""


_SKIP = Inode(mode=stat.S_IFCHR)  # marks a nid that is a real whiteout (skipped)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        if len(data) < f.BLOCK_SIZE:
            raise ImageFormatError(f"image is {len(data)} bytes, smaller than one block")
        magic, header_version, _flags, _cfs_version = f.COMPOSEFS_HEADER.unpack_from(data, 0)
        if magic != f.COMPOSEFS_MAGIC:
            raise ImageFormatError(f"not a composefs image (magic {magic:#010x})")
        if header_version != f.COMPOSEFS_HEADER_VERSION:
            raise ImageFormatError(f"unsupported composefs header version {header_version}")
        sb = f.SUPERBLOCK.unpack_from(data, f.SUPERBLOCK_OFFSET)
        (sb_magic, _csum, _compat, blkszbits, _ext, root_nid, _inos, build_time, build_nsec) = sb[
            :9
        ]
        meta_blkaddr, xattr_blkaddr = sb[10], sb[11]
        if sb_magic != f.EROFS_MAGIC:
            raise ImageFormatError(f"no EROFS superblock (magic {sb_magic:#010x})")
        if blkszbits != f.BLOCK_BITS:
            raise ImageFormatError(f"unsupported EROFS block size 2^{blkszbits}")
        self.meta = meta_blkaddr * f.BLOCK_SIZE
        self.xattr_base = xattr_blkaddr * f.BLOCK_SIZE
        if self.meta >= len(data) or self.xattr_base >= len(data):
            raise ImageFormatError("superblock points past the end of the image")
        self.build_time = _signed64(build_time)
        self.build_nsec = build_nsec
        self.root_nid = root_nid
        self.nodes: dict[int, Inode] = {}
        # Directory data is never shared in a real image: more of it than the image holds
        # means blocks are read again and again (a hostile image, or quadratic time).
        self.dir_bytes = 0

    def _check(self, off: int, size: int, what: str) -> None:
        if off < 0 or size < 0 or off + size > len(self.data):
            raise ImageFormatError(f"{what} at offset {off} (+{size}) is outside the image")

    # --- inodes ------------------------------------------------------------------------

    def load(self, nid: int) -> tuple[Inode, list[tuple[bytes, int]]]:
        """The inode `nid` (or _SKIP for a whiteout) and, for a directory, its entries."""
        off = self.meta + nid * f.SLOT_SIZE
        self._check(off, f.INODE_COMPACT.size, f"inode {nid}")
        (i_format,) = f.INODE_FORMAT.unpack_from(self.data, off)
        extended = i_format & f.I_VERSION_MASK
        layout = (i_format >> f.I_DATALAYOUT_BIT) & f.I_DATALAYOUT_MASK
        if extended:
            self._check(off, f.INODE_EXTENDED.size, f"inode {nid}")
            (_, icount, mode, size, i_u, _ino, uid, gid, mtime, nsec, nlink) = (
                f.INODE_EXTENDED.unpack_from(self.data, off)
            )
            mtime = _signed64(mtime)
            isize = f.INODE_EXTENDED.size
        else:
            (_, icount, mode, nlink, size, _r, i_u, _ino, uid, gid) = f.INODE_COMPACT.unpack_from(
                self.data, off
            )
            mtime, nsec = self.build_time, self.build_nsec
            isize = f.INODE_COMPACT.size
        ftype = stat.S_IFMT(mode)
        if ftype not in _VALID_TYPES:
            raise ImageFormatError(f"inode {nid} has an invalid mode {mode:o}")
        if layout not in (
            f.DataLayout.FLAT_PLAIN,
            f.DataLayout.FLAT_INLINE,
            f.DataLayout.CHUNK_BASED,
        ):
            raise ImageFormatError(f"inode {nid} has an unsupported data layout {layout}")
        node = Inode(mode=mode, uid=uid, gid=gid, mtime=mtime, mtime_nsec=nsec, nlink=nlink)
        node.size = size
        if ftype in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = i_u
            if ftype == stat.S_IFCHR and i_u == 0:
                return _SKIP, []  # a real overlay whiteout: the 00..ff stubs

        xattr_size = 0 if icount == 0 else 12 + (icount - 1) * 4
        xattr_off = off + isize
        self._check(xattr_off, xattr_size, f"xattrs of inode {nid}")
        tail_off = xattr_off + xattr_size
        tailpacked = layout == f.DataLayout.FLAT_INLINE
        if tailpacked and size % f.BLOCK_SIZE == 0:
            raise ImageFormatError(f"inode {nid} has an inline layout without a tail")
        n_blocks = -(-size // f.BLOCK_SIZE)
        oob_blocks = n_blocks - 1 if tailpacked else n_blocks
        oob_off = i_u * f.BLOCK_SIZE
        entries: list[tuple[bytes, int]] = []

        if ftype == stat.S_IFDIR:
            node.children = {}
            if layout == f.DataLayout.CHUNK_BASED:
                raise ImageFormatError(f"directory inode {nid} is chunk-based")
            self._directory(nid, size, oob_off, oob_blocks, tail_off, tailpacked, entries)
        elif ftype == stat.S_IFLNK:
            if size >= PATH_MAX:
                raise ImageFormatError(f"symlink inode {nid} has a target of {size} bytes")
            where = tail_off if tailpacked else oob_off
            self._check(where, size, f"symlink target of inode {nid}")
            target = self.data[where : where + size]
            if not target or target.find(b"\0") >= 0:
                raise ImageFormatError(f"symlink inode {nid} has an empty or NUL-bearing target")
            node.payload = target
            node.size = len(target)
        elif ftype == stat.S_IFREG and size != 0:
            node.content = self._file_data(
                nid, layout, size, i_u, oob_off, oob_blocks, tail_off, tailpacked
            )

        if icount:
            self._xattrs(nid, node, xattr_off, xattr_size)
        return node, entries

    def _directory(
        self,
        nid: int,
        size: int,
        oob_off: int,
        oob_blocks: int,
        tail_off: int,
        tailpacked: bool,
        out: list[tuple[bytes, int]],
    ) -> None:
        """The entries of a directory: in its blocks, then in its tail if inline."""
        for block in range(oob_blocks):
            block_size = f.BLOCK_SIZE
            if not tailpacked and block + 1 == oob_blocks and size % f.BLOCK_SIZE:
                block_size = size % f.BLOCK_SIZE
            start = oob_off + block * f.BLOCK_SIZE
            self._check(start, block_size, f"directory block of inode {nid}")
            self._dirents(nid, start, block_size, out)
        if tailpacked:
            tail_size = size % f.BLOCK_SIZE
            self._check(tail_off, tail_size, f"directory tail of inode {nid}")
            self._dirents(nid, tail_off, tail_size, out)

    def _file_data(
        self,
        nid: int,
        layout: int,
        size: int,
        i_u: int,
        oob_off: int,
        oob_blocks: int,
        tail_off: int,
        tailpacked: bool,
    ) -> bytes | None:
        """The inline content of a regular file: its blocks, then its tail if inline;
        None for an external file (whose chunk table, after the xattrs, is checked)."""
        if layout == f.DataLayout.CHUNK_BASED:
            chunkbits = f.BLOCK_BITS + (i_u & f.CHUNK_FORMAT_BLKBITS_MASK)
            count = -(-size // (1 << chunkbits))
            entry = 8 if i_u & f.CHUNK_FORMAT_INDEXES else f.CHUNK_ADDR.size
            self._check(tail_off, count * entry, f"chunk table of inode {nid}")
            return None
        if size > min(INLINE_CONTENT_MAX, len(self.data)):
            raise ImageFormatError(f"inode {nid} has {size} bytes of inline content")
        oob_size = oob_blocks * f.BLOCK_SIZE if tailpacked else size
        self._check(oob_off, oob_size, f"content of inode {nid}")
        content = self.data[oob_off : oob_off + oob_size]
        if tailpacked:
            tail_size = size % f.BLOCK_SIZE
            self._check(tail_off, tail_size, f"content tail of inode {nid}")
            content += self.data[tail_off : tail_off + tail_size]
        return content

    def _dirents(self, nid: int, start: int, block_size: int, out: list[tuple[bytes, int]]) -> None:
        data = self.data
        if block_size < f.DIRENT.size:
            raise ImageFormatError(f"directory inode {nid} has a block of {block_size} bytes")
        self.dir_bytes += block_size
        if self.dir_bytes > len(data):
            raise ImageFormatError("directories take more space than the image: it is corrupt")
        first_nameoff = f.DIRENT.unpack_from(data, start)[1]
        if first_nameoff % f.DIRENT.size or not f.DIRENT.size <= first_nameoff <= block_size:
            raise ImageFormatError(f"directory inode {nid} has a bad dirent table")
        count = first_nameoff // f.DIRENT.size
        dirents = [f.DIRENT.unpack_from(data, start + i * f.DIRENT.size) for i in range(count)]
        for i, (child_nid, nameoff, _ftype) in enumerate(dirents):
            if i + 1 < count:
                end = dirents[i + 1][1]
            else:
                nul = data.find(b"\0", start + nameoff, start + block_size)
                end = (nul - start) if nul >= 0 else block_size
            if not nameoff <= end <= block_size or nameoff < first_nameoff:
                raise ImageFormatError(f"directory inode {nid} has a bad name offset")
            name = data[start + nameoff : start + end]
            if name in (b".", b".."):
                continue
            if not name or name.find(b"/") >= 0 or name.find(b"\0") >= 0 or len(name) > NAME_MAX:
                raise ImageFormatError(f"directory inode {nid} has an invalid name {name!r}")
            out.append((name, child_nid))

    # --- xattrs (lcfs_build_node_erofs_xattr) --------------------------------------------

    def _xattrs(self, nid: int, node: Inode, start: int, size: int) -> None:
        data = self.data
        end = start + size
        if size < f.XATTR_IBODY_HEADER.size:
            raise ImageFormatError(f"inode {nid} has a truncated xattr header")
        _filter, shared_count = f.XATTR_IBODY_HEADER.unpack_from(data, start)
        pos = start + f.XATTR_IBODY_HEADER.size + shared_count * 4
        if pos > end:
            raise ImageFormatError(f"inode {nid} has more shared xattrs than room for them")
        budget = _Budget()
        # C's loop condition: an entry header must start strictly before the last 4 bytes.
        while pos + f.XATTR_ENTRY.size < end:
            pos += self._xattr(nid, node, pos, end, budget)
        for i in range(shared_count):
            (xid,) = f.XATTR_SHARED_ID.unpack_from(data, start + f.XATTR_IBODY_HEADER.size + 4 * i)
            self._xattr(nid, node, self.xattr_base + xid * 4, len(data), budget)

    def _xattr(self, nid: int, node: Inode, pos: int, limit: int, budget: _Budget) -> int:
        data = self.data
        if pos + f.XATTR_ENTRY.size > limit:
            raise ImageFormatError(f"xattr of inode {nid} is outside its area")
        name_len, index, value_size = f.XATTR_ENTRY.unpack_from(data, pos)
        name_at = pos + f.XATTR_ENTRY.size
        value_at = name_at + name_len
        if value_at + value_size > limit:
            raise ImageFormatError(f"xattr of inode {nid} runs past its area")
        if index >= len(f.XATTR_PREFIXES):
            raise ImageFormatError(f"xattr of inode {nid} has an unknown name index {index}")
        name = f.XATTR_PREFIXES[index] + data[name_at:value_at]
        value = data[value_at : value_at + value_size]
        self._apply(nid, node, name, value, budget)
        return f.round_up(f.XATTR_ENTRY.size + name_len + value_size, f.XATTR_ALIGN)

    @staticmethod
    def _apply(nid: int, node: Inode, name: bytes, value: bytes, budget: _Budget) -> None:
        regular = stat.S_ISREG(node.mode)
        if name == f.XATTR_REDIRECT:
            if regular:
                if len(value) > 1 and value[:1] == b"/":
                    value = value[1:]
                node.payload = value.split(b"\0", 1)[0]
            return
        if name == f.XATTR_METACOPY:
            # C knows only sha256 (36 bytes); a sha512 metacopy (68) is ours.
            if regular and len(value) in (36, 68):
                node.digest = value[4:]
            return
        if name == f.XATTR_ESCAPED_WHITEOUT and regular:
            node.mode = stat.S_IFCHR | stat.S_IMODE(node.mode)
            node.rdev = 0
            node.size = 0
            node.content = None
            return
        if name in (f.XATTR_ESCAPED_WHITEOUTS, f.XATTR_USER_WHITEOUT, f.XATTR_USER_WHITEOUTS):
            return
        if name.startswith(f.OVERLAY_PREFIX):
            if not name.startswith(f.OVERLAY_ESCAPED_PREFIX):
                return
            name = b"trusted." + name[len(f.OVERLAY_PREFIX) :]
        if name.find(b"\0") >= 0 or not 0 < len(name) <= XATTR_NAME_MAX:
            raise ImageFormatError(f"inode {nid} has an invalid xattr name {name[:64]!r}")
        budget.add(nid, node, name, value)


class _Budget:
    """lcfs_node_set_xattr_internal's space accounting and replace semantics."""

    def __init__(self) -> None:
        self.used = 0

    def add(self, nid: int, node: Inode, name: bytes, value: bytes) -> None:
        xattrs = node.xattrs
        if name in xattrs:
            # C unsets the old entry by moving the last one into its slot.
            old = xattrs[name]
            items = list(xattrs.items())
            i = next(j for j, (k, _) in enumerate(items) if k == name)
            items[i] = items[-1]
            items.pop()
            xattrs.clear()
            xattrs.update(items)
            self.used = self.used - (7 + len(name) + len(old)) if xattrs else 0
        entry = 7 + len(name) + len(value) + (12 if not xattrs else 0)
        if self.used + entry > _XATTR_LIMIT:
            raise ImageFormatError(f"inode {nid} has more xattr data than composefs allows")
        self.used += entry
        xattrs[name] = value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def read_image(data: bytes | bytearray) -> Inode:
    """The tree C's reader would load from a composefs image (hardlinks are shared nodes)."""
    try:
        return _read(bytes(data))
    except struct.error as e:  # every offset is checked first; this is a safety net
        raise ImageFormatError(f"corrupt image: {e}") from None


def _read(data: bytes) -> Inode:
    reader = _Reader(data)
    root, entries = reader.load(reader.root_nid)
    if root is _SKIP or not root.is_dir():
        raise ImageFormatError("the root inode is not a directory")
    reader.nodes[reader.root_nid] = root
    stack = [(root, iter(entries))]
    while stack:
        parent, it = stack[-1]
        item = next(it, None)
        if item is None:
            stack.pop()
            continue
        name, nid = item
        child = reader.nodes.get(nid)
        if child is None:
            child, child_entries = reader.load(nid)
            reader.nodes[nid] = child
            if child.is_dir():
                stack.append((child, iter(child_entries)))
        elif child.is_dir():
            raise ImageFormatError(f"directory inode {nid} is linked more than once")
        if child is _SKIP:
            continue
        assert parent.children is not None
        if name in parent.children:
            raise ImageFormatError(f"duplicate name {name!r} in a directory")
        parent.children[name] = child
    return root
