"""The C module `_verity` (fs-verity hashing of whole buffers: libcrypto, or the CPU's SHA
extensions for sha256): the same bytes as the pure-Python code of fsverity.py, handed out
by native.py under the rule the mypyc modules follow, bad arguments refused, and the GIL
released while a buffer is hashed.

`make test` runs this file once more with CFSBOOT_PURE_PYTHON=1 (then fsverity must not
use the module; the comparisons import it directly).
"""

from __future__ import annotations

import hashlib
import importlib
import os
import random
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from cfsboot.composefs import fsverity, native
from setuproot.contract import HashAlg

MODULE = "cfsboot.composefs._verity"
STAGER = Path(native.__file__).resolve().parents[2]
MIB = 1 << 20
SIZES = [
    0, 1, 4095, 4096, 4097, 65535, 65536, 65537,
    4096 * 64 + 1,  # sha512: a second level (64 hashes a block)
    4096 * 128 + 1,  # sha256: a second level (128 hashes a block)
    3 * MIB + 5, 5 * MIB,
]  # fmt: skip


@pytest.fixture(scope="module")
def verity() -> ModuleType:
    """The built module, whatever CFSBOOT_PURE_PYTHON says (`make venv` / `make native`)."""
    assert native.compiled_path(MODULE), "the C module is not built: run `make native`"
    return importlib.import_module(MODULE)


