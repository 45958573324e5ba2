"""Copying file contents: reflink, copy_fd (copy_file_range), and copy_fd_direct, which
goes through one page-aligned buffer per thread with O_DIRECT where that pays.

Why O_DIRECT (measured with perf on a 2-core VM, ext4 on virtio, importing /usr):
filling fresh page-cache pages with copy_file_range or write() cost several times
the CPU of reading the same bytes, and an import then held every file twice in
the page cache. Objects' whole blocks are written direct, from the buffer to the
device (the tail under one block is an ordinary write), and a source none of
whose pages is cached is read direct into the buffer; a cached one is copied from
the page cache. O_DIRECT gives no durability: the caller still fsyncs (or
syncfs) before it publishes a name.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import threading
from collections import deque
from collections.abc import Callable

# <linux/fs.h>: _IOW(0x94, 9, int) - share the source's extents (btrfs, xfs).
FICLONE = 0x40049409


def reflink(src: int, dst: int) -> bool:
    """FICLONE: make `dst` share `src`'s extents; False where the filesystem cannot."""
    try:
        fcntl.ioctl(dst, FICLONE, src)
        return True
    except OSError:
        return False


def copy_fd(src: int, dst: int, size: int) -> None:
    """Copy `size` bytes from offset 0 of `src` to `dst` (copy_file_range, else read/write)."""
    off = 0
    try:
        while off < size:
            n = os.copy_file_range(src, dst, size - off, off, off)
            if n == 0:
                break
            off += n
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        while off < size:
            chunk = os.pread(src, min(1 << 20, size - off), off)
            if not chunk:
                break
            os.pwrite(dst, chunk, off)
            off += len(chunk)
    if off != size:
        raise OSError(errno.EIO, f"file shrank while it was copied ({off} of {size} bytes)")


# O_DIRECT wants the buffer's address, the file offset and the length aligned to the
# device's logical block (at most the page size): 4096 covers them all.
DIRECT_ALIGN = 4096
COPY_CHUNK = 1 << 20  # bytes read (and hashed) and written per step; a multiple of it
_local = threading.local()


def copy_buffer() -> memoryview:
    """This thread's COPY_CHUNK-byte buffer: an anonymous mapping, so page-aligned."""
    mv: memoryview | None = getattr(_local, "copy_buffer", None)
    if mv is None:
        mv = _local.copy_buffer = memoryview(mmap.mmap(-1, COPY_CHUNK))
    return mv


