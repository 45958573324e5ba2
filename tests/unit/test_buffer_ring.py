"""directio.BufferRing: the import's file buffers cut in turn from one mapping, and where
the ring has no room the overflow pool; streams.ReadAhead's buffers kept for the next
layer; a batch that looks for no object under an objects/XX/ it found missing."""

from __future__ import annotations

import ctypes
import io
import os
import random
import threading
from pathlib import Path

import pytest

from cfsboot.composefs.directio import DIRECT_ALIGN, BufferPool, BufferRing, Lease
from cfsboot.composefs.fsverity import digest_bytes
from cfsboot.composefs.objectstore import ObjectStore
from cfsboot.oci import streams
from cfsboot.oci.streams import ReadAhead
from setuproot.contract import HashAlg

PAGE = DIRECT_ALIGN


def _address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


def _ring(pages: int, largest: int | None = None) -> BufferRing:
    return BufferRing(pages * PAGE, BufferPool(1 << 20), largest=largest)


def test_buffers_are_page_aligned_views_of_the_size_asked() -> None:
    ring = _ring(16)
    for size in (1, 100, PAGE, PAGE + 1, 3 * PAGE):
        lease, view = ring.take(size)
        assert len(view) == size and _address(view) % DIRECT_ALIGN == 0  # O_DIRECT
        assert not isinstance(lease, type(ring._map))  # from the ring, not the overflow
        ring.give(lease, view)
    assert not ring._out and ring._head == 0


def test_buffers_follow_each_other_and_the_head_goes_back_when_all_are_given() -> None:
    ring = _ring(16)
    (a, va), (b, vb) = ring.take(PAGE + 1), ring.take(10)
    assert _address(vb) - _address(va) == 2 * PAGE  # a takes whole pages
    ring.give(a, va)
    assert ring._head == 3 * PAGE  # b is still out
    ring.give(b, vb)
    assert ring._head == 0  # nothing out: the next starts on pages touched already
    c, vc = ring.take(5)
    assert _address(vc) == ring._out[0].start + _address(memoryview(ring._map))
    ring.give(c, vc)


def test_one_given_back_early_is_freed_with_the_older_ones() -> None:
    ring = _ring(4)
    leases = [ring.take(PAGE) for _ in range(4)]
    ring.give(*leases[1])  # the oldest (0) still out: no room yet
    lease, view = ring.take(PAGE)
    assert isinstance(lease, type(ring._map))  # from the overflow pool
    ring.give(lease, view)
    ring.give(*leases[0])  # 0 and 1 free now: the head wraps to the start
    lease, view = ring.take(2 * PAGE)
    assert lease.start == 0  # type: ignore[union-attr]
    for lease_view in [(lease, view), *leases[2:]]:
        ring.give(*lease_view)
    assert not ring._out


def test_a_buffer_too_big_for_the_rest_of_the_ring_wraps_or_overflows() -> None:
    ring = _ring(8)
    first = ring.take(3 * PAGE)
    second = ring.take(3 * PAGE)
    ring.give(*first)  # free: pages 0-2 and 6-7
    wrapped = ring.take(3 * PAGE)  # does not fit in 6-7: at the start
    assert wrapped[0].start == 0  # type: ignore[union-attr]
    over = ring.take(PAGE)  # out: 3-5 (second) and 0-2 (wrapped): none between them
    assert isinstance(over[0], type(ring._map))
    for lease_view in (second, wrapped, over):
        ring.give(*lease_view)


def test_sizes_above_largest_come_from_the_overflow_pool() -> None:
    ring = _ring(16, largest=2 * PAGE)
    lease, view = ring.take(2 * PAGE + 1)
    assert isinstance(lease, type(ring._map)) and len(view) == 2 * PAGE + 1
    ring.give(lease, view)
    assert ring.overflow._kept == 4 * PAGE  # back in the pool (its 16 KiB class)


