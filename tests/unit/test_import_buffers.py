"""The import's data path without fresh memory: a layer read ahead on a thread of its own
(streams.ReadAhead), file contents read into pooled page-aligned buffers
(directio.BufferRing, tar.EntryData.readinto) and written from them with O_DIRECT
(ObjectStore.add_bytes(aligned=True))."""

from __future__ import annotations

import ctypes
import io
import os
import random
import tarfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cfsboot.composefs.directio import DIRECT_ALIGN, BufferPool
from cfsboot.composefs.fsverity import digest_bytes
from cfsboot.composefs.objectstore import ObjectStore
from cfsboot.composefs.repository import Repository
from cfsboot.errors import CfsbootError
from cfsboot.image.objectsink import ObjectSink
from cfsboot.oci import tar
from cfsboot.oci.streams import ReadAhead
from setuproot.contract import HashAlg


def _address(buf: object) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(buf))  # type: ignore[arg-type]


# -- BufferPool ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "cls"), [(1, 4096), (4096, 4096), (4097, 8192), (65, 4096), (1 << 20, 1 << 20)]
)
def test_pool_size_classes(size: int, cls: int) -> None:
    pool = BufferPool(1 << 20)
    buf, view = pool.take(size)
    assert (len(buf), len(view)) == (cls, size)
    assert _address(buf) % DIRECT_ALIGN == 0  # O_DIRECT needs it
    pool.give(buf, view)


def test_pool_hands_back_what_was_given_and_keeps_at_most_its_limit() -> None:
    pool = BufferPool(3 * 8192)
    taken = [pool.take(5000) for _ in range(4)]
    for buf, view in taken:
        pool.give(buf, view)
    assert pool._kept == 3 * 8192  # the fourth was unmapped
    assert taken[3][0].closed
    again = [pool.take(8000)[0] for _ in range(4)]
    assert {id(b) for b in again[:3]} == {id(b) for b, _ in taken[:3]}
    assert again[3] not in [b for b, _ in taken]  # a new one
    assert pool._kept == 0


def test_pool_clear_unmaps_what_it_kept_and_keeps_nothing_more() -> None:
    pool = BufferPool(1 << 20)
    kept, view = pool.take(5000)
    out = pool.take(5000)
    pool.give(kept, view)
    pool.clear()
    assert kept.closed and pool._kept == 0
    pool.give(*out)  # given back after the clear: unmapped, not kept
    assert out[0].closed and pool._kept == 0


def test_pool_view_is_released_when_given_back() -> None:
    pool = BufferPool(1 << 20)
    buf, view = pool.take(100)
    pool.give(buf, view)
    with pytest.raises(ValueError, match="released"):
        view[0]


