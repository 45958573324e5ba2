"""Layout and emission of a composefs EROFS image (lcfs-writer-erofs.c, composefs 1.0.8).

Every rule here reproduces a decision of the C writer, because the image digest is a
compatibility contract: inode placement and padding, when an inode is compact, which
xattrs are shared and in which order, when a tail is inlined, where data blocks go.
"""

from __future__ import annotations

import stat
from bisect import bisect_left
from collections import Counter
from itertools import accumulate, chain

from cfsboot.erofs import format as fmt
from cfsboot.erofs.xxhash import xxh32
from cfsboot.tree import Inode

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
_PACK_COMPACT = fmt.INODE_COMPACT.pack
_PACK_EXTENDED = fmt.INODE_EXTENDED.pack
_PACK_DIRENT = fmt.DIRENT.pack
_PACK_XHDR = fmt.XATTR_IBODY_HEADER.pack
_PACK_XENTRY = fmt.XATTR_ENTRY.pack
_FMT_COMPACT_PLAIN = fmt.i_format(fmt.DataLayout.FLAT_PLAIN, False)
_FMT_COMPACT_INLINE = fmt.i_format(fmt.DataLayout.FLAT_INLINE, False)
_FMT_COMPACT_CHUNK = fmt.i_format(fmt.DataLayout.CHUNK_BASED, False)
_FMT_EXT_PLAIN = fmt.i_format(fmt.DataLayout.FLAT_PLAIN, True)
_FMT_EXT_INLINE = fmt.i_format(fmt.DataLayout.FLAT_INLINE, True)
_FMT_EXT_CHUNK = fmt.i_format(fmt.DataLayout.CHUNK_BASED, True)
_ZEROS = bytes(BLK)
_IFREG = stat.S_IFREG
# Largest size with a single chunk: chunks grow with the file up to 2**(12 + 31) bytes.
_ONE_CHUNK_MAX = 1 << (fmt.BLOCK_BITS + fmt.CHUNK_FORMAT_BLKBITS_MASK)
_IFDIR = stat.S_IFDIR
_IFLNK = stat.S_IFLNK
_IFCHR = stat.S_IFCHR
_IFBLK = stat.S_IFBLK


class Node:
    """One inode of the image being built: a private, rewritten copy of an input `Inode`."""

    __slots__ = (
        "src",
        "parent",
        "mode",
        "uid",
        "gid",
        "mtime",
        "mtime_nsec",
        "nlink",
        "size",
        "rdev",
        "xattrs",
        "content",
        "symlink",
        "external",
        "is_dir",
        "is_whiteout",
        "entries",
        "nid",
    )

    def __init__(self, src: Inode | None, parent: Node | None) -> None:
        self.src = src
        self.parent = parent
        if src is None:
            self.mode = 0
            self.uid = self.gid = self.mtime = self.mtime_nsec = self.size = self.rdev = 0
            self.nlink = 1
        else:
            self.mode = src.mode
            self.uid = src.uid
            self.gid = src.gid
            self.mtime = src.mtime
            self.mtime_nsec = src.mtime_nsec
            self.nlink = src.nlink
            self.size = src.size
            self.rdev = src.rdev
        self.xattrs: dict[bytes, bytes] = {}
        self.content: bytes | None = None
        self.symlink: bytes | None = None
        self.external = False
        self.is_dir = False
        self.is_whiteout = False
        # (name, node, canonical): canonical is False for extra names of a hardlinked inode
        self.entries: list[tuple[bytes, Node, bool]] = []
        self.nid = 0


def _xattr_index(key: bytes) -> tuple[int, bytes]:
    for prefix, index in fmt.WRITER_XATTR_PREFIXES:
        if key.startswith(prefix):
            return index, key[len(prefix) :]
    return 0, key


class _XattrCodec:
    """Encoded entries and bloom-filter bits of xattr names, cached: names repeat a lot."""

    def __init__(self) -> None:
        self._names: dict[bytes, tuple[int, bytes, int]] = {}

    def name(self, key: bytes) -> tuple[int, bytes, int]:
        """(index, suffix, filter bit mask) of an xattr name."""
        got = self._names.get(key)
        if got is None:
            if not key or len(key) > 255:
                raise ValueError(f"invalid xattr name {key!r}")
            index, suffix = _xattr_index(key)
            bit = xxh32(suffix, fmt.XATTR_FILTER_SEED + index) & (fmt.XATTR_FILTER_BITS - 1)
            got = (index, suffix, 1 << bit)
            self._names[key] = got
        return got

    def entry(self, key: bytes, value: bytes) -> bytes:
        """An xattr entry, padded to 4 bytes."""
        index, suffix, _ = self.name(key)
        if len(value) > _U16:
            raise ValueError(f"xattr {key!r} value longer than 65535 bytes")
        raw = _PACK_XENTRY(len(suffix), index, len(value)) + suffix + value
        pad = -len(raw) & 3
        return raw + _ZEROS[:pad] if pad else raw


