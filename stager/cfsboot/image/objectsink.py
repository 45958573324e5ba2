"""Where an import puts file contents: hashed only (compute-id) or staged into a repository.

Files above the inline limit become objects named by their fs-verity digest,
deduplicated against the repository and against what this import already
wrote. Writing is mostly waiting for the filesystem, so a few threads do it,
handed objects in batches, while the main thread goes on decompressing and
hashing; the bytes in flight are bounded. The writers also look whether the
repository has an object already (a stat that can wait on a directory other
writers are filling), so the main thread never does a per-file syscall. New
objects go into the repository's open batch, so a failed import publishes none
of them.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor

from cfsboot.composefs import fsverity
from cfsboot.composefs.directio import BufferPool, BufferRing, Lease
from cfsboot.composefs.objectstore import syncfs
from cfsboot.composefs.repository import Repository
from cfsboot.oci import tar
from setuproot.contract import HashAlg

# Larger files go through a temp file, not memory. Files up to it are written once, and only
# when new; through the temp file, a file is written twice (the temp file, then the object)
# or once for nothing (an object the repository has). Kernels and initramfs images are
# what lies above a few MB in an OS image: an upgrade writes them once, or not at all.
MEMORY_OBJECT_MAX = 32 << 20
# Writers wait on the disk (O_DIRECT) and on the staging directory's lock more than they
# run: 4 kept an import's main thread from waiting on them (2 did not, measured).
WRITER_THREADS = 4
# From this size, an object's whole blocks go to the disk with O_DIRECT (the page-cache copy
# costs more than the write); below it the write's fixed costs (an I/O each, ext4's
# unwritten-extent conversion) cost more CPU than the copy. Measured on the test OS image:
# CPU 3.5 s at 64 KiB, 3.6 s at 256 KiB, 4.4 s at 1 MiB, 4.9 s at 4 KiB, 4.7 s never
# (user + system, two cold runs each at load 4-5, C fs-verity hashing). Below it, the
# writeback is not started object by object either (sync_file_range, 0.3 s of CPU for the
# test OS image's 13,700 objects): the batch's syncfs writes them together.
DIRECT_MIN = 64 << 10
MAX_IN_FLIGHT = 64 << 20
# The ring the files are read into (directio.BufferRing): in flight, plus the largest file
# held in memory. Measured on the test OS image against BufferPool (8 cold runs each):
# page faults 100,000 -> 57,000, CPU 2.35 -> 2.23 s, wall 1.85 -> 1.79 s (a 64 MiB ring:
# 64,000 faults; 32 MiB: 85,000, the rest going to the overflow pool).
RING_BYTES = MAX_IN_FLIGHT + MEMORY_OBJECT_MAX
CHUNK = 1 << 20
# Objects go to the writers in batches of up to this many bytes or objects: one task (one
# thread woken, a few locks taken) per batch, not per object. With one task per object the
# reading thread spent a sixth of its time in the kernel waking writers (perf, test OS image).
BATCH_BYTES = 1 << 20
BATCH_OBJECTS = 64

# Small objects' pages are left to the batch's syncfs (starting each one's writeback costs
# a syscall that submits its I/O: 0.3 s of CPU for the test OS image). Left all to the
# batch's end, that syncfs took 0.3 s there with the disk idle until then: a thread syncs
# whenever the writers have left this many bytes since the last sync (0.05 s left).
WRITEBACK_EVERY = 4 << 20

Bytes = bytes | bytearray | memoryview
# An object waiting for a writer: its digest, its contents, the buffer they are in.
_Queued = tuple[str, Bytes, Lease | None]


class _WriteBack:
    """A thread that syncs the repository's filesystem when asked, one sync at a time, so
    that the disk writes staged objects while the import goes on. A failed sync is kept
    for the import to raise: the batch's own syncfs, on a descriptor opened later, would
    not see the error again."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.error: OSError | None = None
        self._wanted = threading.Event()
        self._thread: tuple[threading.Thread, threading.Event] | None = None  # and its stop
        self._lock = threading.Lock()  # writer threads ask at once

    def request(self) -> None:
        with self._lock:
            if self._thread is None:
                stop = threading.Event()
                thread = threading.Thread(
                    target=self._run, args=(stop,), name="cfsboot-sync", daemon=True
                )
                thread.start()
                self._thread = thread, stop
            self._wanted.set()

    def _run(self, stop: threading.Event) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            self.error = self.error or e
            return
        try:
            while True:
                self._wanted.wait()
                if stop.is_set():
                    return
                self._wanted.clear()
                try:
                    syncfs(fd)
                except OSError as e:
                    self.error = self.error or e
        finally:
            os.close(fd)

    def close(self) -> None:
        """Let a sync under way end, and the thread with it."""
        with self._lock:
            running, self._thread = self._thread, None
        if running is not None:
            thread, stop = running
            stop.set()
            self._wanted.set()
            thread.join()


