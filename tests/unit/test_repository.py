"""The composefs repository: layout, meta.json, objects, images, streams, tags, locking."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfsboot import cli
from cfsboot.composefs import objectstore, repository
from cfsboot.composefs.fsverity import digest_bytes, digest_fd
from cfsboot.composefs.repository import Repository, meta_json
from cfsboot.errors import CfsbootError
from setuproot.contract import HashAlg
from setuproot.verity import NoVerity, VerityBusy, VerityUnsupported

REPO_ROOT = Path(__file__).resolve().parents[2]

META_SHA512 = b"""{
  "version": 1,
  "algorithm": "fsverity-sha512-12",
  "features": {
    "compatible": [],
    "read-only-compatible": [],
    "incompatible": []
  }
}
"""


def all_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def hidden_leftovers(root: Path) -> list[str]:
    return [p for p in all_files(root) if any(c.startswith(".") for c in Path(p).parts)]


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    return Repository.init(tmp_path / "composefs", insecure=True)


# -- init / open ----------------------------------------------------------------------


def test_init_layout(tmp_path: Path) -> None:
    r = Repository.init(tmp_path / "sysroot" / "composefs")
    assert r.path == tmp_path / "sysroot" / "composefs"
    assert r.algorithm is HashAlg.SHA512
    assert (r.path / "meta.json").read_bytes() == META_SHA512
    assert (r.path.stat().st_mode & 0o7777) == 0o700
    assert all_files(r.path) == [
        "images",
        "images/refs",
        "meta.json",
        "objects",
        "streams",
        "streams/refs",
    ]


def test_init_sha256_and_meta_json() -> None:
    assert meta_json(HashAlg.SHA256) == META_SHA512.replace(b"sha512", b"sha256")


def test_host_repository_is_insecure_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    r = Repository.init(tmp_path / "r", algorithm=HashAlg.SHA256)
    assert r.insecure  # the host has no fs-verity
    assert "the repository is insecure" in caplog.text
    assert Repository.open(r.path).insecure
    assert repr(r) == f"Repository({str(r.path)!r}, sha256, insecure)"


def test_init_existing_same_algorithm_is_idempotent(repo: Repository) -> None:
    h = repo.ensure_object(b"x" * 100)
    again = Repository.init(repo.path, insecure=True)
    assert again.algorithm is HashAlg.SHA512 and again.has_object(h)


def test_init_existing_other_algorithm_fails(repo: Repository) -> None:
    with pytest.raises(CfsbootError) as exc:
        Repository.init(repo.path, algorithm=HashAlg.SHA256)
    assert str(exc.value) == (
        f"repository {repo.path} already exists and uses fsverity-sha512-12, not"
        " fsverity-sha256-12; one repository holds one digest algorithm; choose another directory"
    )


def test_init_infers_algorithm_of_old_repository(tmp_path: Path) -> None:
    old = tmp_path / "old"
    (old / "objects" / "ab").mkdir(parents=True)
    (old / "objects" / "ab" / ("c" * 62)).write_bytes(b"")
    with pytest.raises(CfsbootError, match="holds sha256 objects"):
        Repository.init(old)
    assert Repository.init(old, algorithm=HashAlg.SHA256).algorithm is HashAlg.SHA256


def test_open_missing(tmp_path: Path) -> None:
    with pytest.raises(CfsbootError) as exc:
        Repository.open(tmp_path / "nope")
    assert exc.value.message == f"no composefs repository at {tmp_path / 'nope'} (does not exist)"
    assert exc.value.hint == f"create one with: cfsboot repo init {tmp_path / 'nope'}"
    with pytest.raises(CfsbootError, match=r"\(has no meta.json\)"):
        Repository.open(tmp_path)


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (b"{", "is not valid JSON"),
        (b"[]", "is not a JSON object"),
        (b'{"version": 2, "algorithm": "fsverity-sha512-12"}', "format version 2 is not supported"),
        (b'{"version": 1, "algorithm": "fsverity-md5-12"}', "unknown algorithm 'fsverity-md5-12'"),
        (
            b'{"version": 1, "algorithm": "fsverity-sha256-12",'
            b' "features": {"incompatible": ["zstd-objects"]}}',
            "unsupported features: zstd-objects",
        ),
        (
            b'{"version": 1, "algorithm": "fsverity-sha256-12", "features": []}',
            "meta.json: features is not an object",
        ),
        (
            b'{"version": 1, "algorithm": "fsverity-sha256-12", "features": {"incompatible": [1]}}',
            "features: incompatible lists something that is not a feature name",
        ),
    ],
)
def test_open_bad_meta(tmp_path: Path, meta: bytes, message: str) -> None:
    (tmp_path / "meta.json").write_bytes(meta)
    with pytest.raises(CfsbootError, match=message):
        Repository.open(tmp_path)


def test_unknown_ro_compat_feature_makes_it_read_only(tmp_path: Path) -> None:
    (tmp_path / "meta.json").write_bytes(
        b'{"version": 1, "algorithm": "fsverity-sha256-12",'
        b' "features": {"read-only-compatible": ["v1_erofs", "future"]}}'
    )
    r = Repository.open(tmp_path)
    assert r.read_only and r.algorithm is HashAlg.SHA256
    with pytest.raises(CfsbootError, match="read-only here"), r.lock():
        pass


# -- objects --------------------------------------------------------------------------


def test_ensure_object(repo: Repository) -> None:
    data = b"hello world" * 100
    h = repo.ensure_object(data)
    assert h == digest_bytes(data, HashAlg.SHA512).hex()
    path = repo.object_path(h)
    assert path == repo.path / "objects" / h[:2] / h[2:]
    assert path.read_bytes() == data
    assert (path.stat().st_mode & 0o7777) == 0o644
    assert repo.has_object(h) and not repo.has_object("0" * 128)
    before = all_files(repo.path)
    assert repo.ensure_object(data) == h  # dedup: nothing new
    assert all_files(repo.path) == before
    assert hidden_leftovers(repo.path) == []


def test_ensure_object_from_file(repo: Repository, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.write_bytes(os.urandom(70000))
    h = repo.ensure_object_from_file(src)
    assert repo.object_path(h).read_bytes() == src.read_bytes()
    fd = os.open(src, os.O_RDONLY)
    try:
        os.lseek(fd, 1234, os.SEEK_SET)  # the whole file counts, not the rest of it
        assert repo.ensure_object_from_file(fd) == h
        assert repo.ensure_object_from_file(fd, digest=bytes.fromhex(h)) == h
        os.fstat(fd)  # still open: the caller owns it
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match="sha512 digest has 64 bytes"):
        repo.ensure_object_from_file(src, digest=b"x" * 32)
    assert hidden_leftovers(repo.path) == []


def test_object_names_are_checked(repo: Repository) -> None:
    for bad in ("", "ab", "A" * 128, "g" * 128, "0" * 64):
        with pytest.raises(ValueError, match="not a lowercase sha512 hex digest"):
            repo.object_path(bad)


def test_failed_write_leaves_nothing(repo: Repository, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_copy(src: int, dst: int, size: int, *args: object, **kw: object) -> None:
        os.write(dst, b"partial")
        raise OSError(errno.EIO, "disk on fire")

    monkeypatch.setattr(objectstore, "copy_fd_direct", broken_copy)
    src = repo.path.parent / "src"
    src.write_bytes(b"y" * 5000)
    with pytest.raises(OSError, match="disk on fire"):
        repo.ensure_object_from_file(src)
    h = digest_bytes(b"y" * 5000, HashAlg.SHA512).hex()
    assert not repo.has_object(h)
    assert [p for p in all_files(repo.path) if p.startswith("objects/")] == ["objects/" + h[:2]]
    assert hidden_leftovers(repo.path) == []


def test_named_temp_fallback_without_o_tmpfile(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_tmpfile(
        path: str | bytes | os.PathLike[str], flags: int, mode: int = 0o777, **kw: int | None
    ) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "no O_TMPFILE here")
        return real_open(path, flags, mode, dir_fd=kw.get("dir_fd"))

    monkeypatch.setattr(os, "open", no_tmpfile)
    h = repo.ensure_object(b"z" * 1000)
    assert repo.object_path(h).read_bytes() == b"z" * 1000
    assert repo.ensure_object(b"z" * 1000) == h
    assert hidden_leftovers(repo.path) == []


def test_batch_publishes_at_the_end(repo: Repository) -> None:
    with repo.batch():
        h = repo.ensure_object(b"batched" * 20)
        assert repo.has_object(h)  # known to the store ...
        assert not repo.object_path(h).exists()  # ... but not published yet
        assert repo.ensure_object(b"batched" * 20) == h
    assert repo.object_path(h).read_bytes() == b"batched" * 20
    assert hidden_leftovers(repo.path) == []


def test_add_bytes_says_whether_it_wrote(repo: Repository) -> None:
    """True only for the call that wrote the object: the import counts its writes by it."""
    store = repo.objects
    data = b"counted" * 30
    h = digest_bytes(data, HashAlg.SHA512).hex()
    assert store.add_bytes(h, data) is True
    assert store.add_bytes(h, data) is False  # published
    other = b"staged" * 30
    h2 = digest_bytes(other, HashAlg.SHA512).hex()
    with repo.batch():
        assert store.add_bytes(h2, other) is True
        assert store.add_bytes(h2, other) is False  # staged in this batch
        assert store.add_bytes(h, data) is False
    assert store.add_bytes(h2, other) is False
    assert repo.object_path(h2).read_bytes() == other


def test_batch_starts_writeback_of_each_staged_object(
    repo: Repository, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged objects are not fsynced one by one, but their writeback starts at once."""
    started: list[int] = []  # the sizes of the files, written when writeback starts
    synced: list[int] = []
    monkeypatch.setattr(
        objectstore, "start_writeback", lambda fd: started.append(os.fstat(fd).st_size)
    )
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with repo.batch():
        repo.ensure_object(b"a" * 100)
        repo.ensure_object(b"b" * 200)
        repo.ensure_object(b"a" * 100)
    assert started == [100, 200] and synced == []
    repo.ensure_object(b"c" * 300)  # outside a batch: fsynced, as before
    assert started == [100, 200] and synced  # the file and its directories