def _chunking(size: int) -> tuple[int, int]:
    """(chunk bits, chunk count) of an external file (erofs_compute_chunking)."""
    chunkbits = (size - 1).bit_length() if size > 1 else 0
    chunkbits = max(chunkbits, fmt.BLOCK_BITS)
    chunkbits = min(chunkbits, fmt.CHUNK_FORMAT_BLKBITS_MASK + fmt.BLOCK_BITS)
    chunksize = 1 << chunkbits
    return chunkbits, (size + chunksize - 1) // chunksize


# A block of directory entries: their names and their inodes, in name order.
_Chunk = tuple[list[bytes], list[Node]]


def _dir_chunks(n: Node) -> tuple[list[_Chunk], int]:
    """The directory's entries ('.' and '..' included, name order) split into blocks, and
    the byte size of the last one."""
    parent = n.parent if n.parent is not None else n
    names = [e[0] for e in n.entries]
    nodes = [e[1] for e in n.entries]
    # entries are sorted by name; put "." and ".." where strcmp order puts them
    i = bisect_left(names, b".")
    names.insert(i, b".")
    nodes.insert(i, n)
    i = bisect_left(names, b"..")
    names.insert(i, b"..")
    nodes.insert(i, parent)
    total = _DIRENT_LEN * len(names) + sum(map(len, names))
    if total <= BLK:
        return [(names, nodes)], total
    chunks: list[_Chunk] = []
    start = 0
    used = 0
    for k, name in enumerate(names):
        ln = _DIRENT_LEN + len(name)
        if used + ln > BLK:
            chunks.append((names[start:k], nodes[start:k]))
            start = k
            used = 0
        used += ln
    chunks.append((names[start:], nodes[start:]))
    return chunks, used


def _dirent_block(chunk: _Chunk) -> bytes:
    names, nodes = chunk
    ft = _FT
    offsets = accumulate(map(len, names), initial=_DIRENT_LEN * len(names))
    dirents = [
        _PACK_DIRENT(c.nid, off, ft.get(c.mode & _S_IFMT, 0))
        for c, off in zip(nodes, offsets, strict=False)
    ]
    return b"".join(dirents) + b"".join(names)


class _XattrPlan:
    """Per distinct (name, value): shared or not, its encoded entry, its filter bit."""

    def __init__(self, counts: Counter[tuple[bytes, bytes]]) -> None:
        codec = _XattrCodec()
        # Shared xattrs: every (name, value) used more than once, in descending order
        # (xattrs_ht_sort in lcfs-writer-erofs.c).
        shared = sorted(
            (kv for kv, count in counts.items() if count > 1),
            key=lambda kv: (kv[0], len(kv[1]), kv[1]),
            reverse=True,
        )
        self.shared_offset: dict[tuple[bytes, bytes], int] = {}
        blob: list[bytes] = []
        off = 0
        for kv in shared:
            e = codec.entry(*kv)
            self.shared_offset[kv] = off
            blob.append(e)
            off += len(e)
        self.shared_blob = b"".join(blob)
        # kv -> (shared offset or -1, entry (None if shared), filter bit)
        self.info: dict[tuple[bytes, bytes], tuple[int, bytes | None, int]] = {}
        info = self.info
        shared_get = self.shared_offset.get
        name_of = codec.name
        pack = _PACK_XENTRY
        zeros = _ZEROS
        for kv in counts:
            key, value = kv
            index, suffix, bit = name_of(key)
            soff = shared_get(kv, -1)
            if soff >= 0:
                info[kv] = (soff, None, bit)
                continue
            if len(value) > _U16:
                raise ValueError(f"xattr {key!r} value longer than 65535 bytes")
            raw = pack(len(suffix), index, len(value)) + suffix + value
            pad = -len(raw) & 3
            info[kv] = (-1, raw + zeros[:pad] if pad else raw, bit)
        self.codec = codec