class BufferPool:
    """Page-aligned buffers handed out and given back, by size class (powers of two).

    A fresh buffer costs a page fault per 4 KiB page the first time it is written (and,
    on a virtual machine, often the host's fault behind it: about 10 us a page on the
    CI machines, more than copying the page): an import that allocated one buffer per
    file spent a third of its time there. Buffers given back are kept, up to
    `keep_bytes` in all, and handed out again. Thread-safe.
    """

    MIN = DIRECT_ALIGN

    def __init__(self, keep_bytes: int) -> None:
        self.keep_bytes = keep_bytes
        self._kept = 0
        self._free: dict[int, list[mmap.mmap]] = {}
        self._lock = threading.Lock()

    @classmethod
    def size_class(cls, size: int) -> int:
        return max(cls.MIN, 1 << (size - 1).bit_length())

    def take(self, size: int) -> tuple[mmap.mmap, memoryview]:
        """A buffer of at least `size` bytes and the view of its first `size` bytes."""
        cls = self.size_class(size)
        with self._lock:
            free = self._free.get(cls)
            if free:
                self._kept -= cls
                buf = free.pop()
            else:
                buf = None
        if buf is None:
            # Private: a shared anonymous mapping is shmem, whose page faults cost more
            # (the import's reading thread: a tenth of its time, mostly there).
            buf = mmap.mmap(-1, cls, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        return buf, memoryview(buf)[:size]

    def give(self, buf: mmap.mmap, view: memoryview) -> None:
        """Give back a buffer from take() (its view is released: do not use it again)."""
        view.release()
        cls = len(buf)
        with self._lock:
            if self._kept + cls <= self.keep_bytes:
                self._free.setdefault(cls, []).append(buf)
                self._kept += cls
                return
        with contextlib.suppress(BufferError):  # a stray slice still alive: the GC unmaps it
            buf.close()

    def clear(self) -> None:
        """Unmap every buffer kept (those still out are unmapped when given back)."""
        with self._lock:
            free, self._free, self._kept, self.keep_bytes = self._free, {}, 0, 0
        for bufs in free.values():
            for buf in bufs:
                with contextlib.suppress(BufferError):
                    buf.close()


class _Slot:
    """A buffer of a BufferRing: where it starts, and whether it is still out."""

    __slots__ = ("out", "start")

    def __init__(self, start: int) -> None:
        self.start = start
        self.out = True


# What BufferRing.take hands out with a view: a ring slot, or an overflow pool buffer.
Lease = _Slot | mmap.mmap


class BufferRing:
    """Page-aligned buffers cut in turn from one mapping, for data on its way to the disk
    and given back in about the order it was taken. Thread-safe.

    A BufferPool keeps a free list per size class, so every class grows to its own peak:
    importing the test OS image mapped 350 MB of buffers for its 504 MB of files (90,000
    page faults, 4,000 mmap and munmap calls). A ring touches each page of its mapping
    once, at most, and maps nothing per buffer.

    A buffer is cut at the head, right after the newest one still out, or from the start
    of the mapping when the rest of it is too short; one given back before older ones
    is free once they are all back. Whenever none is out, the head goes back to the start
    (its pages are the ones touched already). Where there is no room, or the size is above
    `largest`, `take` does not wait (the caller may hold buffers it has not passed on yet,
    which nobody else would give back): the buffer comes from `overflow` instead.
    """

    def __init__(self, size: int, overflow: BufferPool, *, largest: int | None = None) -> None:
        self.size = size - size % DIRECT_ALIGN
        self.largest = min(self.size, largest if largest is not None else self.size)
        self.overflow = overflow
        self._map = mmap.mmap(-1, self.size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self._whole = memoryview(self._map)
        self._out: deque[_Slot] = deque()  # taken and not freed yet, oldest first
        self._head = 0  # where the newest slot ends
        self._lock = threading.Lock()

    def _place(self, need: int) -> int:
        """Where a slot of `need` bytes starts, or -1 (under the lock)."""
        if not self._out:
            return 0
        tail, head = self._out[0].start, self._head
        if head > tail:  # out: [tail, head); free: [head, size) and [0, tail)
            if need <= self.size - head:
                return head
            return 0 if need <= tail else -1
        return head if need <= tail - head else -1  # out up to the end and from 0 to head

    def take(self, size: int) -> tuple[Lease, memoryview]:
        """A buffer of `size` bytes starting on a page: its lease and its view."""
        need = -(-max(size, 1) // DIRECT_ALIGN) * DIRECT_ALIGN
        if need <= self.largest:
            with self._lock:
                start = self._place(need)
                if start >= 0:
                    slot = _Slot(start)
                    self._out.append(slot)
                    self._head = start + need
                    return slot, self._whole[start : start + size]
        return self.overflow.take(size)

    def give(self, lease: Lease, view: memoryview) -> None:
        """Give back a buffer from take() (its view is released: do not use it again)."""
        if not isinstance(lease, _Slot):
            self.overflow.give(lease, view)
            return
        view.release()
        with self._lock:
            lease.out = False
            out = self._out
            while out and not out[0].out:
                out.popleft()
            if not out:
                self._head = 0

    def clear(self) -> None:
        """Unmap the ring (unless a view is still alive: then the GC does) and the overflow's."""
        self.overflow.clear()
        self._whole.release()
        with contextlib.suppress(BufferError):
            self._map.close()


def pread_full(src: int, view: memoryview, off: int) -> int:
    """Read into all of `view` from offset `off` unless the file ends first; bytes read."""
    got = 0
    while got < len(view):
        n = os.preadv(src, [view[got:]], off + got)
        if n == 0:
            break
        got += n
    return got


def _pwrite_all(fd: int, view: memoryview, off: int) -> None:
    while view:
        n = os.pwrite(fd, view, off)
        view = view[n:]
        off += n


def _set_direct(fd: int, on: bool) -> None:
    flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, (flags | os.O_DIRECT) if on else (flags & ~os.O_DIRECT))


def write_chunk(dst: int, view: memoryview, off: int, *, direct: bool) -> bool | None:
    """pwrite all of `view` at `off` of `dst`; with `direct`, its whole blocks with O_DIRECT.

    `view` must start at a page-aligned address (a slice from offset 0 of copy_buffer())
    and `off` at a multiple of DIRECT_ALIGN. Returns whether O_DIRECT was used: True,
    False where the filesystem refused it (the chunk is then written buffered), None
    when not tried (not asked, or less than a block).
    """
    aligned = len(view) - len(view) % DIRECT_ALIGN
    if not direct or not aligned:
        _pwrite_all(dst, view, off)
        return None
    done = 0
    try:
        _set_direct(dst, True)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        _pwrite_all(dst, view, off)
        return False
    try:
        done = os.pwrite(dst, view[:aligned], off)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
    finally:
        _set_direct(dst, False)
    _pwrite_all(dst, view[done:], off + done)  # the tail (or all of it, if refused)
    return done > 0


class Direct:
    """What O_DIRECT does, learnt from the first file that tries it, for reading sources
    (`read`) and for writing objects (`write`): None until known, then True or False."""

    __slots__ = ("read", "write")

    def __init__(self) -> None:
        self.read: bool | None = None
        self.write: bool | None = None

    def learn_write(self, used: bool | None) -> None:
        if used is not None:
            self.write = used


# cachestat(2) (Linux 6.5): one number on every architecture but alpha.
SYS_CACHESTAT = 451
_cachestat: Callable[..., int] | None = None


def cached_pages(fd: int) -> int | None:
    """How many pages of the file are in the page cache (cachestat), None where unknown."""
    global _cachestat
    import ctypes

    if _cachestat is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        _cachestat = libc.syscall
    whole = ctypes.create_string_buffer(16)  # struct cachestat_range {off, len}: 0, 0 = all
    out = ctypes.create_string_buffer(40)  # struct cachestat: nr_cache first
    if _cachestat(ctypes.c_long(SYS_CACHESTAT), ctypes.c_int(fd), whole, out, 0) != 0:
        return None
    return int.from_bytes(out.raw[:8], "little")


def read_chunk(
    src: int, buf: memoryview, want: int, off: int, *, direct: bool
) -> tuple[int, bool | None]:
    """Read `want` bytes at `off` of `src` into the start of `buf` (a copy_buffer(), which
    has room to round `want` up to whole blocks; `off` a multiple of DIRECT_ALIGN).

    With `direct`, with O_DIRECT: the device writes into `buf`, no page-cache page is
    filled. Returns (bytes read: fewer only at the end of the file, whether O_DIRECT
    was used: True, False where refused (then read buffered), None when not asked).
    """
    if not direct:
        return pread_full(src, buf[:want], off), None
    end = min(len(buf), -(-want // DIRECT_ALIGN) * DIRECT_ALIGN)
    try:
        _set_direct(src, True)
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        return pread_full(src, buf[:want], off), False
    got = 0
    used = True
    try:
        while got < want:
            n = os.preadv(src, [buf[got:end]], off + got)
            got += n
            if n == 0 or n % DIRECT_ALIGN:  # the end of the file
                break
    except OSError as e:
        if e.errno != errno.EINVAL or got:
            raise
        used = False
    finally:
        _set_direct(src, False)
    if not used:
        return pread_full(src, buf[:want], off), False
    return min(got, want), True


def copy_fd_direct(
    src: int,
    dst: int,
    size: int,
    direct: Direct | None = None,
    *,
    feed: Callable[[memoryview], object] | None = None,
    write: bool = True,
) -> None:
    """Copy `size` bytes from offset 0 of `src` into the empty file `dst` through this
    thread's buffer; each chunk read is also passed to `feed` (in order).

    Whole blocks are written with O_DIRECT if `write` and unless `direct.write` is False
    (a `write` of False leaves `direct.write` as it is), and, if no
    page of `src` is in the page cache, read with O_DIRECT unless `direct.read` is
    False (what the calls learn is kept in `direct`).
    """
    d = direct if direct is not None else Direct()
    mv = copy_buffer()
    wdirect = write and d.write is not False
    if wdirect and size >= DIRECT_ALIGN:
        # i_size first: the direct writes then fill a hole instead of extending the
        # file, which ext4 journals (orphan list) for every such write.
        os.ftruncate(dst, size)
    rdirect = d.read is not False and size >= DIRECT_ALIGN and cached_pages(src) == 0
    off = 0
    while off < size:
        want = min(COPY_CHUNK, size - off)
        got, rused = read_chunk(src, mv, want, off, direct=rdirect)
        if rused is not None:
            d.read = rdirect = rused
        if got != want:
            off += got
            break
        if feed is not None:
            feed(mv[:want])
        d.learn_write(write_chunk(dst, mv[:want], off, direct=wdirect))
        wdirect = wdirect and d.write is not False
        off += want
    if off != size:
        raise OSError(errno.EIO, f"file shrank while it was copied ({off} of {size} bytes)")