def test_start_writeback_is_harmless(tmp_path: Path) -> None:
    """The real sync_file_range: no error, the data unchanged (and on a pipe, ignored)."""
    path = tmp_path / "f"
    with open(path, "wb") as f:
        f.write(b"data" * 1000)
        objectstore.start_writeback(f.fileno())
    assert path.read_bytes() == b"data" * 1000
    r, w = os.pipe()
    try:
        objectstore.start_writeback(w)
    finally:
        os.close(r)
        os.close(w)


def test_batch_discarded_on_error(repo: Repository) -> None:
    with pytest.raises(RuntimeError), repo.batch():
        h = repo.ensure_object(b"lost" * 30)
        raise RuntimeError("boom")
    assert not repo.has_object(h)
    assert hidden_leftovers(repo.path) == []


def test_write_image_inside_batch_flushes_first(repo: Repository) -> None:
    with repo.batch():
        obj = repo.ensure_object(b"file" * 40)
        img = repo.write_image(b"image" * 2000)
        assert repo.object_path(obj).exists() and repo.image_path(img).exists()


# -- images, tags, streams -----------------------------------------------------------


def test_images_and_tags(repo: Repository) -> None:
    h = repo.write_image(b"erofs" * 1000)
    link = repo.path / "images" / h
    assert os.readlink(link) == f"../objects/{h[:2]}/{h[2:]}"
    assert repo.image_path(h) == link and repo.has_image(h)
    assert repo.list_images() == [h]
    assert link.read_bytes() == b"erofs" * 1000
    repo.tag("booted", h)
    repo.tag("cfsboot/staged", h)
    assert os.readlink(repo.path / "images/refs/booted") == f"../{h}"
    assert os.readlink(repo.path / "images/refs/cfsboot/staged") == f"../../{h}"
    assert (repo.path / "images/refs/cfsboot/staged").read_bytes() == b"erofs" * 1000
    assert repo.tags() == {"booted": h, "cfsboot/staged": h}
    h2 = repo.write_image(b"other" * 1000)
    repo.tag("booted", h2)  # re-pointing replaces atomically
    assert repo.tags() == {"booted": h2, "cfsboot/staged": h}
    assert repo.list_images() == sorted([h, h2])
    assert repo.untag("booted") and not repo.untag("booted")
    assert repo.tags() == {"cfsboot/staged": h}
    assert hidden_leftovers(repo.path) == []