class ObjectSink:
    """Where file contents go: hashed only (compute-id) or staged into a repository."""

    def __init__(self, alg: HashAlg, repo: Repository | None) -> None:
        self.alg = alg
        self.repo = repo
        self.written: set[str] = set()
        self.bytes_written = 0
        # Contents kept in memory by digest: the SELinux policy files, which the boot
        # image transform reads even when there is no repository to read them from.
        self.kept: dict[str, bytes] = {}
        self._tmp: int = -1
        # Writing objects is mostly waiting for the filesystem: a few threads do it while
        # the main thread goes on decompressing and hashing. In-flight bytes are bounded.
        self._pool = ThreadPoolExecutor(WRITER_THREADS, "cfsboot-objects") if repo else None
        self._futures: list[Future[None]] = []
        self._cond = threading.Condition()
        self._in_flight = 0
        # Digests handed to the writers: each is written (or found present) once.
        self._submitted: set[str] = set()
        # Objects not yet handed to a writer (BATCH_BYTES, BATCH_OBJECTS).
        self._batch: list[_Queued] = []
        self._batch_bytes = 0
        # File contents are read into page-aligned buffers used again and again: no page
        # fault per file, and the writers can send them to the disk with O_DIRECT. (The
        # overflow: what does not fit in the ring while the writers are behind.)
        self._buffers = BufferRing(RING_BYTES, BufferPool(MEMORY_OBJECT_MAX))
        self._writeback = _WriteBack(os.fspath(repo.path)) if repo else None
        self._unsynced = 0  # bytes the writers left to the page cache since the last sync

    def close(self) -> None:
        self.wait()
        if self._pool is not None:
            self._pool.shutdown()
        if self._writeback is not None:
            self._writeback.close()
        self._buffers.clear()
        if self._tmp >= 0:
            os.close(self._tmp)
            self._tmp = -1

    def wait(self) -> BaseException | None:
        """Wait for every pending write; the first failure, if any."""
        self._submit_batch()
        futures, self._futures = self._futures, []
        first: BaseException | None = None
        for f in futures:
            e = f.exception()
            first = first or e
        if self._writeback is not None:
            self._writeback.close()  # a sync under way may yet fail (a later one restarts it)
            first = first or self._writeback.error
        return first

    def write_back(self) -> None:
        """Have the write-back thread sync now (the staged objects go to the disk while the
        caller works on); wait() reports its failure."""
        if self._writeback is not None:
            self._writeback.request()

    def _write_later(self, hexd: str, buf: Bytes, pooled: Lease | None = None) -> None:
        """Queue the object for a writer thread, which stores it unless the repository has
        it already (a stat of a name in a big directory, which can wait on the directory's
        lock while other objects land there: the reading thread never does).

        `pooled`: `buf` is the view of this buffer from `_buffers`, given back once written.
        """
        self._submitted.add(hexd)
        size = len(buf)
        if self._batch and self._in_flight + size > MAX_IN_FLIGHT:
            self._submit_batch()  # (its bytes count as in flight: never wait on them)
        with self._cond:
            while self._in_flight and self._in_flight + size > MAX_IN_FLIGHT:
                self._cond.wait()
            self._in_flight += size
        self._batch.append((hexd, buf, pooled))
        self._batch_bytes += size
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= BATCH_OBJECTS:
            self._submit_batch()

    def _submit_batch(self) -> None:
        if self._batch:
            assert self._pool is not None
            batch, self._batch, self._batch_bytes = self._batch, [], 0
            self._futures.append(self._pool.submit(self._write_batch, batch))

    def _write_batch(self, batch: list[_Queued]) -> None:
        """A writer's task: store every object of `batch` and give its buffer back, also
        after one failed (the rest are not written; the first failure is raised)."""
        assert self.repo is not None
        store = self.repo.objects
        first: BaseException | None = None
        total = sum(len(buf) for _, buf, _ in batch)  # (a view given back is released)
        written: list[tuple[str, int]] = []
        cached = 0
        try:
            for hexd, buf, pooled in batch:
                try:
                    if first is None:
                        size = len(buf)
                        big = size >= DIRECT_MIN  # small: the pages are left to the syncfs
                        direct = pooled is not None and big
                        if store.add_bytes(hexd, memoryview(buf), aligned=direct, writeback=big):
                            written.append((hexd, size))
                            cached += 0 if big else size
                except BaseException as e:
                    first = e
                if pooled is not None:
                    try:
                        self._buffers.give(pooled, buf)  # type: ignore[arg-type]
                    except BaseException as e:
                        first = first or e
        finally:
            # Whatever happened, the bytes are no longer in flight: the reader never hangs.
            with self._cond:
                for hexd, size in written:
                    self._count(hexd, size)
                self._in_flight -= total
                self._cond.notify_all()
                self._unsynced += cached
                sync = self._unsynced >= WRITEBACK_EVERY
                if sync:
                    self._unsynced = 0
        if sync:
            self.write_back()
        if first is not None:
            raise first

    def store(self, data: tar.EntryData, size: int, *, keep: bool = False) -> str:
        """Hash (and stage) one file's content; its hex digest. keep: also keep it in `kept`."""
        if keep:
            content = b"".join(iter(lambda: data.read(CHUNK), b""))
            hexd = fsverity.digest_bytes(content, self.alg).hex()
            self.kept[hexd] = content
            if self.repo is not None and hexd not in self._submitted:
                self._write_later(hexd, content)
            return hexd
        if size <= MEMORY_OBJECT_MAX:
            # One piece: hashed in one call, written in one.
            pooled, view = self._buffers.take(size)
            try:
                data.readinto(view)
                hexd = fsverity.digest_bytes(view, self.alg).hex()
            except BaseException:
                self._buffers.give(pooled, view)
                raise
            if self.repo is not None and hexd not in self._submitted:
                self._write_later(hexd, view, pooled)
            else:
                self._buffers.give(pooled, view)
            return hexd
        h = fsverity.FsVerityHasher(self.alg)
        if self.repo is None:
            while chunk := data.read(CHUNK):
                h.update(chunk)
            return h.hexdigest()
        fd = self._tempfile()
        os.ftruncate(fd, 0)
        off = 0
        while chunk := data.read(CHUNK):
            h.update(chunk)
            view = memoryview(chunk)
            while view:
                n = os.pwrite(fd, view, off)
                off += n
                view = view[n:]
        raw = h.digest()
        hexd = raw.hex()
        if hexd not in self._submitted and not self.repo.has_object(hexd):
            self._submitted.add(hexd)
            self.repo.ensure_object_from_file(fd, digest=raw)
            with self._cond:
                self._count(hexd, size)
        return hexd

    def _count(self, hexd: str, size: int) -> None:
        self.written.add(hexd)
        self.bytes_written += size

    def _tempfile(self) -> int:
        if self._tmp < 0:
            assert self.repo is not None
            # An unnamed file on the repository's filesystem: copy_file_range/reflink work,
            # and nothing is left behind if we die.
            self._tmp = os.open(self.repo.path, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        return self._tmp
