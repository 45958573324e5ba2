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

Everything runs in a pool of threads: listing a directory (with the lstat,
xattrs and small reads of its entries) is one task, hashing and storing a batch
of its larger files another. Python holds the GIL only between system calls,
so with a cold page cache many reads are in flight at once, which is what a
disk (and a virtio one) needs to go fast; with a warm one hashlib and the
copies run on every core. With a digest store each file is read once, hashed
as it is copied into the store (ObjectStore.add_fd_hashed: O_DIRECT where it
pays, see composefs/directio.py).
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

# Files are hashed in batches of this many files or bytes, which keeps the
# per-task cost low while leaving work for every thread.
_BATCH_FILES = 16
_BATCH_BYTES = 16 << 20
# Threads per core: most of their time is spent waiting for the disk when the
# page cache is cold.
_THREADS_PER_CORE = 4

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
    nthreads = threads if threads is not None else _THREADS_PER_CORE * fsverity._default_threads()
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
        tasks = _Tasks(nthreads)
        walker = _Walker(use_epoch, hardlinks, tasks, hasher.run)
        walker.device = st.st_dev if one_file_system else None
        root = walker.node(src, st, [])
        tasks.add(walker.walk_dir, src, root)
        tasks.run()  # re-raises the first error of a task
    return root


class _Tasks:
    """Threads that run tasks, which may add more tasks; `run()` returns when all are done.

    The calling thread works too, so `threads` threads compete for the GIL in all.
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self.queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[object, ...]] | None] = (
            queue.SimpleQueue()
        )
        self.lock = threading.Lock()
        self.pending = 0  # tasks added and not finished
        self.error: BaseException | None = None

    def add(self, fn: Callable[..., None], *args: object) -> None:
        with self.lock:
            self.pending += 1
        self.queue.put((fn, args))

    def _work(self) -> None:
        while (task := self.queue.get()) is not None:
            fn, args = task
            try:
                if self.error is None:  # else drain: an error already decided the outcome
                    fn(*args)
            except BaseException as e:  # handed to the caller by run()
                if self.error is None:
                    self.error = e
            with self.lock:
                self.pending -= 1
                done = self.pending == 0
            if done:  # wake every thread up to stop
                for _ in range(self.threads):
                    self.queue.put(None)

    def run(self) -> None:
        workers = [
            threading.Thread(target=self._work, name=f"srctree-{i}", daemon=True)
            for i in range(self.threads - 1)
        ]
        for t in workers:
            t.start()
        try:
            self._work()
        except BaseException as e:  # KeyboardInterrupt in the calling thread
            self.error = self.error or e
        for t in workers:
            t.join()
        if self.error is not None:
            raise self.error


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
            try:
                if self.store is not None:  # read once: hashed as it is copied
                    hexdigest = self.store.add_fd_hashed(fd, size)
                    digest = bytes.fromhex(hexdigest)
                else:
                    digest = fsverity.digest_fd(fd, self.alg, threads=1, size=size)
                    hexdigest = digest.hex()
            except OSError as e:
                if e.filename is not None:
                    raise
                # "file shrank while it was copied": say which file.
                raise OSError(e.errno, e.strerror, os.fsdecode(path)) from e
            node.digest = digest
            node.payload = object_relpath(hexdigest).encode()
        finally:
            os.close(fd)


class _Walker:
    def __init__(
        self,
        use_epoch: bool,
        hardlinks: bool,
        tasks: _Tasks,
        hash_files: Callable[[_Work], None],
    ) -> None:
        self.use_epoch = use_epoch
        self.hardlinks = hardlinks
        self.tasks = tasks
        self.hash_files = hash_files
        self.seen: dict[tuple[int, int], Inode] = {}
        self.seen_lock = threading.Lock()
        self.device: int | None = None  # only descend into directories on this device

    def node(self, path: bytes, st: os.stat_result, work: _Work) -> Inode:
        """The inode of `path` (lstat()ed as `st`); a file to hash is added to `work`."""
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
                work.append((node, path))
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

    def walk_dir(self, path: bytes, node: Inode) -> None:
        """Read the directory at `path` into `node`; its subdirectories and its files to
        hash become tasks of their own (no recursion: depth is not limited)."""
        children = node.children
        assert children is not None
        with os.scandir(path) as it:
            entries = [(e.name, e.path) for e in it]
        subdirs = 0
        work: _Work = []
        work_bytes = 0
        for name, child_path in entries:
            st = os.lstat(child_path)
            shared_key = None
            if self.hardlinks and st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                shared_key = (st.st_dev, st.st_ino)
                with self.seen_lock:
                    shared = self.seen.get(shared_key)
                    if shared is not None:
                        shared.nlink += 1
                        children[name] = shared
                        continue
            before = len(work)
            child = self.node(child_path, st, work)
            if shared_key is not None:
                with self.seen_lock:
                    shared = self.seen.setdefault(shared_key, child)
                    if shared is not child:  # another thread got there first
                        shared.nlink += 1
                        del work[before:]
                        children[name] = shared
                        continue
            children[name] = child
            if len(work) > before:
                work_bytes += child.size
                if len(work) >= _BATCH_FILES or work_bytes >= _BATCH_BYTES:
                    self.tasks.add(self.hash_files, work)
                    work = []
                    work_bytes = 0
            if child.children is not None:
                subdirs += 1
                if self.device is None or st.st_dev == self.device:
                    self.tasks.add(self.walk_dir, child_path, child)
        if work:
            self.tasks.add(self.hash_files, work)
        node.nlink = 2 + subdirs


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
