"""Reading a blob as it streams: digest and size checked at its end, gzip or zstd decoded.

A layer blob goes through two verifiers (OpenedImage.open_layer): the
compressed bytes against the manifest's digest and size, the decompressed tar
against the config's diff_id. Decompression output is bounded by the caller's
buffer, so a small blob of zeros never inflates in memory.
"""

from __future__ import annotations

import hashlib
import io
import mmap
import queue
import threading
import zlib
from collections.abc import Callable
from typing import Any, BinaryIO

import zstandard

from cfsboot.errors import die

GZIP_MAGIC = b"\x1f\x8b"
# Compressed input zstd takes at a time (its own default: 128 KiB). Every read of it
# takes and gives back the GIL a few times (socket, blob hash), and each time the
# reading thread (ReadAhead) may wait a switch interval for the tar parser's thread.
# Reading the test OS image beside a thread running bytecode took 26.2 s with 128 KiB
# reads, 9.6 s with 1 MiB, 3.3 s with 4 MiB and ReadAhead's 4 MiB chunks (0.8 s alone).
ZSTD_READ = 4 << 20
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# ReadAhead buffers of readers closed, for the next one (at most ReadAhead.DEPTH).
_spare: list[mmap.mmap] = []
_spare_lock = threading.Lock()


class VerifyingReader(io.RawIOBase):
    """Reads a blob, hashing it; at EOF the size and digest must match or it raises."""

    def __init__(self, raw: BinaryIO, digest: str | None, size: int | None, what: str) -> None:
        self.raw = raw
        self.digest = digest
        self.expected_size = size
        self.what = what
        alg = digest.split(":", 1)[0] if digest else "sha256"
        self.hash = hashlib.new(alg)
        self.count = 0
        self.done = False
        self.on_read: Callable[[int], None] | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        view = memoryview(b)
        n = self.raw.readinto(view)  # type: ignore[attr-defined]
        if not n:
            self._finish()
            return 0
        self.hash.update(view[:n])
        self.count += n
        if self.expected_size is not None and self.count > self.expected_size:
            self.done = True
            die(f"{self.what} is larger than its declared {self.expected_size} bytes")
        if self.on_read is not None:
            self.on_read(n)
        return int(n)

    def _finish(self) -> None:
        if self.done:
            return
        self.done = True
        if self.expected_size is not None and self.count > self.expected_size:
            die(f"{self.what} is larger than its declared {self.expected_size} bytes")
        if self.expected_size is not None and self.count != self.expected_size:
            die(
                f"{self.what} is truncated: {self.count} bytes, "
                f"the manifest says {self.expected_size}"
            )
        if self.digest is not None:
            got = f"{self.hash.name}:{self.hash.hexdigest()}"
            if got != self.digest:
                die(f"{self.what} digest mismatch: expected {self.digest}, got {got}")

    def drain(self) -> None:
        """Read to the end so that the digest is checked."""
        buf = bytearray(1 << 20)
        while self.readinto(buf):
            pass


class _Prefixed(io.RawIOBase):
    def __init__(self, prefix: bytes, raw: BinaryIO) -> None:
        self.prefix = prefix
        self.raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.prefix:
            n = min(len(b), len(self.prefix))
            b[:n] = self.prefix[:n]
            self.prefix = self.prefix[n:]
            return n
        return int(self.raw.readinto(b))  # type: ignore[attr-defined]


class _Gunzip(io.RawIOBase):
    """gzip decompression across concatenated members; trailing junk is corruption.

    Output is bounded by the caller's buffer (zlib's max_length): a layer of
    highly compressible data (sparse files, zeros) never inflates in memory.
    """

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.d = zlib.decompressobj(31)
        self.pending = b""  # compressed input not yet given to (or consumed by) zlib
        self.eof = False

    def readable(self) -> bool:
        return True

    def _more(self) -> bool:
        chunk = self.raw.read(1 << 18)
        self.pending += chunk
        return bool(chunk)

    def _next_member(self) -> bool:
        """After a member's end: start the next one; False at the end of the blob."""
        while True:  # a loop, not a recursion: the zero padding may be long
            while len(self.pending) < len(GZIP_MAGIC) and self._more():
                pass
            if not self.pending:
                return False
            if self.pending.startswith(GZIP_MAGIC):
                self.d = zlib.decompressobj(31)
                return True
            if self.pending.strip(b"\0"):
                die("corrupt layer: data after the gzip stream")
            self.pending = b""  # zero padding after the last member (some tools write it)
            if not self._more():
                return False

    def readinto(self, b: Any) -> int:
        want = len(b)
        while not self.eof and want:
            if self.d.eof and not self._next_member():
                self.eof = True
                break
            if not self.pending and not self._more():
                die("corrupt layer: gzip stream is truncated")
            try:
                out = self.d.decompress(self.pending, want)
            except zlib.error as e:
                die(f"corrupt layer: gzip: {e}")
            self.pending = self.d.unused_data if self.d.eof else self.d.unconsumed_tail
            if out:
                n = len(out)
                b[:n] = out
                return n
        return 0