# -- EntryData.readinto ----------------------------------------------------------------


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_entry_readinto_fills_the_view_and_the_next_member_follows() -> None:
    files = {"a": os.urandom(5000), "b": b"x" * 70, "c": os.urandom(1 << 20)}
    got = {}
    for entry, data in tar.entries(io.BufferedReader(io.BytesIO(_tar(files)))):
        view = memoryview(bytearray(entry.size))
        data.readinto(view[: entry.size // 2])
        data.readinto(view[entry.size // 2 :])
        got[entry.path.decode()] = bytes(view)
    assert got == files


def test_entry_readinto_refuses_more_than_the_member_has() -> None:
    stream = io.BufferedReader(io.BytesIO(_tar({"a": b"y" * 100})))
    for _, data in tar.entries(stream):
        with pytest.raises(ValueError, match="101 bytes asked of a member with 100 left"):
            data.readinto(memoryview(bytearray(101)))
        data.readinto(memoryview(bytearray(100)))


def test_entry_readinto_of_a_truncated_tar_says_so() -> None:
    raw = _tar({"a": os.urandom(3000)})[: 512 + 1000]
    with pytest.raises(tar.TarError, match=r"truncated tar: end of stream inside file data"):
        for _, data in tar.entries(io.BufferedReader(io.BytesIO(raw))):
            data.readinto(memoryview(bytearray(3000)))


# -- ReadAhead -------------------------------------------------------------------------


class _Source(io.RawIOBase):
    """Hands out `data` in pieces of random sizes, then raises `error` (if any)."""

    def __init__(self, data: bytes, error: BaseException | None = None) -> None:
        self.data = memoryview(data)
        self.error = error
        self.rng = random.Random(7)
        self.threads: set[str] = set()

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        self.threads.add(threading.current_thread().name)
        if not self.data:
            if self.error is not None:
                raise self.error
            return 0
        n = min(len(b), len(self.data), self.rng.randrange(1, 3 * ReadAhead.CHUNK))
        b[:n] = self.data[:n]
        self.data = self.data[n:]
        return n


def test_read_ahead_gives_every_byte_in_order_from_another_thread() -> None:
    data = os.urandom(5 * ReadAhead.CHUNK + 12345)
    src = _Source(data)
    reader = io.BufferedReader(ReadAhead(src), 1 << 20)  # type: ignore[arg-type]
    out = bytearray()
    sizes = [1, 511, 512, 4096, 100_000, 3 << 20]
    i = 0
    while chunk := reader.read(sizes[i % len(sizes)]):
        out += chunk
        i += 1
    assert bytes(out) == data
    assert src.threads == {"cfsboot-read"}
    reader.close()


def test_read_ahead_raises_the_sources_error_after_the_bytes_before_it() -> None:
    data = os.urandom(3 * ReadAhead.CHUNK)
    reader = ReadAhead(_Source(data, CfsbootError("layer sha256:x digest mismatch")))  # type: ignore[arg-type]
    out = bytearray()
    buf = bytearray(100_000)
    with pytest.raises(CfsbootError, match="digest mismatch"):
        while n := reader.readinto(buf):
            out += buf[:n]
    assert bytes(out) == data


def test_read_ahead_closed_early_stops_its_thread() -> None:
    """The reader gives up (a corrupt tar): the thread must not stay blocked on a full ring."""
    reader = ReadAhead(_Source(os.urandom(20 * ReadAhead.CHUNK)))  # type: ignore[arg-type]
    reader.readinto(bytearray(10))
    reader.close()
    assert not reader._thread.is_alive()
    assert reader.closed


class _Stalled(io.RawIOBase):
    """A source whose second read blocks until interrupt() (a stalled connection)."""

    def __init__(self) -> None:
        self.woken = threading.Event()
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        self.reads += 1
        if self.reads > 1:
            self.woken.wait(30)
            raise CfsbootError("the connection was shut down")
        b[:1] = b"x"
        return 1

    def interrupt(self) -> None:
        self.woken.set()


def test_read_ahead_close_interrupts_a_read_that_does_not_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ReadAhead, "PATIENCE", 0.05)
    src = _Stalled()
    reader = ReadAhead(src, src.interrupt)  # type: ignore[arg-type]
    assert reader.readinto(bytearray(10)) == 1
    reader.close()
    assert src.woken.is_set()
    assert not reader._thread.is_alive()


def test_read_ahead_close_lets_a_read_that_ends_end() -> None:
    woken: list[bool] = []
    reader = ReadAhead(_Source(os.urandom(20 * ReadAhead.CHUNK)), lambda: woken.append(True))  # type: ignore[arg-type]
    reader.readinto(bytearray(10))
    reader.close()
    assert not reader._thread.is_alive()
    assert woken == []


# -- ObjectSink through the pool, O_DIRECT writes --------------------------------------


def _entries(files: dict[str, bytes]) -> list[tuple[tar.TarEntry, tar.EntryData]]:
    return list(tar.entries(io.BufferedReader(io.BytesIO(_tar(files)))))


@pytest.mark.parametrize("ring", [None, 256 << 10])  # small: it wraps, and overflows
def test_sink_objects_from_reused_buffers_hold_their_own_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ring: int | None
) -> None:
    """Hundreds of files of a few sizes, written by the writer threads while the buffers go
    round: a buffer handed out again before its write ended would show up as an object
    whose contents are not its name's."""
    from cfsboot.image import objectsink

    if ring is not None:
        monkeypatch.setattr(objectsink, "RING_BYTES", ring)
    repo = Repository.init(tmp_path / "repo", algorithm=HashAlg.SHA256, insecure=True)
    rng = random.Random(3)
    files = {f"f{i}": rng.randbytes(rng.choice([100, 5000, 9000, 70_000])) for i in range(400)}
    files["dup"] = files["f1"]
    stream = io.BufferedReader(io.BytesIO(_tar(files)))
    sink = ObjectSink(HashAlg.SHA256, repo)
    digests = {}
    with repo.objects.batch():
        for entry, data in tar.entries(stream):
            digests[entry.path.decode()] = sink.store(data, entry.size)
        assert sink.wait() is None
    assert not sink._buffers._out  # they were given back
    sink.close()
    assert sink._buffers._map.closed  # and unmapped at the end
    for name, content in files.items():
        assert digests[name] == digest_bytes(content).hex()
        assert repo.objects.path(digests[name]).read_bytes() == content


def test_add_bytes_aligned_writes_whole_blocks_direct(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects", HashAlg.SHA256)
    store.root.mkdir()
    store._verity_works = False  # as learnt on a filesystem without fs-verity
    pool = BufferPool(1 << 20)
    data = os.urandom(3 * DIRECT_ALIGN + 123)
    buf, view = pool.take(len(data))
    view[:] = data
    hexd = digest_bytes(data).hex()
    assert store.add_bytes(hexd, view, aligned=True)
    assert store.path(hexd).read_bytes() == data
    # tmpfs refuses O_DIRECT: learnt False and written buffered; elsewhere True.
    assert store._direct.write in (True, False)
    pool.give(buf, view)


def test_add_bytes_not_direct_where_verity_may_be_enabled(tmp_path: Path) -> None:
    """fs-verity reads the file back: from the page cache only if written through it."""
    store = ObjectStore(tmp_path / "objects", HashAlg.SHA256)
    store.root.mkdir()
    store._verity_works = None  # not known yet
    pool = BufferPool(1 << 20)
    data = os.urandom(2 * DIRECT_ALIGN)
    buf, view = pool.take(len(data))
    view[:] = data
    hexd = digest_bytes(data).hex()
    with store.batch():
        store.add_bytes(hexd, view, aligned=True)
    assert store._direct.write is None  # never tried
    assert store.path(hexd).read_bytes() == data


def test_writeback_started_only_for_what_went_through_the_page_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sync_file_range starts the writeback of a staged object's cached pages; after an
    O_DIRECT write only a tail is cached, left to the batch's syncfs."""
    from cfsboot.composefs import objectstore

    started: list[int] = []
    monkeypatch.setattr(objectstore, "start_writeback", started.append)
    store = ObjectStore(tmp_path / "objects", HashAlg.SHA256)
    store.root.mkdir()
    store._verity_works = False
    pool = BufferPool(1 << 20)
    direct, cached = os.urandom(2 * DIRECT_ALIGN + 5), os.urandom(2 * DIRECT_ALIGN + 6)
    left = os.urandom(300)
    buf, view = pool.take(len(direct))
    view[:] = direct
    with store.batch():
        store.add_bytes(digest_bytes(direct).hex(), view, aligned=True)
        took_direct = store._direct.write
        store.add_bytes(digest_bytes(cached).hex(), cached)
        store.add_bytes(digest_bytes(left).hex(), left, writeback=False)  # left to syncfs
    assert len(started) == (1 if took_direct else 2)
    for data in (direct, cached, left):
        assert store.path(digest_bytes(data).hex()).read_bytes() == data


def _sink_files(n: int, size: int) -> dict[str, bytes]:
    rng = random.Random(n)
    return {f"f{i}": rng.randbytes(size) for i in range(n)}


def _stream_entries(files: dict[str, bytes]) -> Iterator[tuple[tar.TarEntry, tar.EntryData]]:
    """Each member's data readable until the next member is asked for (_entries is not)."""
    return tar.entries(io.BufferedReader(io.BytesIO(_tar(files))))


def test_sink_hands_small_objects_to_the_writers_in_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cfsboot.image import objectsink

    repo = Repository.init(tmp_path / "repo", algorithm=HashAlg.SHA256, insecure=True)
    files = _sink_files(300, 2000)
    sink = ObjectSink(HashAlg.SHA256, repo)
    assert sink._pool is not None
    tasks: list[object] = []
    submit = sink._pool.submit

    def counted(*args: Any) -> Any:
        tasks.append(args)
        return submit(*args)

    monkeypatch.setattr(sink._pool, "submit", counted)
    with repo.objects.batch():
        digests = [sink.store(data, e.size) for e, data in _stream_entries(files)]
        assert sink.wait() is None
    sink.close()
    # 300 objects, BATCH_OBJECTS a task at most: a few tasks, not one per object.
    assert -(-300 // objectsink.BATCH_OBJECTS) <= len(tasks) < 300 // 8
    assert sink._in_flight == 0
    for content, hexd in zip(files.values(), digests, strict=True):
        assert repo.objects.path(hexd).read_bytes() == content


def test_sink_write_failure_gives_every_buffer_back_and_is_raised_by_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = Repository.init(tmp_path / "repo", algorithm=HashAlg.SHA256, insecure=True)
    files = _sink_files(40, 3000)
    bad = digest_bytes(files["f7"]).hex()
    add_bytes = repo.objects.add_bytes

    def failing(hexd: str, data: memoryview, **kw: bool) -> bool:
        if hexd == bad:
            raise OSError(28, "No space left on device")
        return add_bytes(hexd, data, **kw)

    monkeypatch.setattr(repo.objects, "add_bytes", failing)
    sink = ObjectSink(HashAlg.SHA256, repo)
    taken: list[int] = []
    given: list[int] = []
    take, give = sink._buffers.take, sink._buffers.give

    def counted_take(n: int) -> Any:
        taken.append(n)
        return take(n)

    def counted_give(b: Any, v: Any) -> None:
        given.append(len(v))
        give(b, v)

    monkeypatch.setattr(sink._buffers, "take", counted_take)
    monkeypatch.setattr(sink._buffers, "give", counted_give)
    for entry, data in _stream_entries(files):
        sink.store(data, entry.size)
    error = sink.wait()
    assert isinstance(error, OSError) and error.errno == 28
    assert len(given) == len(taken) == 40
    assert sink._in_flight == 0
    sink.close()


def test_sink_bound_on_bytes_in_flight_does_not_wait_on_its_own_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Objects queued for a batch count as in flight: with a bound below a batch's size the
    reading thread hands the batch over before it waits for room, or it would wait forever."""
    from cfsboot.image import objectsink

    monkeypatch.setattr(objectsink, "MAX_IN_FLIGHT", 3 * 5000)
    monkeypatch.setattr(objectsink, "BATCH_BYTES", 1 << 30)
    monkeypatch.setattr(objectsink, "BATCH_OBJECTS", 1000)
    repo = Repository.init(tmp_path / "repo", algorithm=HashAlg.SHA256, insecure=True)
    files = _sink_files(50, 5000)
    sink = ObjectSink(HashAlg.SHA256, repo)
    done = threading.Event()

    def run() -> None:
        with repo.objects.batch():
            for entry, data in _stream_entries(files):
                sink.store(data, entry.size)
            assert sink.wait() is None
        done.set()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    assert done.is_set(), "the reading thread waited on bytes it had not handed over"
    sink.close()
    for content in files.values():
        assert repo.objects.path(digest_bytes(content).hex()).read_bytes() == content


def test_sink_syncs_small_objects_as_they_add_up_and_reports_a_failed_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writers ask for a sync every WRITEBACK_EVERY bytes they leave to the page cache;
    a sync that fails is the import's failure (the batch's syncfs would not see it again)."""
    from cfsboot.image import objectsink

    synced: list[int] = []
    fail = threading.Event()

    def syncfs(fd: int) -> None:
        synced.append(fd)
        if fail.is_set():
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(objectsink, "syncfs", syncfs)
    monkeypatch.setattr(objectsink, "WRITEBACK_EVERY", 20_000)
    monkeypatch.setattr(objectsink, "BATCH_OBJECTS", 4)
    repo = Repository.init(tmp_path / "repo", algorithm=HashAlg.SHA256, insecure=True)
    sink = ObjectSink(HashAlg.SHA256, repo)
    with repo.objects.batch():
        for entry, data in _stream_entries(_sink_files(40, 3000)):
            sink.store(data, entry.size)
        assert sink.wait() is None
    assert synced  # 120,000 bytes: asked for about every 20,000
    fail.set()
    for entry, data in _stream_entries(_sink_files(41, 3000)):
        sink.store(data, entry.size)
    deadline = time.monotonic() + 10
    while sink._writeback is not None and sink._writeback.error is None:
        assert time.monotonic() < deadline, "no sync after the failure was asked for"
        time.sleep(0.01)
    error = sink.wait()
    assert isinstance(error, OSError) and error.errno == 5
    sink.close()


def test_sink_a_buffer_that_cannot_be_given_back_neither_hangs_nor_hides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure giving a buffer back (a view still exported) still takes its bytes out of
    flight: the reading thread waiting for room would otherwise wait forever."""
    from cfsboot.image import objectsink

    monkeypatch.setattr(objectsink, "MAX_IN_FLIGHT", 4 * 3000)
    monkeypatch.setattr(objectsink, "BATCH_OBJECTS", 2)
    repo = Repository.init(tmp_path / "repo", algorithm=HashAlg.SHA256, insecure=True)
    sink = ObjectSink(HashAlg.SHA256, repo)
    give = sink._buffers.give
    calls: list[int] = []

    def give_once_failing(b: Any, v: Any) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise BufferError("cannot close exported pointers exist")
        give(b, v)

    monkeypatch.setattr(sink._buffers, "give", give_once_failing)
    result: list[BaseException | None] = []

    def run() -> None:
        for entry, data in _stream_entries(_sink_files(30, 3000)):
            sink.store(data, entry.size)
        result.append(sink.wait())

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(30)
    assert result, "the reading thread waited for bytes a failed batch never gave back"
    assert isinstance(result[0], BufferError)
    assert sink._in_flight == 0
    sink.close()