def test_no_two_buffers_out_ever_share_a_byte() -> None:
    """Random sizes, given back in random order from other threads, each filled with its
    own byte: every buffer still holds its byte when it is given back."""
    ring = _ring(64, largest=24 * PAGE)
    rng = random.Random(7)
    out: list[tuple[Lease, memoryview, int]] = []
    lock = threading.Lock()
    failures: list[str] = []

    def give_some() -> None:
        while True:
            with lock:
                if not out:
                    return
                lease, view, mark = out.pop(rng.randrange(len(out)))
            if view.tobytes() != bytes([mark]) * len(view):
                failures.append(f"buffer {mark} overwritten")
            ring.give(lease, view)

    for round_ in range(40):
        for i in range(rng.randrange(1, 30)):
            lease, view = ring.take(rng.choice((1, 700, PAGE, 5 * PAGE + 3, 20 * PAGE)))
            mark = (round_ * 31 + i) % 251 + 1
            view[:] = bytes([mark]) * len(view)
            with lock:
                out.append((lease, view, mark))
        givers = [threading.Thread(target=give_some) for _ in range(3)]
        for t in givers:
            t.start()
        for t in givers:
            t.join()
    assert not failures
    assert not ring._out and ring._head == 0
    ring.clear()
    assert ring._map.closed


# -- ReadAhead's buffers ---------------------------------------------------------------


@pytest.fixture
def no_spare(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    spare: list[object] = []
    monkeypatch.setattr(streams, "_spare", spare)
    return spare


def test_read_ahead_maps_buffers_as_needed_and_keeps_them_for_the_next(
    no_spare: list[object],
) -> None:
    data = os.urandom(ReadAhead.CHUNK + 10)
    reader = ReadAhead(io.BytesIO(data))
    got = io.BufferedReader(reader, 1 << 20).read()
    assert got == data
    assert 1 <= reader._made <= ReadAhead.DEPTH
    made = reader._made
    reader.close()
    assert len(no_spare) == made  # every buffer it mapped, kept
    again = ReadAhead(io.BytesIO(data))
    assert io.BufferedReader(again, 1 << 20).read() == data
    again.close()
    assert len(no_spare) <= ReadAhead.DEPTH


def test_read_ahead_closed_early_keeps_its_buffers_once_its_thread_ended(
    no_spare: list[object],
) -> None:
    data = os.urandom(4 * ReadAhead.CHUNK)
    reader = ReadAhead(io.BytesIO(data))
    buf = bytearray(100)
    assert reader.readinto(buf) == 100 and bytes(buf) == data[:100]
    reader.close()
    assert not reader._thread.is_alive()
    assert 1 <= len(no_spare) <= ReadAhead.DEPTH


# -- a batch and the objects/XX/ it found missing ------------------------------------


def test_batch_looks_for_no_object_under_a_missing_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(tmp_path / "objects", HashAlg.SHA256)
    store.root.mkdir()
    store._verity_works = False
    old = b"old object" * 20
    store.add_bytes(digest_bytes(old).hex(), old)  # objects/XX/ of this one exists
    looked: list[str] = []
    exists = os.path.exists

    def looking(path: str) -> bool:
        looked.append(path)
        return exists(path)

    monkeypatch.setattr(os.path, "exists", looking)
    new = [os.urandom(300) for _ in range(50)]
    with store.batch():
        assert not store.add_bytes(digest_bytes(old).hex(), old)  # found: not written again
        for data in new:
            store.add_bytes(digest_bytes(data).hex(), data)
    old_dir = digest_bytes(old).hex()[:2]
    assert all(os.path.basename(os.path.dirname(p)) == old_dir for p in looked)
    for data in [old, *new]:
        assert store.path(digest_bytes(data).hex()).read_bytes() == data
    assert store._missing_dirs == {}


def test_batch_stages_again_what_another_writer_added_meanwhile(tmp_path: Path) -> None:
    """Another process (without the repository's lock) adds an object under an XX/ this
    batch found missing: it is staged again and renamed over the same content."""
    store = ObjectStore(tmp_path / "objects", HashAlg.SHA256)
    store.root.mkdir()
    store._verity_works = False
    first, racing = os.urandom(300), os.urandom(400)
    hexd = digest_bytes(racing).hex()
    other = ObjectStore(store.root, HashAlg.SHA256)
    other._verity_works = False
    with store.batch():
        store._unseen(hexd[:2])  # the batch looks at objects/XX/: missing
        other.add_bytes(hexd, racing)  # published at once, outside the batch
        assert store.add_bytes(hexd, racing)  # not looked for: staged again
        store.add_bytes(digest_bytes(first).hex(), first)
    assert store.path(hexd).read_bytes() == racing
    assert store.path(digest_bytes(first).hex()).read_bytes() == first
    assert not [p for p in store.root.iterdir() if p.name.startswith(".staging-")]