class _Unzstd(io.RawIOBase):
    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        # read_across_frames: zstd:chunked layers are many frames (bootc#2408).
        self.r = zstandard.ZstdDecompressor().stream_reader(
            raw, read_size=ZSTD_READ, read_across_frames=True, closefd=False
        )

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        try:
            return int(self.r.readinto(b))
        except zstandard.ZstdError as e:
            die(f"corrupt layer: zstd: {e}")


def decompress(raw: BinaryIO) -> BinaryIO:
    """A reader of the tar inside a layer blob, compression detected from its magic."""
    head = raw.read(4)
    pre = _Prefixed(head, raw)
    if head[:2] == GZIP_MAGIC:
        inner: io.RawIOBase = _Gunzip(pre)  # type: ignore[arg-type]
    elif head == ZSTD_MAGIC:
        inner = _Unzstd(pre)  # type: ignore[arg-type]
    else:
        inner = pre
    return io.BufferedReader(inner, buffer_size=1 << 20)


class ReadAhead(io.RawIOBase):
    """Reads `source` on a thread of its own, CHUNK bytes at a time, ahead of the reader.

    A layer's compressed bytes are read, hashed, decompressed and hashed again in C
    calls that let go of the GIL for a whole chunk each, so that work runs on the
    second core while the reading thread parses the tar and hashes the files in it.
    What the source raises (a digest mismatch at its end, a corrupt stream) is raised
    to the reader at the same point of the stream. Up to DEPTH buffers go round between
    the two threads, mapped as the thread first needs them (not zeroed: the memset of
    bytearrays took a fifth of an import's page faults) and kept, once the reader is
    closed, for the next layer's (fresh memory costs a page fault a page).
    """

    # Each chunk costs the thread a few GIL handovers (hashes, queue), each a wait for the
    # parser's thread: 4 MiB chunks and ZSTD_READ took the test OS image's import from
    # 2.17 s to 1.96 s (1 MiB each: medians of 5, cold, local registry). DEPTH go round.
    CHUNK = 4 << 20
    DEPTH = 6
    # How long close() lets the thread finish its read before it calls `interrupt`.
    PATIENCE = 2.0

    def __init__(self, source: BinaryIO, interrupt: Callable[[], None] | None = None) -> None:
        """`interrupt`: wakes a read of `source` blocked in the thread (a stalled network
        connection), so that close() (after Ctrl-C, or an error) need not wait for it."""
        self.source = source
        self._interrupt = interrupt
        self._free: queue.Queue[mmap.mmap] = queue.Queue()
        self._made = 0  # buffers this reader took from _spare or mapped (at most DEPTH)
        self._full: queue.Queue[tuple[mmap.mmap, int] | BaseException | None] = queue.Queue()
        self._stop = threading.Event()
        self._buf: mmap.mmap | None = None
        self._view = memoryview(b"")
        self._eof = False
        self._thread = threading.Thread(target=self._produce, name="cfsboot-read", daemon=True)
        self._thread.start()

    def readable(self) -> bool:
        return True

    def _produce(self) -> None:
        item: tuple[mmap.mmap, int] | BaseException | None = None
        buf: mmap.mmap | None = None
        try:
            while True:
                buf = self._take_free()
                if buf is None:
                    return  # closed by the reader
                n = self.source.readinto(buf)  # type: ignore[attr-defined]
                if not n:
                    break
                self._full.put((buf, n))
                buf = None
        except BaseException as e:  # handed to the reader, raised there
            item = e
        if buf is not None:
            self._free.put(buf)  # (kept by close() with the others)
        self._full.put(item)

    def _take_free(self) -> mmap.mmap | None:
        if self._made < self.DEPTH and not self._stop.is_set():
            try:
                return self._free.get_nowait()
            except queue.Empty:
                pass
            self._made += 1
            with _spare_lock:
                if _spare:
                    return _spare.pop()
            return mmap.mmap(-1, self.CHUNK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        while not self._stop.is_set():
            try:
                return self._free.get(timeout=0.1)
            except queue.Empty:
                continue
        return None

    def readinto(self, b: Any) -> int:
        if not self._view:
            if self._eof:
                return 0
            if self._buf is not None:
                self._free.put(self._buf)
                self._buf = None
            item = self._full.get()
            if item is None or isinstance(item, BaseException):
                self._eof = True
                self._thread.join()
                if item is not None:
                    raise item
                return 0
            self._buf, n = item
            self._view = memoryview(self._buf)[:n]
        n = min(len(b), len(self._view))
        b[:n] = self._view[:n]
        self._view = self._view[n:]
        return n

    def close(self) -> None:
        if not self.closed:
            self._stop.set()
            self._view = memoryview(b"")
            self._thread.join(self.PATIENCE if self._interrupt is not None else None)
            if self._thread.is_alive():
                assert self._interrupt is not None
                self._interrupt()
                self._thread.join()
            self._keep_buffers()
        super().close()

    def _keep_buffers(self) -> None:
        """Once the thread has ended: its buffers to _spare, for the next layer's reader."""
        bufs = [] if self._buf is None else [self._buf]
        self._buf = None
        for q in (self._free, self._full):
            while not q.empty():
                item = q.get_nowait()
                if isinstance(item, mmap.mmap):
                    bufs.append(item)
                elif isinstance(item, tuple):
                    bufs.append(item[0])
        with _spare_lock:
            _spare.extend(bufs[: max(0, ReadAhead.DEPTH - len(_spare))])