def lay_out_and_emit(nodes: list[Node], version: int) -> bytes:
    """The image bytes for inodes in breadth-first order (nodes[0] is the root).

    Directory nlinks must be set already (2 + subdirectories, as lcfs_compute_tree does).
    """
    root = nodes[0]
    min_sec, min_nsec = min([(n.mtime, n.mtime_nsec) for n in nodes])
    sorted_xattrs: list[list[tuple[bytes, bytes]] | None] = [
        sorted(n.xattrs.items()) if n.xattrs else None for n in nodes
    ]
    counts = Counter(chain.from_iterable(filter(None, sorted_xattrs)))
    has_acl = any(kv[0] in fmt.ACL_XATTRS for kv in counts)
    plan = _XattrPlan(counts)
    info = plan.info
    shared_size = len(plan.shared_blob)

    # Pass 1: place the inodes (compute_erofs_inodes).
    count = len(nodes)
    n_blocks_l = [0] * count
    tail_l = [0] * count
    ipad_l = [0] * count
    compact_l = [False] * count
    xattr_l: list[tuple[int, list[tuple[bytes, bytes]], bytes] | None] = [None] * count
    chunk_l: dict[int, tuple[int, int]] = {}
    dir_chunks: dict[int, list[_Chunk]] = {}
    n_data_blocks = 0
    pos = fmt.SUPERBLOCK_OFFSET + fmt.SUPERBLOCK.size
    max_shared = fmt.XATTR_LONG_PREFIX
    for i, n in enumerate(nodes):
        ftype = n.mode & _S_IFMT
        n_blocks = 0
        tail = 0
        size = n.size
        if ftype == _IFREG:
            if size > 0:
                if n.content is not None:
                    n_blocks, tail = divmod(size, BLK)
                    if tail > HALF_BLK:
                        n_blocks += 1
                        tail = 0
                elif size <= _ONE_CHUNK_MAX:  # the common case, inlined: one chunk
                    bits = (size - 1).bit_length()
                    chunk_l[i] = (bits if bits > fmt.BLOCK_BITS else fmt.BLOCK_BITS, 1)
                    tail = 4
                else:
                    chunking = _chunking(size)
                    if chunking[1] > fmt.MAX_NONINLINE_CHUNKS:
                        raise ValueError(f"file of {size} bytes is too big for composefs")
                    chunk_l[i] = chunking
                    tail = chunking[1] * 4
        elif ftype == _IFDIR:
            chunks, tail = _dir_chunks(n)
            dir_chunks[i] = chunks
            n_blocks = len(chunks) - 1
            if tail > HALF_BLK:
                n_blocks += 1
                tail = 0
            size = n_blocks * BLK + tail
        elif ftype == _IFLNK:
            assert n.symlink is not None
            tail = len(n.symlink)
        compact = (
            n.mtime == min_sec
            and n.mtime_nsec == min_nsec
            and n.nlink <= _U16
            and n.uid <= _U16
            and n.gid <= _U16
            and size <= _U32
        )
        compact_l[i] = compact
        non_tail = 32 if compact else 64

        node_items = sorted_xattrs[i]
        if node_items is not None:
            shared_kvs: list[tuple[bytes, bytes]] = []
            inline: list[bytes] = []
            filt = 0
            for kv in node_items:
                soff, entry, bit = info[kv]
                filt |= bit
                if soff >= 0 and len(shared_kvs) < max_shared:
                    shared_kvs.append(kv)
                else:
                    inline.append(entry if entry is not None else plan.codec.entry(*kv))
            blob = b"".join(inline)
            xattr_size = 12 + 4 * len(shared_kvs) + len(blob)
            xattr_l[i] = (fmt.XATTR_FILTER_DEFAULT & ~filt, shared_kvs, blob)
            non_tail += xattr_size

        ppos = pos
        pos = (pos + 31) & ~31
        # Pad before the inode so that its inline tail does not cross a block boundary
        # (compute_erofs_inode_padding_for_tail).
        if ftype == _IFLNK:
            total = non_tail + tail
            if total >= BLK:
                n_blocks += 1
                tail = 0
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
                    pos = (pos + BLK - 1) & ~(BLK - 1)
                else:
                    pos += extra
        ipad_l[i] = pos - ppos
        if n_blocks:
            n_blocks_l[i] = n_blocks
            n_data_blocks += n_blocks
        tail_l[i] = tail
        n.nid = pos >> 5
        pos += non_tail + tail
    inodes_end = (pos + 31) & ~31

    data_start = (inodes_end + shared_size + BLK - 1) & ~(BLK - 1)
    xattr_base = inodes_end % BLK
    shared_id = {
        kv: fmt.XATTR_SHARED_ID.pack((xattr_base + off) // 4)
        for kv, off in plan.shared_offset.items()
    }

    # Pass 2: emit.
    out: list[bytes] = []
    put = out.append
    header_flags = fmt.COMPOSEFS_FLAG_HAS_ACL if has_acl else 0
    put(
        fmt.COMPOSEFS_HEADER.pack(
            fmt.COMPOSEFS_MAGIC, fmt.COMPOSEFS_HEADER_VERSION, header_flags, version
        )
    )
    put(bytes(fmt.SUPERBLOCK_OFFSET - fmt.COMPOSEFS_HEADER.size))
    if root.nid > _U16:
        raise ValueError("root inode placed beyond nid 65535")
    put(
        fmt.SUPERBLOCK.pack(
            fmt.EROFS_MAGIC,
            0,
            fmt.FEATURE_COMPAT_MTIME | fmt.FEATURE_COMPAT_XATTR_FILTER,
            fmt.BLOCK_BITS,
            0,
            root.nid,
            count,
            min_sec & _U64,
            min_nsec,
            data_start // BLK + n_data_blocks,
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
    )
    current_end = data_start
    data: list[bytes] = []
    put_data = data.append
    zeros = _ZEROS
    for i, n in enumerate(nodes):
        ipad = ipad_l[i]
        if ipad:
            put(zeros[:ipad])
        ftype = n.mode & _S_IFMT
        n_blocks = n_blocks_l[i]
        tail = tail_l[i]
        i_u = 0
        tail_bytes = b""
        size = 0
        fmt_code = _FMT_COMPACT_INLINE if tail else _FMT_COMPACT_PLAIN
        if ftype == _IFREG:
            size = n.size
            if n_blocks:
                i_u = current_end // BLK
                current_end += BLK * n_blocks
                # C writes only the first block here; more than one cannot happen (<= 5000 B).
                assert n_blocks == 1
                content = n.content
                if content is None:
                    put_data(_NULL_BLOCK)
                else:
                    put_data(content[:BLK])
                    if len(content) < BLK:
                        put_data(zeros[: BLK - len(content)])
            chunk_info = chunk_l.get(i)
            if chunk_info is not None:
                fmt_code = _FMT_COMPACT_CHUNK
                # chunk_info overlays only the low 16 bits of the i_u union
                i_u = (i_u & 0xFFFF0000) | (chunk_info[0] - fmt.BLOCK_BITS)
                if tail:
                    tail_bytes = _NULL_PTR * chunk_info[1]
            elif tail:
                assert n.content is not None
                tail_bytes = n.content[size - tail :]
        elif ftype == _IFDIR:
            size = n_blocks * BLK + tail
            chunks = dir_chunks[i]
            if n_blocks:
                i_u = current_end // BLK
                current_end += BLK * n_blocks
                for chunk in chunks[:n_blocks]:
                    block = _dirent_block(chunk)
                    put_data(block)
                    put_data(zeros[: BLK - len(block)])
            if tail:
                tail_bytes = _dirent_block(chunks[-1])
        elif ftype == _IFLNK:
            symlink = n.symlink
            assert symlink is not None
            if n_blocks:
                size = n.size
                i_u = current_end // BLK
                current_end += BLK * n_blocks
                put_data(symlink[:BLK])
                put_data(zeros[: BLK - min(len(symlink), BLK)])
            else:
                size = tail
                tail_bytes = symlink
        elif ftype == _IFCHR or ftype == _IFBLK:
            i_u = n.rdev & _U32
        xattr = xattr_l[i]
        if xattr is not None:
            icount = (4 * len(xattr[1]) + len(xattr[2])) // 4 + 1
            if icount > _U16:
                raise ValueError("too many xattrs on one inode")
        else:
            icount = 0
        if compact_l[i]:
            put(
                _PACK_COMPACT(
                    fmt_code,
                    icount,
                    n.mode & _U16,
                    n.nlink & _U16,
                    size & _U32,
                    0,
                    i_u,
                    i,
                    n.uid,
                    n.gid,
                )
            )
        else:
            put(
                _PACK_EXTENDED(
                    fmt_code | 1,
                    icount,
                    n.mode & _U16,
                    size,
                    i_u,
                    i,
                    n.uid & _U32,
                    n.gid & _U32,
                    n.mtime & _U64,
                    n.mtime_nsec,
                    n.nlink & _U32,
                )
            )
        if xattr is not None:
            filt, shared_kvs, blob = xattr
            put(_PACK_XHDR(filt, len(shared_kvs)))
            if shared_kvs:
                put(b"".join([shared_id[kv] for kv in shared_kvs]))
            put(blob)
        if tail_bytes:
            put(tail_bytes)
    # inodes end on a slot boundary, then the shared xattrs, then the data blocks
    body = b"".join(out)
    pad = inodes_end - len(body)
    assert pad >= 0
    image = b"".join(
        [body, bytes(pad), plan.shared_blob, bytes(data_start - inodes_end - shared_size), *data]
    )
    assert len(image) == data_start + n_data_blocks * BLK, "layout and emission disagree"
    assert current_end == len(image)
    return image
