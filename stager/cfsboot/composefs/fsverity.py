"""fs-verity file digests computed in userspace, exactly as the kernel computes them.

The kernel's algorithm (Documentation/filesystems/fsverity.rst, "File digest
computation"), with the parameters composefs uses: 4096-byte Merkle tree
blocks, no salt. The data is split into 4096-byte blocks (the last one
zero-padded) and each is hashed; the concatenated hashes are again split into
zero-padded blocks and hashed, level by level, until one block remains; its
hash is the root. An empty file has an all-zero root. The file digest is the
hash of the 256-byte `struct fsverity_descriptor` holding the root.

Two implementations of the block hashing, same bytes: the C module `_verity`
(libcrypto; a whole buffer per call, the GIL released once, so another thread
decompresses or writes meanwhile) where native.py hands it out, and the pure
Python below otherwise (CFSBOOT_PURE_PYTHON=1, the Debian package, a build
without a C compiler or libssl-dev). The pure path keeps to few Python-level
operations per 4096-byte block, which is where its time goes; hashlib releases
the GIL for every block. Either way large files are hashed by several threads.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from operator import methodcaller

from cfsboot.composefs import native
from setuproot.contract import HashAlg

BLOCK_SIZE = 4096
LOG_BLOCK_SIZE = 12
# struct fsverity_descriptor, <linux/fsverity.h> (Documentation/filesystems/fsverity.rst,
# "File digest computation"): version, hash_algorithm, log_blocksize, salt_size,
# __le32 reserved, __le64 data_size, root_hash[64], salt[32], reserved[144].
DESCRIPTOR = struct.Struct("<BBBB4xQ64s32s144x")
DESCRIPTOR_VERSION = 1
assert DESCRIPTOR.size == 256

# Files at least this big are hashed by several threads (below it the thread
# hand-off costs more than it saves).
PARALLEL_MIN_SIZE = 8 << 20
# Up to this size the whole tree is built in memory (1/64 of the data at most);
# bigger files go through FsVerityHasher, whose memory stays flat.
IN_MEMORY_TREE_MAX = 64 << 20
# Bytes read and hashed per step; a multiple of BLOCK_SIZE.
CHUNK_SIZE = 1 << 20

_Ctor = Callable[..., "hashlib._Hash"]
_CTORS: dict[HashAlg, _Ctor] = {HashAlg.SHA256: hashlib.sha256, HashAlg.SHA512: hashlib.sha512}
_ZERO_BLOCK = bytes(BLOCK_SIZE)
_get_digest = methodcaller("digest")
# The C twin of _hash_blocks, digest_bytes and _digest_from_leaves, or None: then the
# pure-Python code below runs (the tests set it to None to run that).
_verity = native.c_module("cfsboot.composefs._verity")


def _hash_blocks(alg: HashAlg, data: bytes | bytearray | memoryview) -> bytes:
    """Concatenated hashes of the BLOCK_SIZE blocks of `data`, the last one zero-padded."""
    if _verity is not None:
        leaves: bytes = _verity.leaf_hashes(data, alg)
        return leaves
    ctor = _CTORS[alg]
    mv = memoryview(data)
    n = len(mv)
    full = n - n % BLOCK_SIZE
    # map() keeps the per-block work in C: slice, hash, digest.
    out = b"".join(
        map(
            _get_digest,
            map(
                ctor,
                map(
                    mv.__getitem__,
                    map(slice, range(0, full, BLOCK_SIZE), range(BLOCK_SIZE, full + 1, BLOCK_SIZE)),
                ),
            ),
        )
    )
    if full != n:
        tail = bytes(mv[full:])
        out += ctor(tail + _ZERO_BLOCK[len(tail) :]).digest()
    return out


def descriptor(alg: HashAlg, data_size: int, root_hash: bytes) -> bytes:
    """The 256-byte fsverity_descriptor whose hash is the file digest."""
    return DESCRIPTOR.pack(
        DESCRIPTOR_VERSION, alg.kernel_id, LOG_BLOCK_SIZE, 0, data_size, root_hash, b""
    )


class FsVerityHasher:
    """Streaming fs-verity digest: feed the file content with update(), then digest().

    Memory stays bounded: only partial blocks of each tree level are kept.
    """

    def __init__(self, alg: HashAlg = HashAlg.SHA256) -> None:
        self.alg = HashAlg(alg)
        self._ctor = _CTORS[self.alg]
        self._size = 0
        self._partial = bytearray()  # data not yet making a whole block
        # _levels[i]: hashes of tree level i (0 = data blocks) not yet packed into a block;
        # _counts[i]: how many hashes level i has received in total.
        self._levels: list[bytearray] = [bytearray()]
        self._counts: list[int] = [0]

    def update(self, data: bytes | bytearray | memoryview) -> None:
        mv = memoryview(data).cast("B")
        if not mv:
            return
        self._size += len(mv)
        if self._partial:
            take = min(BLOCK_SIZE - len(self._partial), len(mv))
            self._partial += mv[:take]
            mv = mv[take:]
            if len(self._partial) < BLOCK_SIZE:
                return
            self._add_hashes(0, self._ctor(self._partial).digest())
            self._partial = bytearray()
        full = len(mv) - len(mv) % BLOCK_SIZE
        if full:
            self._add_hashes(0, _hash_blocks(self.alg, mv[:full]))
        if full != len(mv):
            self._partial = bytearray(mv[full:])

    def add_leaf_hashes(self, hashes: bytes, data_size: int) -> None:
        """Feed precomputed hashes of whole data blocks (used by the threaded file path)."""
        if self._partial:
            raise ValueError("leaf hashes after a partial block")
        self._size += data_size
        self._add_hashes(0, hashes)

    def _add_hashes(self, level: int, hashes: bytes) -> None:
        ds = self.alg.digest_size
        while hashes:
            if level == len(self._levels):
                self._levels.append(bytearray())
                self._counts.append(0)
            self._counts[level] += len(hashes) // ds
            buf = self._levels[level]
            buf += hashes
            full = len(buf) - len(buf) % BLOCK_SIZE
            if not full:
                return
            hashes = _hash_blocks(self.alg, memoryview(buf)[:full])
            del buf[:full]
            level += 1

    def _root_hash(self) -> bytes:
        levels = [bytearray(b) for b in self._levels]
        counts = list(self._counts)
        if self._partial:
            tail = bytes(self._partial) + _ZERO_BLOCK[len(self._partial) :]
            levels[0] += self._ctor(tail).digest()
            counts[0] += 1
        if counts[0] == 0:
            return bytes(self.alg.digest_size)
        level = 0
        # A level with a single hash is the top: its hash is the root.
        while counts[level] != 1:
            if levels[level]:
                h = _hash_blocks(self.alg, levels[level])
                if level + 1 == len(levels):
                    levels.append(bytearray())
                    counts.append(0)
                levels[level + 1] += h
                counts[level + 1] += 1
            level += 1
        return bytes(levels[level])

    def digest(self) -> bytes:
        """The fs-verity file digest (does not end the stream)."""
        desc = descriptor(self.alg, self._size, self._root_hash())
        return self._ctor(desc).digest()

    def hexdigest(self) -> str:
        return self.digest().hex()


def _default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _digest_from_leaves(alg: HashAlg, size: int, leaves: bytes) -> bytes:
    """The file digest from all data-block hashes at once (the tree is built in memory)."""
    if _verity is not None:
        digest: bytes = _verity.digest_from_leaves(leaves, size, alg)
        return digest
    level = leaves if leaves else bytes(alg.digest_size)  # empty file: all-zero root
    # A level holding a single hash is the top: that hash is the root.
    while len(level) > alg.digest_size:
        level = _hash_blocks(alg, level)
    return _CTORS[alg](descriptor(alg, size, level)).digest()


def digest_bytes(data: bytes | bytearray | memoryview, alg: HashAlg = HashAlg.SHA256) -> bytes:
    """fs-verity digest of an in-memory byte string."""
    alg = HashAlg(alg)
    if _verity is not None:  # one call: leaves, tree and descriptor
        digest: bytes = _verity.digest(data, alg)
        return digest
    mv = memoryview(data).cast("B")
    return _digest_from_leaves(alg, len(mv), _hash_blocks(alg, mv))


_local = threading.local()


def _thread_buffer() -> bytearray:
    buf: bytearray | None = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(CHUNK_SIZE)
    return buf


def _hash_range(fd: int, alg: HashAlg, start: int, length: int) -> bytes:
    """Leaf hashes of file bytes [start, start+length) read with pread (safe across threads)."""
    buf = _thread_buffer()
    mv = memoryview(buf)
    parts: list[bytes] = []
    pos = start
    end = start + length
    while pos < end:
        want = min(CHUNK_SIZE, end - pos)
        got = os.preadv(fd, [mv[:want]], pos)
        if got == 0:
            raise OSError(f"file shrank while it was hashed (short read at offset {pos})")
        # A short read mid-range is fine only at a block boundary; keep reading otherwise.
        while got % BLOCK_SIZE and pos + got < end:
            more = os.preadv(fd, [mv[got:want]], pos + got)
            if more == 0:
                raise OSError(f"file shrank while it was hashed (short read at offset {pos + got})")
            got += more
        parts.append(_hash_blocks(alg, mv[:got]))
        pos += got
    return b"".join(parts)


def _ranges(size: int, step: int) -> Iterator[tuple[int, int]]:
    for start in range(0, size, step):
        yield start, min(step, size - start)


def digest_fd(
    fd: int,
    alg: HashAlg = HashAlg.SHA256,
    *,
    threads: int | None = None,
    size: int | None = None,
) -> bytes:
    """fs-verity digest of the whole content of an open file (read with pread from offset 0).

    The file must not change while it is hashed. `size`, if the caller has just
    fstat()ed the file, saves doing it again.
    """
    alg = HashAlg(alg)
    if size is None:
        size = os.fstat(fd).st_size
    nthreads = threads if threads is not None else _default_threads()
    if size < PARALLEL_MIN_SIZE or (nthreads <= 1 and size <= IN_MEMORY_TREE_MAX):
        # The common case (most files are small): few Python steps per file.
        return _digest_from_leaves(alg, size, _hash_range(fd, alg, 0, size))
    h = FsVerityHasher(alg)
    if nthreads <= 1:
        for start, length in _ranges(size, CHUNK_SIZE):
            h.add_leaf_hashes(_hash_range(fd, alg, start, length), length)
        return h.digest()
    # Segments are block-aligned, so each thread's leaf hashes simply concatenate.
    # A bounded window of segments in flight keeps memory flat for huge files.
    segment = 4 * CHUNK_SIZE
    window = 2 * nthreads
    pending = list(_ranges(size, segment))
    with ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="fsverity") as pool:
        for i in range(0, len(pending), window):
            batch = pending[i : i + window]
            for (_, length), hashes in zip(
                batch,
                pool.map(lambda r: _hash_range(fd, alg, r[0], r[1]), batch),
                strict=True,
            ):
                h.add_leaf_hashes(hashes, length)
    return h.digest()


def digest_file(
    path: str | os.PathLike[str] | int,
    alg: HashAlg = HashAlg.SHA256,
    *,
    threads: int | None = None,
) -> bytes:
    """fs-verity digest of a file, by path or open file descriptor."""
    if isinstance(path, int):
        return digest_fd(path, alg, threads=threads)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return digest_fd(fd, alg, threads=threads)
    finally:
        os.close(fd)
