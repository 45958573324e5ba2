"""Layout and emission of a composefs EROFS image (lcfs-writer-erofs.c, composefs 1.0.8).

Every rule here reproduces a decision of the C writer, because the image digest is a
compatibility contract: inode placement and padding, when an inode is compact, which
xattrs are shared and in which order, when a tail is inlined, where data blocks go.

The image is written in one pass over the inodes into a preallocated buffer. What depends
on later inodes is patched in afterwards: directory entries (the nids of children placed
later), the ids of shared xattrs (they count from the end of the inode table) and the block
addresses of data blocks (they follow the shared xattrs).
"""

from __future__ import annotations

import stat
import struct
from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate

from cfsboot.composefs.erofs import format as fmt
from cfsboot.composefs.erofs.xattrs import XattrPlan
from cfsboot.composefs.tree import Inode

BLK = fmt.BLOCK_SIZE
HALF_BLK = BLK // 2
_S_IFMT = 0o170000
_U16 = 0xFFFF
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF
_DIRENT_LEN = fmt.DIRENT.size
_FT = {k: int(v) for k, v in fmt.FILE_TYPE_OF_MODE.items()}
_NULL_BLOCK = fmt.CHUNK_ADDR.pack(fmt.NULL_ADDR) * (BLK // 4)
_NULL_PTR = fmt.CHUNK_ADDR.pack(fmt.NULL_ADDR)
_PACK_DIRENT = fmt.DIRENT.pack
_PACK_ID = fmt.XATTR_SHARED_ID.pack
_PACK_U32 = fmt.CHUNK_ADDR.pack_into
_FMT_COMPACT_INLINE = fmt.i_format(fmt.DataLayout.FLAT_INLINE, False)
_FMT_COMPACT_CHUNK = fmt.i_format(fmt.DataLayout.CHUNK_BASED, False)
_EXTENDED = fmt.INODE_LAYOUT_EXTENDED
_IFREG = stat.S_IFREG
# Largest size with a single chunk: chunks grow with the file up to 2**(12 + 31) bytes.
_ONE_CHUNK_MAX = 1 << (fmt.BLOCK_BITS + fmt.CHUNK_FORMAT_BLKBITS_MASK)
_IFDIR = stat.S_IFDIR
_IFLNK = stat.S_IFLNK
_IFCHR = stat.S_IFCHR
_IFBLK = stat.S_IFBLK
_IFIFO = stat.S_IFIFO
_IFSOCK = stat.S_IFSOCK
_I_U = 16  # offset of i_u in both inode layouts


class Directory:
    """A directory's entries: names in byte order and the inodes (indexes) they name."""

    __slots__ = ("parent", "names", "name_bytes", "first", "targets", "nlink")

    def __init__(
        self,
        parent: int,
        names: list[bytes],
        name_bytes: int,
        first: int,
        targets: list[int] | None,
        nlink: int,
    ) -> None:
        self.parent = parent  # index of '..'
        self.names = names
        self.name_bytes = name_bytes  # sum of the name lengths
        # Index of the first child placed in this directory; the children placed here
        # follow it. `targets` is None when every entry is a child placed here (names[k]
        # is inode first + k), else the index of each entry's inode (hardlinks).
        self.first = first
        self.targets = targets
        self.nlink = nlink  # 2 + subdirectories, as lcfs_compute_tree counts


def _chunking(size: int) -> tuple[int, int]:
    """(chunk bits, chunk count) of an external file (erofs_compute_chunking)."""
    chunkbits = (size - 1).bit_length() if size > 1 else 0
    chunkbits = max(chunkbits, fmt.BLOCK_BITS)
    chunkbits = min(chunkbits, fmt.CHUNK_FORMAT_BLKBITS_MASK + fmt.BLOCK_BITS)
    chunksize = 1 << chunkbits
    return chunkbits, (size + chunksize - 1) // chunksize


def _entries(index: int, d: Directory, nids: list[int], fts: list[int]) -> list[_Chunk]:
    """The directory's entries ('.' and '..' included, name order) as blocks of (names,
    nids, file types) that each fit in one block."""
    names = list(d.names)
    if d.targets is None:
        end = d.first + len(names)
        e_nids = nids[d.first : end]
        e_fts = fts[d.first : end]
    else:
        e_nids = [nids[t] for t in d.targets]
        e_fts = [fts[t] for t in d.targets]
    # entries are sorted by name; put "." and ".." where strcmp order puts them
    for name, target in ((b".", index), (b"..", d.parent)):
        i = bisect_left(names, name)
        names.insert(i, name)
        e_nids.insert(i, nids[target])
        e_fts.insert(i, fts[target])
    if _DIRENT_LEN * len(names) + d.name_bytes + 3 <= BLK:
        return [(names, e_nids, e_fts)]
    chunks: list[_Chunk] = []
    start = 0
    used = 0
    for k, name in enumerate(names):
        ln = _DIRENT_LEN + len(name)
        if used + ln > BLK:
            chunks.append((names[start:k], e_nids[start:k], e_fts[start:k]))
            start = k
            used = 0
        used += ln
    chunks.append((names[start:], e_nids[start:], e_fts[start:]))
    return chunks


def _dir_block_sizes(d: Directory) -> tuple[int, int]:
    """(number of blocks of entries, byte size of the last one) of a directory."""
    total = _DIRENT_LEN * (len(d.names) + 2) + d.name_bytes + 3
    if total <= BLK:
        return 1, total
    names = list(d.names)
    names.insert(bisect_left(names, b"."), b".")
    names.insert(bisect_left(names, b".."), b"..")
    count = 1
    used = 0
    for name in names:
        ln = _DIRENT_LEN + len(name)
        if used + ln > BLK:
            count += 1
            used = 0
        used += ln
    return count, used


# A block of directory entries: names, nids and file types, in name order.
_Chunk = tuple[list[bytes], list[int], list[int]]


def _dirent_block(chunk: _Chunk) -> bytes:
    names, nids, fts = chunk
    offsets = accumulate(map(len, names), initial=_DIRENT_LEN * len(names))
    return b"".join(map(_PACK_DIRENT, nids, offsets, fts)) + b"".join(names)


def lay_out_and_emit(
    order: list[Inode],
    dirs: dict[int, Directory],
    final_xattrs: dict[int, dict[bytes, bytes]],
    version: int,
) -> bytes:
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
    set_ids = plan.set_ids
    shared_size = len(plan.shared_blob)
    shared_digests = plan.shared_digests
    shared_payloads = plan.shared_payloads
    set_bodies: list[tuple[bytes, int, list[int] | None]] = []
    set_shared: list[list[tuple[bytes, bytes]]] = []
    for items in plan.sets:
        body, shared = plan.body(items)
        set_bodies.append((body, len(body) // 4 - 2 if body else 0, [] if shared else None))
        set_shared.append(shared)
    # Offsets of shared ids to patch once the inode table's end is known:
    # per set (in set_bodies), and (offset, shared pairs) of other nodes.
    id_patches: list[tuple[int, list[tuple[bytes, bytes]]]] = []
    # (set, digest length, payload length) of external files -> `XattrPlan.splice()`
    # and the set's list of id offsets to patch
    splices: dict[tuple[int, int, int], tuple[bytes, bytes, bytes, int, list[int] | None]] = {}

    nids = [0] * count
    fts = [0] * count
    # Directories (index, offset of the inline entries or -1, first data block) and the
    # block-owning inodes (offset, first data block, low 16 bits of i_u to keep or -1).
    dir_fills: list[tuple[int, int, int]] = []
    block_inodes: list[tuple[int, int, int]] = []
    blocks: list[tuple[int, bytes]] = []  # data blocks of files and symlinks
    n_data_blocks = 0

    pos = fmt.SUPERBLOCK_OFFSET + fmt.SUPERBLOCK.size
    cap = pos + 128 * count + BLK
    buf = bytearray(cap)
    # pack_into of an inode, its xattrs and its inline tail, by their shape
    packers: dict[int, Callable[..., None]] = {}
    ft_of = _FT
    for i, x in enumerate(order):
        mode = x.mode
        ftype = mode & _S_IFMT
        uid = x.uid
        gid = x.gid
        nlink = x.nlink
        nsec = x.mtime_nsec
        if (uid | gid | nlink | nsec | x.rdev) >> 32:
            raise ValueError("uid, gid, nlink, rdev and mtime nsec must fit in 32 bits")
        body, icount, patch = set_bodies[set_ids[i]]
        own_shared = None  # shared pairs of a body not taken from set_bodies
        tail = 0
        tail_bytes = b""
        n_blocks = 0
        i_u = 0
        layout = 0  # FLAT_PLAIN, or FLAT_INLINE with a tail
        block_data = b""
        size_u32 = True
        if ftype == _IFREG:
            size = x.size
            content = x.content
            if content:
                size = len(content)
                if size > fmt.INLINE_CONTENT_MAX:
                    raise ValueError(
                        f"inline content of {size} bytes exceeds {fmt.INLINE_CONTENT_MAX}"
                    )
                if size <= HALF_BLK:
                    tail = size
                    tail_bytes = content
                else:
                    n_blocks, tail = divmod(size, BLK)
                    if tail > HALF_BLK:
                        n_blocks += 1
                        tail = 0
                    block_data = content[:BLK]
                    tail_bytes = content[size - tail :] if tail else b""
            elif size > 0:
                layout = _FMT_COMPACT_CHUNK
                if size <= _ONE_CHUNK_MAX:  # the common case: one chunk
                    bits = (size - 1).bit_length()
                    i_u = bits - fmt.BLOCK_BITS if bits > fmt.BLOCK_BITS else 0
                    tail = 4
                    tail_bytes = _NULL_PTR
                else:
                    bits, n_chunks = _chunking(size)
                    if n_chunks > fmt.MAX_NONINLINE_CHUNKS:
                        raise ValueError(f"file of {size} bytes is too big for composefs")
                    i_u = bits - fmt.BLOCK_BITS
                    tail = 4 * n_chunks
                    tail_bytes = _NULL_PTR * n_chunks
                # The file's own metacopy and redirect xattrs join its set's.
                digest = x.digest or b""
                payload = x.payload
                sid = set_ids[i]
                if digest in shared_digests or payload in shared_payloads:
                    body, shared = plan.body(plan.full_items(x, sid))
                    icount = len(body) // 4 - 2
                    patch = None
                    own_shared = shared
                else:
                    if payload is None:
                        payload = b""
                    key = (sid, len(digest), len(payload))
                    splice = splices.get(key)
                    if splice is None:
                        splice = (*plan.splice(sid, len(digest), len(payload)), set_bodies[sid][2])
                        splices[key] = splice
                    before, middle, after, icount, patch = splice
                    body = b"".join((before, digest, middle, payload, after))
        elif ftype == _IFDIR:
            d = dirs[i]
            nlink = d.nlink
            n_dir_blocks, tail = _dir_block_sizes(d)
            n_blocks = n_dir_blocks - 1
            if tail > HALF_BLK:
                n_blocks += 1
                tail = 0
            size = n_blocks * BLK + tail
        elif ftype == _IFLNK:
            symlink = x.payload
            if not symlink:
                raise ValueError("symlink with an empty target")
            size = tail = len(symlink)
            tail_bytes = symlink
        elif ftype == _IFCHR or ftype == _IFBLK or ftype == _IFIFO or ftype == _IFSOCK:
            if ftype == _IFCHR or ftype == _IFBLK:
                i_u = x.rdev
            # C stores no size for these, but a size past 32 bits still makes the inode
            # extended.
            size = 0
            if x.size > _U32:
                size_u32 = False
        else:
            raise ValueError(f"invalid file type in mode {mode:o}")
        fts[i] = ft_of[ftype]

        compact = (
            x.mtime == min_sec
            and nsec == min_nsec
            and nlink <= _U16
            and uid <= _U16
            and gid <= _U16
            and size <= _U32
            and size_u32
        )
        inode_size = 32 if compact else 64
        non_tail = inode_size + len(body)

        pos = (pos + 31) & ~31
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
            layout = _FMT_COMPACT_INLINE
        end = pos + non_tail + tail
        if end > cap:
            buf += bytes(end - cap + cap // 2)
            cap = len(buf)
        nids[i] = pos >> 5

        if n_blocks:
            if ftype == _IFDIR:
                dir_fills.append((i, pos + non_tail if tail else -1, n_data_blocks))
            else:
                # C writes only the first block here; more than one cannot happen (<= 5000 B).
                assert n_blocks == 1
                blocks.append((n_data_blocks, block_data))
            block_inodes.append((pos, n_data_blocks, i_u if layout == _FMT_COMPACT_CHUNK else -1))
            n_data_blocks += n_blocks
        elif ftype == _IFDIR:
            dir_fills.append((i, pos + non_tail, -1))
        blen = non_tail - inode_size
        tlen = len(tail_bytes)
        skey = (blen << 13 | tlen) << 1 | compact
        packer = packers.get(skey)
        if packer is None:
            packer = packers[skey] = struct.Struct(
                (fmt.INODE_COMPACT.format if compact else fmt.INODE_EXTENDED.format)
                + f"{blen}s{tlen}s"
            ).pack_into
        if compact:
            packer(
                buf,
                pos,
                layout,
                icount,
                mode & _U16,
                nlink,
                size & _U32,
                0,
                i_u,
                i,
                uid,
                gid,
                body,
                tail_bytes,
            )
        else:
            packer(
                buf,
                pos,
                layout | _EXTENDED,
                icount,
                mode & _U16,
                size,
                i_u,
                i,
                uid,
                gid,
                x.mtime & _U64,
                nsec,
                nlink,
                body,
                tail_bytes,
            )
        if patch is not None:
            patch.append(pos + inode_size + 12)
        elif own_shared:
            id_patches.append((pos + inode_size + 12, own_shared))
        pos += non_tail + tail
    inodes_end = (pos + 31) & ~31

    data_start = (inodes_end + shared_size + BLK - 1) & ~(BLK - 1)
    first_block = data_start // BLK
    image_size = data_start + n_data_blocks * BLK
    if len(buf) < image_size:
        buf += bytes(image_size - len(buf))
    del buf[image_size:]  # what follows the inode table is still zeros
    buf[inodes_end : inodes_end + shared_size] = plan.shared_blob

    # Patch: shared xattr ids, block addresses, directory entries.
    xattr_base = inodes_end % BLK
    shared_offset = plan.shared_offset

    def ids(shared: list[tuple[bytes, bytes]]) -> bytes:
        return b"".join([_PACK_ID((xattr_base + shared_offset[kv]) // 4) for kv in shared])

    for (_, _, offsets), shared in zip(set_bodies, set_shared, strict=True):
        if offsets:
            value = ids(shared)
            n = len(value)
            for off in offsets:
                buf[off : off + n] = value
    for off, shared in id_patches:
        value = ids(shared)
        buf[off : off + len(value)] = value
    for off, block, low in block_inodes:
        addr = first_block + block
        _PACK_U32(buf, off + _I_U, addr if low < 0 else (addr & 0xFFFF0000) | low)
    for block, data in blocks:
        start = data_start + block * BLK
        buf[start : start + len(data)] = data
    for i, tail_off, block in dir_fills:
        chunks = _entries(i, dirs[i], nids, fts)
        if block >= 0:
            start = data_start + block * BLK
            for chunk in chunks[:-1] if tail_off >= 0 else chunks:
                data = _dirent_block(chunk)
                buf[start : start + len(data)] = data
                start += BLK
        if tail_off >= 0:
            data = _dirent_block(chunks[-1])
            buf[tail_off : tail_off + len(data)] = data

    root_nid = nids[0]
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
        min_sec & _U64,
        min_nsec,
        first_block + n_data_blocks,
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
    return bytes(buf)
