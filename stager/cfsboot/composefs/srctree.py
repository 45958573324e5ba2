"""Read a directory into a tree, the way C `mkcomposefs SOURCE` reads it.

Facts taken from composefs 1.0.8 (`lcfs_build`, `lcfs_load_node_from_file`):
- every entry is lstat()ed: mode, uid, gid, rdev, size and mtime with
  nanoseconds (all mtimes are zero with --use-epoch); st_nlink is ignored;
- xattrs: all of them, from llistxattr/lgetxattr, values as raw bytes;
- symlinks: the target from readlink;
- regular files: empty ones have no content; files of at most 64 bytes are
  stored inline; larger ones are external: their fs-verity digest names them
  (payload `xx/rest…`) and, with --digest-store, they are copied there;
- no hardlink detection: two names of one inode become two files
  (`hardlinks=True` shares them instead, for callers that want real links);
- directories' link counts are 2 + number of subdirectories.

Reading and hashing run in threads (hashlib and the copies release the GIL);
the walk feeds them batches while it goes on.
"""

from __future__ import annotations

import errno
import os
import queue
import stat
import threading
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from cfsboot.composefs import fsverity
from cfsboot.composefs.objectstore import ObjectStore
from cfsboot.composefs.tree import INLINE_MAX, Inode
from setuproot.contract import HashAlg, object_relpath

# Work is handed to the threads in batches of this many files or bytes, which
# keeps the per-file thread hand-off cost low.
_BATCH_FILES = 64
_BATCH_BYTES = 32 << 20

_Work = list[tuple[Inode, bytes]]


def tree_from_directory(
    path: str | os.PathLike[str],
    *,
    digest_store: str | os.PathLike[str] | None = None,
    alg: HashAlg = HashAlg.SHA256,
    threads: int | None = None,
    use_epoch: bool = False,
    hardlinks: bool = False,
    one_file_system: bool = False,
) -> Inode:
    """The tree C `mkcomposefs [--digest-store=DIR] [--use-epoch] SOURCE` builds from `path`.

    External files get `payload` (their object path) and `digest` (raw
    fs-verity digest with `alg`); with `digest_store`, their contents are
    stored there as XX/REST objects (published atomically, see ObjectStore).
    `one_file_system`: directories on another filesystem than `path` (e.g. /proc in
    a container build) are kept as empty directories.
    """
    src = os.fsencode(os.fspath(path))
    st = os.lstat(src)
    if not stat.S_ISDIR(st.st_mode):
        raise NotADirectoryError(20, "not a directory", os.fsdecode(src))
    nthreads = threads if threads is not None else fsverity._default_threads()
    store = (
        ObjectStore(Path(os.fsdecode(os.fspath(digest_store))), alg)
        if digest_store is not None
        else None
    )
    if store is not None:
        store.root.mkdir(parents=True, exist_ok=True)
    hasher = _Hasher(HashAlg(alg), store)
    with ExitStack() as stack:
        if store is not None:
            stack.enter_context(store.batch())
        pool = _Pool(hasher.run, nthreads)
        try:
            walker = _Walker(use_epoch, hardlinks, pool.submit)
            walker.device = st.st_dev if one_file_system else None
            root = walker.node(src, st)
            walker.walk_dir(src, root)
            walker.flush()
        except BaseException:
            pool.abort()
            raise
        pool.finish()  # re-raises the first error of a worker
    return root


class _Pool:
    """Worker threads fed through a queue.

    While the walk runs, nthreads-1 workers hash; then the walking thread
    joins them (as C mkcomposefs's main thread does), so that no more
    threads than cores compete for the GIL.
    """

    def __init__(self, fn: Callable[[_Work], None], nthreads: int) -> None:
        self.fn = fn
        self.queue: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        self.error: BaseException | None = None
        self.threads = [
            threading.Thread(target=self._work, name=f"srctree-{i}", daemon=True)
            for i in range(max(0, nthreads - 1))
        ]
        for t in self.threads:
            t.start()

    def submit(self, work: _Work) -> None:
        self.queue.put(work)

    def _work(self) -> None:
        while (work := self.queue.get()) is not None:
            if self.error is not None:
                continue  # drain: an error already decided the outcome
            try:
                self.fn(work)
            except BaseException as e:  # handed to the caller by finish()
                if self.error is None:
                    self.error = e

    def finish(self) -> None:
        for _ in range(len(self.threads) + 1):
            self.queue.put(None)
        self._work()
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        self.error = self.error or RuntimeError("aborted")
        for _ in self.threads:
            self.queue.put(None)
        for t in self.threads:
            t.join()


