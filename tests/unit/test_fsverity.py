"""fs-verity digests: golden vectors, the `fsverity digest` tool, and the CLI.

The digest tests run twice: through the C module `_verity` and through the pure-Python
code (fsverity._verity set to None), whichever of the two native.py hands out.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfsboot import cli
from cfsboot.composefs import fsverity
from cfsboot.composefs.fsverity import FsVerityHasher, digest_bytes, digest_fd, digest_file
from cfstest.gates import tmpfs_dir
from setuproot.contract import HashAlg

PATTERN = bytes(range(256))


def pattern(size: int) -> bytes:
    return (PATTERN * (size // 256 + 1))[:size]


def zeros(size: int) -> bytes:
    return bytes(size)


IMPLS = ["c", "pure"]


@contextlib.contextmanager
def implementation(which: str) -> Iterator[None]:
    """fsverity with the C module (imported directly: also under CFSBOOT_PURE_PYTHON=1),
    or with its pure-Python code."""
    with pytest.MonkeyPatch.context() as mp:
        if which == "c":
            module = importlib.import_module("cfsboot.composefs._verity")  # built: make native
            mp.setattr(fsverity, "_verity", module)
        else:
            mp.setattr(fsverity, "_verity", None)
        yield


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> Iterator[str]:
    with implementation(request.param):
        yield request.param


# Produced by `fsverity digest --compact --hash-alg=…` (fsverity-utils 1.5) on these files.
# Sizes cover: empty, one partial block, block edges, two levels (1 MiB + 1), a full
# first level (128 sha256 hashes = 1 block), 129 blocks, the sha512 fan-out edge
# (64 hashes per block), and three and four levels (zeros, so that they stay fast).
GOLDEN: list[tuple[str, Callable[[int], bytes], int, str, str]] = [
    ("hello world", lambda _: b"hello world", 11,
     "1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64",
     "18430270729d162d4e469daca123ae61893db4b0583d8f7081e3bf4f92b88ba514e7982f10733fb6aa895195c5ae8fd2eb2c47a8be05513ce5a0c51a6f570409"),
    ("hello world\\n", lambda _: b"hello world\n", 12,
     "37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92",
     "4098b052d2427dc9029c85062215dd6e6c41667bfae09f5ce90a49f7e01fca295c89b16a4d2703ac5b0593f476ca174675ee51829c2f1fd07c4133a87041c1d7"),
    ("empty", pattern, 0,
     "3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95",
     "ccf9e5aea1c2a64efa2f2354a6024b90dffde6bbc017825045dce374474e13d10adb9dadcc6ca8e17a3c075fbd31336e8f266ae6fa93a6c3bed66f9e784e5abf"),
    ("1", pattern, 1,
     "b803429503d95915829b29fdbc8bbad142f3abfd11b1cadf5526582e685c0551",
     "9fcf5172b085b1c8f9365eecb37a1869e193a4705654a5829f11939cd01d5c0fd97276be8cd9d49f76cfc8dcfeb80f8128e3548a1de50b56912b9e3fc7bde27b"),
    ("4095", pattern, 4095,
     "c91eabf17d32ede8864edf3412c084d8ff485ac932f7ccbf91a2c7f0efccb85e",
     "f15282a987ea369d0138a0cccfc5a865cac6eff5a61baca50c88aa0886552ab230d7a9e419965aaf1427fe24040bbbe89a9cd032f70eae056ec8fde0c6467818"),
    ("4096", pattern, 4096,
     "15a0095100272ab90a2209e97f8a2c54dff6f84d2b29524f95d92fe23b6ef25b",
     "bc9268f3b36837ce4e5197cd2d0556f8f66af7dbe9fc81c63c346f46e1a52059b27c433aa94e483c063e1f91f76093338e05bd2ec413410c4f0a94ae0ad99cd3"),
    ("4097", pattern, 4097,
     "eaf219cbd8f40c7424e41b1034906a8d70b7a9ae42f0eca54393b965866f5932",
     "f3cac40d4a13003faaa98ce858b8391e34062f5a544d7855f2bb5049fbe0e345e35fb9ac450484de07611f202d610e117598ca738b83f4cc363d31fec5178095"),
    ("1MiB+1", pattern, 1048577,
     "25cb288d96b95a11de66c6079d0ff440973b98f1ba7239368e3cc693c217e5cd",
     "249f88720e1b9fd65dd67802d43ce8213392b30d74417231e63ccd343c03ccc4b504fc3c51b1c9174fb82e1db7136863373c0023e894f66d67b2294695a4788e"),
    ("128 blocks", pattern, 4096 * 128,
     "9dd419a91daffdea8eaec180f2725d772a597de0dfac88e5a813b06fac84271d",
     "9865a4a6aa8265cee1cee38c054d1280fde70ca314730445b0175022c2110499aabc56222ccf42c28308032fdff712741c3d8d143023e2a664b06a3769380540"),
    ("128 blocks+1", pattern, 4096 * 128 + 1,
     "b632fcd62d0c59f261efb791362876c5bf672bedbbcfc24800d7bb9dd01108af",
     "9e64df899f43b7d7931c45c4d0b6cad26a963fc49c91287e4fd829c34053a50f0ac65dbc23474651c85d8ffaca552383dcc0f79f702824226aaec798a704af88"),
    ("64 blocks+1", pattern, 4096 * 64 + 1,
     "9d7d996a2d4777b6663d213f2a63ef463d439346a2471e42bd48412f53d853a4",
     "f611bfec1123cba98599c61faf101644b036e05dbd99f3760fad5011d6e547905c3f93418009c0592fdc45b8f2da0eeba8a20b0ddc81789ebb41f12365dde8d4"),
    ("zeros 64*64 blocks+1", zeros, 4096 * 64 * 64 + 1,
     "0fd4479f81002b4ae3f62111b619a3309dd8351a0adf8f968b1cf5d35ecb94e5",
     "3103eb04b7a154181bd3ddb6db8fbcef3deb6bf0b5b00eeea3d63b125ce4624d37e1c19b591f82f2a80977ca93a4cad16eca612766a0439f88c436100a15ab04"),
    ("zeros 128*128 blocks+1", zeros, 4096 * 128 * 128 + 1,
     "be5993679f703697692cc6ce69e480edc9721baff591795438ae8097275c0687",
     "01d7c1f45176fcf1d67f408ad191701afceed924508b4a7f6916cc7e9c8c9d451f4dcda6dc4eec137c90b78a3240042545b45161a524a54b9dca4fd326c576bd"),
]  # fmt: skip


def _write(path: Path, data: bytes) -> Path:
    if data and not any(data):
        with open(path, "wb") as f:  # sparse: no disk space, fast to create
            f.truncate(len(data))
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "size", "sha256", "sha512"),
    [pytest.param(m, s, a, b, id=name) for name, m, s, a, b in GOLDEN],
)
def test_golden_vectors(
    impl: str, tmp_path: Path, make: Callable[[int], bytes], size: int, sha256: str, sha512: str
) -> None:
    data = make(size)
    path = _write(tmp_path / "f", data)
    for alg, expected in ((HashAlg.SHA256, sha256), (HashAlg.SHA512, sha512)):
        assert digest_bytes(data, alg).hex() == expected
        assert digest_file(path, alg).hex() == expected
        assert digest_file(path, alg, threads=1).hex() == expected
        h = FsVerityHasher(alg)
        step = 4093 if size < (1 << 20) else 999_983  # never block-aligned
        for i in range(0, size, step):
            h.update(data[i : i + step])
        assert h.hexdigest() == expected
        assert h.digest() == bytes.fromhex(expected)  # digest() does not end the stream


def test_empty_file_root_hash_is_zero(impl: str) -> None:
    for alg in HashAlg:
        desc = fsverity.descriptor(alg, 0, bytes(alg.digest_size))
        assert digest_bytes(b"", alg) == fsverity._CTORS[alg](desc).digest()


def test_descriptor_layout() -> None:
    root = bytes(range(32))
    desc = fsverity.descriptor(HashAlg.SHA256, 0x0102030405060708, root)
    assert len(desc) == 256
    # version 1, FS_VERITY_HASH_ALG_SHA256, log2(4096), no salt, 4 reserved bytes
    assert desc[:8] == bytes([1, 1, 12, 0, 0, 0, 0, 0])
    assert desc[8:16] == bytes([8, 7, 6, 5, 4, 3, 2, 1])  # __le64 data_size
    assert desc[16:48] == root and desc[48:80] == bytes(32)  # root hash padded to 64
    assert desc[80:] == bytes(176)  # salt[32] + reserved[144]
    assert fsverity.descriptor(HashAlg.SHA512, 1, bytes(64))[1] == 2


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=3 * 4096 + 17),
    cuts=st.lists(st.integers(min_value=0, max_value=3 * 4096 + 17), max_size=8),
    alg=st.sampled_from(list(HashAlg)),
    which=st.sampled_from(IMPLS),
)
def test_streaming_any_split(data: bytes, cuts: list[int], alg: HashAlg, which: str) -> None:
    with implementation(which):
        h = FsVerityHasher(alg)
        pos = 0
        for cut in sorted(c for c in cuts if c <= len(data)):
            h.update(memoryview(data)[pos:cut])
            pos = cut
        h.update(data[pos:])
        assert h.digest() == digest_bytes(data, alg)


def test_threaded_and_streaming_paths(
    impl: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small segments so that several windows of several threads are exercised.
    monkeypatch.setattr(fsverity, "PARALLEL_MIN_SIZE", 1)
    monkeypatch.setattr(fsverity, "IN_MEMORY_TREE_MAX", 4096 * 10)  # threads=1 streams
    monkeypatch.setattr(fsverity, "CHUNK_SIZE", 8192)
    monkeypatch.setattr(fsverity, "_local", type(fsverity._local)())
    data = os.urandom(4096 * 300 + 5)
    path = _write(tmp_path / "f", data)
    for alg in HashAlg:
        expected = digest_bytes(data, alg)
        for threads in (1, 2, 3):
            assert digest_file(path, alg, threads=threads) == expected


def test_digest_fd_reads_from_the_start(impl: str, tmp_path: Path) -> None:
    path = _write(tmp_path / "f", pattern(10000))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 5000, os.SEEK_SET)
        assert digest_fd(fd) == digest_bytes(pattern(10000))
    finally:
        os.close(fd)


# -- the reference tool ---------------------------------------------------------------


@pytest.fixture(scope="module")
def fsverity_tool(request: pytest.FixtureRequest) -> str:
    tool = shutil.which("fsverity")
    if tool:
        return tool
    reftools = request.getfixturevalue("reftools")
    return str(reftools.fsverity)


@pytest.mark.parametrize(
    "size",
    # 8 MiB + 4097: a two-level Merkle tree for both algorithms, hashed by several threads.
    [0, 1, 4095, 4096, 4097, 100_000, (1 << 20) + 1, (8 << 20) + 4097],
)
def test_matches_fsverity_tool(impl: str, tmp_path: Path, fsverity_tool: str, size: int) -> None:
    data = os.urandom(size)
    path = _write(tmp_path / "f", data)
    for alg in HashAlg:
        out = subprocess.run(
            [fsverity_tool, "digest", f"--hash-alg={alg}", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert out == f"{alg}:{digest_file(path, alg).hex()} {path}\n"


def test_cli_digest_output_is_the_tools(
    tmp_path: Path, fsverity_tool: str, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(_write(tmp_path / n, pattern(s))) for n, s in (("a", 0), ("b b", 5000))]
    for alg in HashAlg:
        ref = subprocess.run(
            [fsverity_tool, "digest", f"--hash-alg={alg}", *files],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert cli.main(["fsverity", "digest", "--hash-alg", str(alg), *files]) == 0
        assert capsys.readouterr().out == ref


def test_cli_digest_default_and_compact(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "hw", b"hello world")
    assert cli.main(["fsverity", "digest", str(path)]) == 0
    assert capsys.readouterr().out == (
        f"sha256:1e2eaa4202d750a41174ee454970b92c1bc2f925b1e35076d8c7d5f56362ba64 {path}\n"
    )
    assert cli.main(["fsverity", "digest", "--compact", "--hash-alg", "sha512", str(path)]) == 0
    assert capsys.readouterr().out.startswith("18430270729d162d4e469daca123ae61893db4b0")


def test_cli_digest_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing"
    assert cli.main(["fsverity", "digest", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err == f"cfsboot: cannot open {missing} for reading: No such file or directory\n"
    with pytest.raises(SystemExit) as exc:
        cli.main(["fsverity", "digest", "--hash-alg", "md5", str(missing)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown hash algorithm 'md5' (sha256 or sha512)" in err


def test_cli_measure_without_verity(capsys: pytest.CaptureFixture[str]) -> None:
    """A file on tmpfs, which has no fs-verity: measure says so in one line."""
    with tempfile.TemporaryDirectory(dir=tmpfs_dir()) as tmp:
        path = _write(Path(tmp) / "f", b"x")
        rc = cli.main(["fsverity", "measure", str(path)])
    err = capsys.readouterr().err
    assert rc == 1
    assert err in (
        f"cfsboot: {path}: the filesystem does not support fs-verity\n",
        f"cfsboot: {path} has no fs-verity; enable it with: cfsboot fsverity enable {path}\n",
    )