def test_tag_errors(repo: Repository) -> None:
    with pytest.raises(CfsbootError, match="has no image"):
        repo.tag("x", "a" * 128)
    h = repo.write_image(b"i" * 100)
    for bad in ("", "a/../b", "/abs", "a//b", "."):
        with pytest.raises(ValueError, match="invalid tag name"):
            repo.tag(bad, h)


def test_streams(repo: Repository) -> None:
    name = "oci-config-sha256:" + "0" * 64
    h = repo.write_stream(name, b"{}" * 50)
    assert os.readlink(repo.path / "streams" / name) == f"../objects/{h[:2]}/{h[2:]}"
    assert repo.read_stream(name) == b"{}" * 50
    assert repo.read_stream("missing") is None
    for bad in ("refs", "a/b", "..", ""):
        with pytest.raises(ValueError, match="invalid stream name"):
            repo.write_stream(bad, b"x")


# -- secure repositories (fs-verity simulated: the host has none) --------------------


class FakeVerity:
    """Kernel fs-verity in userspace: enabled files are remembered by inode."""

    def __init__(self, *, corrupt: bool = False, unsupported: bool = False) -> None:
        self.enabled: set[tuple[int, int]] = set()
        self.corrupt = corrupt
        self.unsupported = unsupported
        self.busy = 0  # ETXTBSY answers before enable succeeds

    def _key(self, fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    def enable(self, fd: int, alg: HashAlg, *, path: str | None = None) -> None:
        if self.unsupported:
            raise VerityUnsupported(errno.EOPNOTSUPP, "unsupported", path)
        if self.busy:
            self.busy -= 1
            raise VerityBusy(errno.ETXTBSY, "busy", path)
        self.enabled.add(self._key(fd))

    def measure(self, fd: int, *, path: str | None = None) -> tuple[HashAlg, bytes]:
        if self.unsupported:
            raise VerityUnsupported(errno.EOPNOTSUPP, "unsupported", path)
        if self._key(fd) not in self.enabled:
            raise NoVerity(errno.ENODATA, "no verity", path)
        digest = digest_fd(fd, HashAlg.SHA512)
        return HashAlg.SHA512, bytes(64) if self.corrupt else digest


@pytest.fixture
def fake_verity(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVerity]:
    fake = FakeVerity()
    for mod in (repository, objectstore):
        monkeypatch.setattr(mod, "enable_verity", fake.enable)
        monkeypatch.setattr(mod, "measure_verity", fake.measure)
    yield fake


def test_secure_repository(tmp_path: Path, fake_verity: FakeVerity) -> None:
    r = Repository.init(tmp_path / "r")
    assert not r.insecure
    assert not Repository.open(r.path).insecure
    h = r.ensure_object(b"secure" * 100)
    fd = r.open_object(h)
    os.close(fd)
    assert len(fake_verity.enabled) == 2  # meta.json and the object
    # init --insecure on a verity filesystem: meta.json stays without verity.
    assert Repository.init(tmp_path / "i", insecure=True).insecure


def test_secure_repository_rejects_a_wrong_digest(tmp_path: Path, fake_verity: FakeVerity) -> None:
    r = Repository.init(tmp_path / "r")
    fake_verity.corrupt = True
    with pytest.raises(CfsbootError, match="fs-verity measured sha512:0000"):
        r.ensure_object(b"data" * 100)
    assert hidden_leftovers(r.path) == []


def test_secure_repository_needs_verity_on_objects(tmp_path: Path, fake_verity: FakeVerity) -> None:
    r = Repository.init(tmp_path / "r")
    fake_verity.unsupported = True
    with pytest.raises(CfsbootError, match="cannot enable fs-verity on .*: unsupported"):
        r.ensure_object(b"data" * 100)


def test_enable_retries_while_busy(tmp_path: Path, fake_verity: FakeVerity) -> None:
    """ETXTBSY (a forked child still holding the writable fd) is retried, then reported."""
    r = Repository.init(tmp_path / "r")
    fake_verity.busy = objectstore.ENABLE_RETRIES
    h = r.ensure_object(b"retried" * 100)
    assert r.has_object(h) and fake_verity.busy == 0
    fake_verity.busy = objectstore.ENABLE_RETRIES + 1
    with pytest.raises(VerityBusy):
        r.ensure_object(b"given up" * 100)
    assert hidden_leftovers(r.path) == []


# -- locking --------------------------------------------------------------------------

HOLDER = """
import sys
from cfsboot.composefs.repository import Repository
with Repository.open(sys.argv[1]).lock():
    print("locked", flush=True)
    sys.stdin.readline()
"""


def _holder(path: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=f"{REPO_ROOT / 'stager'}:{REPO_ROOT / 'setup-root'}")
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


def test_lock_contention(repo: Repository, capfd: pytest.CaptureFixture[str]) -> None:
    proc = _holder(repo.path)
    try:
        with pytest.raises(CfsbootError) as exc, repo.lock(wait=False):
            pass
        assert exc.value.message == f"repository {repo.path} is locked by another process"

        got = threading.Event()

        def second_writer() -> None:
            with repo.lock(), repo.lock():  # re-entrant in one process
                got.set()

        t = threading.Thread(target=second_writer)
        t.start()
        time.sleep(0.3)
        assert not got.is_set()  # still waiting
        assert proc.stdin is not None
        proc.stdin.write("\n")
        proc.stdin.flush()
        t.join(timeout=10)
        assert got.is_set()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    err = capfd.readouterr().err
    assert err == f"cfsboot: waiting for the lock on repository {repo.path}\n"
    with repo.lock(wait=False):  # free again
        pass


# -- CLI ------------------------------------------------------------------------------


def test_cli_repo_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "repo"
    assert cli.main(["repo", "init", str(d), "--hash", "sha256", "--insecure"]) == 0
    assert capsys.readouterr().out == (
        f"composefs repository {d} (fsverity-sha256-12, insecure: without fs-verity)\n"
    )
    assert Repository.open(d).algorithm is HashAlg.SHA256
    assert cli.main(["repo", "init", str(d)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cfsboot: repository {d} already exists and uses fsverity-sha256-12")
    assert err.count("\n") == 1