class _Hasher:
    def __init__(self, alg: HashAlg, store: ObjectStore | None) -> None:
        self.alg = alg
        self.store = store

    def run(self, work: _Work) -> None:
        for node, path in work:
            self.one(node, path)

    def one(self, node: Inode, path: bytes) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            size = os.fstat(fd).st_size
            if size != node.size:
                raise OSError(
                    errno.EAGAIN,
                    f"file changed while it was read ({node.size} -> {size} bytes)",
                    os.fsdecode(path),
                )
            digest = fsverity.digest_fd(fd, self.alg, threads=1, size=size)
            hexdigest = digest.hex()
            node.digest = digest
            node.payload = object_relpath(hexdigest).encode()
            if self.store is not None:
                self.store.add_fd(hexdigest, fd, size)
        finally:
            os.close(fd)


class _Walker:
    def __init__(
        self,
        use_epoch: bool,
        hardlinks: bool,
        submit: Callable[[_Work], None],
    ) -> None:
        self.use_epoch = use_epoch
        self.hardlinks = hardlinks
        self.submit = submit
        self.batch: _Work = []
        self.batch_bytes = 0
        self.seen: dict[tuple[int, int], Inode] = {}
        self.device: int | None = None  # only descend into directories on this device

    def node(self, path: bytes, st: os.stat_result) -> Inode:
        mode = st.st_mode
        if self.use_epoch:
            mtime, nsec = 0, 0
        else:
            mtime, nsec = divmod(st.st_mtime_ns, 1_000_000_000)
        node = Inode(mode=mode, uid=st.st_uid, gid=st.st_gid, mtime=mtime, mtime_nsec=nsec)
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFDIR:
            node.children = {}
        elif fmt == stat.S_IFREG:
            node.size = st.st_size
            if 0 < st.st_size <= INLINE_MAX:
                node.content = _read_small(path, st.st_size)
            elif st.st_size > INLINE_MAX:
                self.batch.append((node, path))
                self.batch_bytes += st.st_size
                if len(self.batch) >= _BATCH_FILES or self.batch_bytes >= _BATCH_BYTES:
                    self.flush()
        elif fmt == stat.S_IFLNK:
            node.payload = os.readlink(path)
            node.size = len(node.payload)
        else:
            node.rdev = st.st_rdev
            node.size = st.st_size
        names = os.listxattr(path, follow_symlinks=False)
        for name in sorted(names):
            node.xattrs[os.fsencode(name)] = os.getxattr(path, name, follow_symlinks=False)
        return node

    def flush(self) -> None:
        if self.batch:
            self.submit(self.batch)
            self.batch = []
            self.batch_bytes = 0

    def walk_dir(self, path: bytes, node: Inode) -> None:
        """Read the directory at `path` into `node`, and everything below it (depth first,
        with its own stack: the depth of a tree is not limited by Python's recursion)."""
        stack = [(path, node, self._list(path))]
        while stack:
            dir_path, dir_node, entries = stack[-1]
            children = dir_node.children
            assert children is not None
            if not entries:
                stack.pop()
                dir_node.nlink = 2 + sum(1 for c in children.values() if c.children is not None)
                continue
            name, child_path = entries.pop()
            st = os.lstat(child_path)
            if self.hardlinks and st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                key = (st.st_dev, st.st_ino)
                shared = self.seen.get(key)
                if shared is not None:
                    shared.nlink += 1
                    children[name] = shared
                    continue
            child = self.node(child_path, st)
            if self.hardlinks and st.st_nlink > 1 and not child.is_dir():
                self.seen[(st.st_dev, st.st_ino)] = child
            children[name] = child
            if child.children is not None:
                if self.device is None or st.st_dev == self.device:
                    stack.append((child_path, child, self._list(child_path)))

    @staticmethod
    def _list(path: bytes) -> list[tuple[bytes, bytes]]:
        """(name, path) of a directory's entries, last first (they are popped)."""
        with os.scandir(path) as it:
            entries = [(e.name, e.path) for e in it]
        entries.reverse()
        return entries


def _read_small(path: bytes, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        data = os.read(fd, size + 1)
    finally:
        os.close(fd)
    if len(data) != size:
        raise OSError(
            errno.EAGAIN,
            f"file changed while it was read ({size} -> {len(data)} bytes)",
            os.fsdecode(path),
        )
    return data
