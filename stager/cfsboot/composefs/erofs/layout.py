"""Layout and emission of a composefs EROFS image (lcfs-writer-erofs.c, composefs 1.0.8).

Every rule here reproduces a decision of the C writer, because the image digest is a
compatibility contract: inode placement and padding, when an inode is compact, which
xattrs are shared and in which order, when a tail is inlined, where data blocks go.

The inode table is made in one pass over the inodes, as a list of byte strings. What
depends on later inodes is patched into the whole image afterwards: directory entries (the
nids of children placed later), the ids of shared xattrs (they count from the end of the
inode table) and the block addresses of data blocks (they follow the shared xattrs).

Built as native code with mypyc when it can be (see `native.py`); the same source runs as
pure Python too.
"""

from __future__ import annotations

import struct
import sys
from typing import Final

from cfsboot.composefs.erofs import dirents
from cfsboot.composefs.erofs import format as fmt
from cfsboot.composefs.erofs.dirents import Directory
from cfsboot.composefs.erofs.xattrs import OWN_METACOPY, XattrPlan
from cfsboot.composefs.limits import CHUNK_SIZE_MAX, INLINE_CONTENT_MAX, MAX_NONINLINE_CHUNKS
from cfsboot.composefs.tree import Inode

__all__ = ["Directory", "lay_out_and_emit"]

BLK: Final = fmt.BLOCK_SIZE
HALF_BLK: Final = BLK // 2
_S_IFMT: Final = 0o170000
_IFREG: Final = 0o100000
_IFDIR: Final = 0o040000
_IFLNK: Final = 0o120000
_IFCHR: Final = 0o020000
_IFBLK: Final = 0o060000
_IFIFO: Final = 0o010000
_IFSOCK: Final = 0o140000
_U16: Final = 0xFFFF
_U32: Final = 0xFFFFFFFF
_U64: Final = 0xFFFFFFFFFFFFFFFF
_BLOCK_BITS: Final = fmt.BLOCK_BITS
# EROFS dirent file type by the file type bits of a mode, shifted down (mode >> 12)
_FT: Final = [0] * 16
for _mode, _ft in fmt.FILE_TYPE_OF_MODE.items():
    _FT[_mode >> 12] = int(_ft)