def _data(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def _pure(call: str, *args: object) -> bytes:
    saved = fsverity._verity
    fsverity._verity = None
    try:
        out: bytes = getattr(fsverity, call)(*args)
        return out
    finally:
        fsverity._verity = saved


@pytest.fixture(params=[True, False], ids=["sha-ni", "libcrypto"])
def sha_ni(request: pytest.FixtureRequest, verity: ModuleType) -> Iterator[bool]:
    """sha256 blocks hashed with the CPU's SHA extensions (where it has them), or not."""
    was = verity.use_sha_ni(request.param)
    try:
        yield request.param
    finally:
        verity.use_sha_ni(was)


@pytest.mark.parametrize("size", [*SIZES, 2 * 4096, 3 * 4096, 3 * 4096 - 1])
@pytest.mark.parametrize("alg", list(HashAlg))
def test_c_and_pure_agree(verity: ModuleType, size: int, alg: HashAlg, sha_ni: bool) -> None:
    data = _data(size)
    leaves = _pure("_hash_blocks", alg, data)
    assert len(leaves) == -(-size // 4096) * alg.digest_size
    assert verity.leaf_hashes(data, str(alg)) == leaves
    assert verity.leaf_hashes(bytearray(data), alg) == leaves
    assert verity.leaf_hashes(memoryview(data), alg) == leaves
    digest = _pure("digest_bytes", data, alg)
    assert verity.digest(data, alg) == digest
    assert verity.digest_from_leaves(leaves, size, alg) == digest
    # Pieces of one buffer: the view's bounds, not the object's, are what is hashed.
    if size > 8192:
        piece = memoryview(data)[4096 : size - 3]
        assert verity.leaf_hashes(piece, alg) == _pure("_hash_blocks", alg, piece)
        assert verity.digest(piece, alg) == _pure("digest_bytes", piece, alg)


def test_known_digests(verity: ModuleType) -> None:
    """fsverity-utils' digests (as in test_fsverity's golden vectors), and the leaf hashes
    by hashlib itself."""
    assert verity.digest(b"hello world", "sha256").hex() == (
        "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64"
    )
    assert verity.digest(b"", "sha256").hex() == (
        "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95"
    )
    assert verity.digest(b"hello world", "sha512").hex().startswith("18430270729d162d4e469dac")
    data = _data(4096 * 2 + 7)
    expected = b"".join(
        hashlib.sha512(data[i : i + 4096].ljust(4096, b"\0")).digest() for i in (0, 4096, 8192)
    )
    assert verity.leaf_hashes(data, "sha512") == expected
    assert verity.leaf_hashes(b"", "sha256") == b""


def test_sha_ni_is_used_where_the_cpu_has_it(verity: ModuleType) -> None:
    was = verity.use_sha_ni(False)
    try:
        assert verity.use_sha_ni(True) is False
        has = "sha_ni" in Path("/proc/cpuinfo").read_text().split()
        assert verity.use_sha_ni(True) is has  # what the first call turned on
    finally:
        verity.use_sha_ni(was)


def test_an_empty_buffer_is_an_empty_file(verity: ModuleType) -> None:
    for alg in HashAlg:
        desc = fsverity.descriptor(alg, 0, bytes(alg.digest_size))
        assert verity.digest(b"", alg) == hashlib.new(str(alg), desc).digest()
        assert verity.digest_from_leaves(b"", 0, alg) == verity.digest(b"", alg)


def test_bad_arguments_raise(verity: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"^unknown hash algorithm 'md5' \(sha256 or sha512\)$"):
        verity.leaf_hashes(b"x", "md5")
    with pytest.raises(TypeError, match="^hash algorithm must be a str, not int$"):
        verity.digest(b"x", 1)
    with pytest.raises(TypeError, match="bytes-like object is required, not 'str'"):
        verity.leaf_hashes("text", "sha256")
    with pytest.raises(TypeError, match="bytes-like object is required, not 'NoneType'"):
        verity.digest(None, "sha256")
    with pytest.raises(TypeError, match=r"^leaf_hashes\(\) takes 2 arguments \(1 given\)$"):
        verity.leaf_hashes(b"x")
    with pytest.raises(TypeError, match=r"^digest_from_leaves\(\) takes 3 arguments"):
        verity.digest_from_leaves(b"", "sha256")
    with pytest.raises(ValueError, match="^leaf hashes: 31 bytes is not a whole number of"):
        verity.digest_from_leaves(bytes(31), 1, "sha256")
    with pytest.raises(ValueError, match=r"^leaf hashes: 1 hashes for 4097 bytes of data$"):
        verity.digest_from_leaves(bytes(32), 4097, "sha256")
    with pytest.raises(OverflowError):
        verity.digest_from_leaves(b"", -1, "sha256")
    # Through the public functions, either way: the same exceptions.
    for module in (verity, None):
        saved, fsverity._verity = fsverity._verity, module
        try:
            with pytest.raises(ValueError, match="'md5' is not a valid HashAlg"):
                fsverity.digest_bytes(b"x", "md5")  # type: ignore[arg-type]
            with pytest.raises(TypeError):
                fsverity.digest_bytes("text")  # type: ignore[arg-type]
        finally:
            fsverity._verity = saved


def _exports_seen(verity: ModuleType, size: int, calls: int) -> int:
    """How often a second thread found `buf` held by the hashing call while the main
    thread was inside it, over `calls` calls.

    A bytearray cannot change size while a buffer of it is exported, and the C function
    holds one for exactly the length of the call: the second thread meets that refusal
    only if it runs while the main thread is inside the call, i.e. only if the call has
    let go of the GIL. (Its appends lengthen the buffer by a byte now and then: harmless.)
    """
    buf = bytearray(_data(size))
    base = len(buf)
    stop = threading.Event()
    seen = 0

    def probe() -> None:
        nonlocal seen
        while not stop.is_set():
            try:
                if len(buf) > base:
                    del buf[-1]
                else:
                    buf.append(0)
            except BufferError:
                seen += 1

    worker = threading.Thread(target=probe)
    worker.start()
    try:
        for _ in range(calls):
            verity.leaf_hashes(buf, "sha256")
            if seen:
                break
    finally:
        stop.set()
        worker.join()
    return seen


def test_the_gil_is_released_while_a_large_buffer_is_hashed(verity: ModuleType) -> None:
    assert _exports_seen(verity, 32 * MIB, calls=50) > 0
    # The control: below 64 KiB the call keeps the GIL, and the probe never gets in.
    assert _exports_seen(verity, 4096 * 15, calls=2000) == 0


# -- which implementation runs -------------------------------------------------------

_PROBE = """
from cfsboot.composefs import fsverity
print(fsverity._verity.__name__ if fsverity._verity else None)
print(fsverity.digest_bytes(b"hello world").hex())
"""


def _probe(*, pure: bool, stager: Path = STAGER) -> tuple[str, str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    env["PYTHONPATH"] = f"{stager}:{STAGER.parent / 'setup-root'}"
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout
    used, digest = out.splitlines()
    return used, digest


HELLO = "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64"


def test_fsverity_uses_the_c_module_when_built_and_current() -> None:
    if os.environ.get(native.PURE_ENV) == "1":
        assert fsverity._verity is None
        return
    assert native.compiled_path(MODULE), "the C module is not built: run `make native`"
    assert not native.c_stale(MODULE), "the C module is older than its source: `make native`"
    assert fsverity._verity is not None and fsverity._verity.__name__ == MODULE
    assert _probe(pure=False) == (MODULE, HELLO)


def test_pure_python_on_request() -> None:
    assert _probe(pure=True) == ("None", HELLO)


def test_a_stale_c_module_leaves_the_pure_code_in_charge(tmp_path: Path) -> None:
    """An edited _verity.c must not be shadowed by the old build of it."""
    built = native.compiled_path(MODULE)
    assert built, "the C module is not built: run `make native`"
    copy = tmp_path / "stager"
    shutil.copytree(STAGER, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    assert _probe(pure=False, stager=copy) == (MODULE, HELLO)
    st = os.stat(built)
    os.utime(copy / "cfsboot/composefs/_verity.c", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _probe(pure=False, stager=copy) == ("None", HELLO)
    # Installed without its source (a wheel): nothing to be stale against, it is used.
    (copy / "cfsboot/composefs/_verity.c").unlink()
    assert _probe(pure=False, stager=copy) == (MODULE, HELLO)