_NULL_BLOCK: Final = fmt.CHUNK_ADDR.pack(fmt.NULL_ADDR) * (BLK // 4)
_NULL_PTR: Final = fmt.CHUNK_ADDR.pack(fmt.NULL_ADDR)
_PACK_U32: Final = fmt.CHUNK_ADDR.pack_into
_LITTLE: Final = sys.byteorder == "little"
_FMT_INLINE: Final = 2 << 1  # i_format(FLAT_INLINE, compact)
_FMT_CHUNK: Final = 4 << 1  # i_format(CHUNK_BASED, compact)
_EXTENDED: Final = fmt.INODE_LAYOUT_EXTENDED
_I_U: Final = 16  # offset of i_u in both inode layouts
_XATTR_IDS: Final = 12  # offset of the shared xattr ids in an inode's xattrs

assert fmt.DIRENT.size == 12
assert fmt.i_format(fmt.DataLayout.FLAT_INLINE, False) == _FMT_INLINE
assert fmt.i_format(fmt.DataLayout.CHUNK_BASED, False) == _FMT_CHUNK


def _chunking(size: int) -> tuple[int, int]:
    """(chunk bits, chunk count) of an external file (erofs_compute_chunking)."""
    chunkbits = (size - 1).bit_length() if size > 1 else 0
    chunkbits = max(chunkbits, _BLOCK_BITS)
    chunkbits = min(chunkbits, fmt.CHUNK_FORMAT_BLKBITS_MASK + _BLOCK_BITS)
    chunksize = 1 << chunkbits
    return chunkbits, (size + chunksize - 1) // chunksize


# What the type of an inode decides (`_Table.data`): i_format data layout, i_u, size,
# nlink, inline tail size and bytes, data blocks and the first one's bytes, and whether
# the size fits a compact inode.
_Data = tuple[int, int, int, int, int, bytes, int, bytes, bool]


class _Table:
    """The inode table being written, and what is patched in once it ends."""

    def __init__(
        self, count: int, plan: XattrPlan, dirs: dict[int, Directory], min_sec: int, min_nsec: int
    ) -> None:
        self.plan = plan
        self.dirs = dirs
        self.min_sec = min_sec
        self.min_nsec = min_nsec
        # End of the inode table so far (with the last inode's inline tail, if any).
        self.end = fmt.SUPERBLOCK_OFFSET + fmt.SUPERBLOCK.size
        # The image up to `written` bytes, packed in place: room for the header and
        # superblock (written last), the inodes, and zeros between them (where directory
        # tails go later). Grown by doubling (a realloc, not a copy, at these sizes).
        self.buf = bytearray(max(self.end * 2, count * 96))
        self.written = self.end
        self.nids = [0] * count
        self.fts = [0] * count
        # Directories: (index, offset of the inline entries or -1, first data block or -1).
        self.dir_fills: list[tuple[int, int, int]] = []
        # Inodes that own data blocks: (offset, first block, low 16 bits of i_u to keep or -1).
        self.block_inodes: list[tuple[int, int, int]] = []
        self.blocks: list[tuple[int, bytes]] = []  # first data block of files and symlinks
        self.n_data_blocks = 0
        # Shared xattr ids to write: where, and the xattr's offset in the shared blob in
        # 4-byte units.
        self.id_pos: list[int] = []
        self.id_units: list[int] = []
        # pack_into of an inode, its xattrs and its inline tail, by their shape
        self.packers: dict[int, struct.Struct] = {}
        self.last_key = -1
        self.last_packer = struct.Struct("")

    def add(self, i: int, x: Inode) -> None:
        """Place and write inode `i` (the root is 0)."""
        mode = x.mode
        ftype = mode & _S_IFMT
        if (x.uid | x.gid | x.nlink | x.mtime_nsec | x.rdev) >> 32:
            raise ValueError("uid, gid, nlink, rdev and mtime nsec must fit in 32 bits")
        plan = self.plan
        sid = plan.set_ids[i]
        layout, i_u, size, nlink, tail, tail_bytes, n_blocks, block_data, size_fits = self.data(
            i, x, ftype
        )
        mc_off = rd_off = -1
        if layout == _FMT_CHUNK:
            body, icount, shared, mc_off, rd_off = self._external_xattrs(x, sid)
        else:
            body = plan.set_body[sid]
            icount = plan.set_icount[sid]
            shared = plan.set_shared[sid]
        self.fts[i] = _FT[ftype >> 12]
        compact = (
            x.mtime == self.min_sec
            and x.mtime_nsec == self.min_nsec
            and nlink <= _U16
            and x.uid <= _U16
            and x.gid <= _U16
            and size <= _U32
            and size_fits
        )
        non_tail = (32 if compact else 64) + len(body)
        pos = (self.end + 31) & ~31
        # Pad before the inode so that its inline tail does not cross a block boundary
        # (compute_erofs_inode_padding_for_tail).
        if ftype == _IFLNK:
            total = non_tail + tail
            if total >= BLK:
                n_blocks = 1
                tail = 0
                block_data = tail_bytes[:BLK]
                tail_bytes = b""
            if pos // BLK != (pos + total - 1) // BLK:
                pos = (pos + BLK - 1) & ~(BLK - 1)
        elif tail:
            remainder = BLK - ((pos + non_tail) % BLK)
            if remainder < tail:
                extra = (remainder + 31) & ~31
                remainder = BLK - ((pos + non_tail + extra) % BLK)
                if tail > remainder:
                    n_blocks += 1
                    tail = 0
                    tail_bytes = b""
                    if ftype == _IFREG:
                        content = x.content
                        block_data = content[:BLK] if content else _NULL_BLOCK
                    pos = (pos + BLK - 1) & ~(BLK - 1)
                else:
                    pos += extra
        if tail and not layout:
            layout = _FMT_INLINE
        self._blocks(i, ftype, pos, non_tail, tail, n_blocks, block_data, layout, i_u)
        self.nids[i] = pos >> 5
        if shared:
            ids = pos + (32 if compact else 64) + _XATTR_IDS
            for off in shared:
                if off < 0:  # the file's own metacopy or redirect
                    off = mc_off if off == OWN_METACOPY else rd_off
                self.id_pos.append(ids)
                self.id_units.append(off >> 2)
                ids += 4
        self._pack(i, x, pos, compact, layout, icount, nlink, size, i_u, body, tail_bytes)
        self.end = pos + non_tail + tail

    def data(self, i: int, x: Inode, ftype: int) -> _Data:
        """What the type of inode `i` decides about it (see _Data)."""
        if ftype == _IFREG:
            content = x.content
            size = x.size
            if content:
                return _inline_content(content, x.nlink)
            if size > 0:
                if size <= CHUNK_SIZE_MAX:  # the common case: one chunk
                    bits = (size - 1).bit_length()
                    i_u = bits - _BLOCK_BITS if bits > _BLOCK_BITS else 0
                    return _FMT_CHUNK, i_u, size, x.nlink, 4, _NULL_PTR, 0, b"", True
                bits, n_chunks = _chunking(size)
                if n_chunks > MAX_NONINLINE_CHUNKS:
                    raise ValueError(f"file of {size} bytes is too big for composefs")
                nulls = _NULL_PTR * n_chunks
                return (
                    _FMT_CHUNK,
                    bits - _BLOCK_BITS,
                    size,
                    x.nlink,
                    4 * n_chunks,
                    nulls,
                    0,
                    b"",
                    True,
                )
            return 0, 0, size, x.nlink, 0, b"", 0, b"", True
        if ftype == _IFDIR:
            d = self.dirs[i]
            n_dir_blocks, tail = dirents.block_sizes(d)
            n_blocks = n_dir_blocks - 1
            if tail > HALF_BLK:
                n_blocks += 1
                tail = 0
            return 0, 0, n_blocks * BLK + tail, d.nlink, tail, b"", n_blocks, b"", True
        if ftype == _IFLNK:
            symlink = x.payload
            if not symlink:
                raise ValueError("symlink with an empty target")
            return 0, 0, len(symlink), x.nlink, len(symlink), symlink, 0, b"", True
        if ftype == _IFCHR or ftype == _IFBLK or ftype == _IFIFO or ftype == _IFSOCK:
            i_u = x.rdev if ftype == _IFCHR or ftype == _IFBLK else 0
            # C stores no size for these, but a size past 32 bits still makes the inode
            # extended.
            return 0, i_u, 0, x.nlink, 0, b"", 0, b"", x.size <= _U32
        raise ValueError(f"invalid file type in mode {x.mode:o}")

    def _external_xattrs(self, x: Inode, sid: int) -> tuple[bytes, int, list[int], int, int]:
        """(xattr body, i_xattr_icount, shared offsets, offset of its own metacopy, of its
        own redirect) of an external file: its set's xattrs and its own metacopy and
        redirect (offsets -1 when not shared)."""
        digest = x.digest or b""
        payload = x.payload or b""
        t, mc_off, rd_off = self.plan.external(sid, digest, payload)
        body = b"".join(
            (
                t.before,
                digest if t.digest_inline else b"",
                t.middle,
                payload if t.payload_inline else b"",
                t.after,
            )
        )
        return body, t.icount, t.shared, mc_off, rd_off

    def _blocks(
        self,
        i: int,
        ftype: int,
        pos: int,
        non_tail: int,
        tail: int,
        n_blocks: int,
        block_data: bytes,
        layout: int,
        i_u: int,
    ) -> None:
        """Note the data blocks of inode `i` (placed after the inode table)."""
        if n_blocks:
            if ftype == _IFDIR:
                self.dir_fills.append((i, pos + non_tail if tail else -1, self.n_data_blocks))
            else:
                # C writes only the first block here; more than one cannot happen (<= 5000 B).
                assert n_blocks == 1
                self.blocks.append((self.n_data_blocks, block_data))
            self.block_inodes.append((pos, self.n_data_blocks, i_u if layout == _FMT_CHUNK else -1))
            self.n_data_blocks += n_blocks
        elif ftype == _IFDIR:
            self.dir_fills.append((i, pos + non_tail, -1))

    def _pack(
        self,
        i: int,
        x: Inode,
        pos: int,
        compact: bool,
        layout: int,
        icount: int,
        nlink: int,
        size: int,
        i_u: int,
        body: bytes,
        tail_bytes: bytes,
    ) -> None:
        key = (len(body) << 13 | len(tail_bytes)) << 1 | compact
        if key == self.last_key:  # inodes of one shape often come in a row
            packer = self.last_packer
        else:
            got = self.packers.get(key)
            if got is None:
                got = self.packers[key] = struct.Struct(
                    (fmt.INODE_COMPACT.format if compact else fmt.INODE_EXTENDED.format)
                    + f"{len(body)}s{len(tail_bytes)}s"
                )
            packer = self.last_packer = got
            self.last_key = key
        end = pos + packer.size
        buf = self.buf
        if end > len(buf):
            buf.extend(bytes(max(end, 2 * len(buf)) - len(buf)))
        mode = x.mode & _U16
        if compact:
            packer.pack_into(
                buf, pos, layout, icount, mode, nlink, size, 0, i_u, i, x.uid, x.gid, body,
                tail_bytes,
            )  # fmt: skip
        else:
            packer.pack_into(
                buf, pos, layout | _EXTENDED, icount, mode, size, i_u, i, x.uid, x.gid,
                x.mtime & _U64, x.mtime_nsec, nlink, body, tail_bytes,
            )  # fmt: skip
        self.written = end


def put_u32s(
    buf: bytearray, where: list[int], values: list[int], add: int, little: bool = _LITTLE
) -> None:
    """Write values[k] + add at where[k] (a multiple of 4) as a little-endian u32, for
    every k. On a little-endian host through a u32 view of the buffer, which costs a
    third of a pack_into per value (there are two per external file)."""
    n = len(where)
    if little:
        words = memoryview(buf).cast("I")
        for k in range(n):
            words[where[k] >> 2] = values[k] + add
        words.release()
    else:
        for k in range(n):
            _PACK_U32(buf, where[k], values[k] + add)


def _inline_content(content: bytes, nlink: int) -> _Data:
    """The data of a regular file with inline content: a tail, or one block and a tail."""
    size = len(content)
    if size > INLINE_CONTENT_MAX:
        raise ValueError(f"inline content of {size} bytes exceeds {INLINE_CONTENT_MAX}")
    if size <= HALF_BLK:
        return 0, 0, size, nlink, size, content, 0, b"", True
    n_blocks, tail = divmod(size, BLK)
    if tail > HALF_BLK:
        n_blocks += 1
        tail = 0
    tail_bytes = content[size - tail :] if tail else b""
    return 0, 0, size, nlink, tail, tail_bytes, n_blocks, content[:BLK], True


def lay_out_and_emit(
    order: list[Inode],
    dirs: dict[int, Directory],
    final_xattrs: dict[int, dict[bytes, bytes]],
    version: int,
) -> bytearray:
    """The image bytes for inodes in breadth-first order (order[0] is the root).

    `final_xattrs` are the xattrs of the nodes the overlay rewrite changed (by index), as
    they go into the image; every other node's are its input xattrs, escaped, plus the
    metacopy and redirect xattrs of an external file.
    """
    count = len(order)
    min_sec = min([x.mtime for x in order])
    min_nsec = min([x.mtime_nsec for x in order if x.mtime == min_sec])
    externals = [x for x in order if x.mode & _S_IFMT == _IFREG and not x.content and x.size > 0]
    plan = XattrPlan(order, final_xattrs, externals)
    table = _Table(count, plan, dirs, min_sec, min_nsec)
    for i in range(count):
        table.add(i, order[i])
    return _finish(table, count, version)


def _finish(table: _Table, count: int, version: int) -> bytearray:
    """The whole image, once every inode is in the table: shared xattrs, their ids, data
    blocks and their addresses, directory entries, the header and the superblock."""
    plan = table.plan
    shared_size = len(plan.shared_blob)
    inodes_end = (table.end + 31) & ~31
    data_start = (inodes_end + shared_size + BLK - 1) & ~(BLK - 1)
    first_block = data_start // BLK
    image_size = data_start + table.n_data_blocks * BLK
    # The buffer the inodes were packed in, made the image's size (the rest is zeros),
    # patched in place below and returned as it is (no copy of the image).
    buf = table.buf
    if len(buf) < image_size:
        buf.extend(bytes(image_size - len(buf)))
    else:
        del buf[image_size:]
    buf[inodes_end : inodes_end + shared_size] = plan.shared_blob

    base = (inodes_end % BLK) // 4  # shared xattr ids count 4-byte units from the block
    put_u32s(buf, table.id_pos, table.id_units, base)
    where = [pos + _I_U for pos, _, _ in table.block_inodes]
    addrs = [
        first_block + block if low < 0 else ((first_block + block) & 0xFFFF0000) | low
        for _, block, low in table.block_inodes
    ]
    put_u32s(buf, where, addrs, 0)
    for block, data in table.blocks:
        start = data_start + block * BLK
        buf[start : start + len(data)] = data
    for i, tail_off, block in table.dir_fills:
        d = table.dirs[i]
        n, _ = dirents.block_sizes(d)
        starts = [data_start + (block + k) * BLK for k in range(n)] if block >= 0 else []
        if tail_off >= 0:
            starts = starts[: n - 1] + [tail_off]
        dirents.write(buf, i, d, table.nids, table.fts, starts)

    root_nid = table.nids[0]
    if root_nid > _U16:
        raise ValueError("root inode placed beyond nid 65535")
    header_flags = fmt.COMPOSEFS_FLAG_HAS_ACL if plan.has_acl else 0
    fmt.COMPOSEFS_HEADER.pack_into(
        buf, 0, fmt.COMPOSEFS_MAGIC, fmt.COMPOSEFS_HEADER_VERSION, header_flags, version
    )
    fmt.SUPERBLOCK.pack_into(
        buf,
        fmt.SUPERBLOCK_OFFSET,
        fmt.EROFS_MAGIC,
        0,
        fmt.FEATURE_COMPAT_MTIME | fmt.FEATURE_COMPAT_XATTR_FILTER,
        fmt.BLOCK_BITS,
        0,
        root_nid,
        count,
        table.min_sec & _U64,
        table.min_nsec,
        first_block + table.n_data_blocks,
        (fmt.SUPERBLOCK_OFFSET + fmt.SUPERBLOCK.size) // BLK,
        inodes_end // BLK,
        b"",
        b"",
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
        0,
    )
    return buf
