"""`cfsboot fsck --repo`: every repository check and repair, on deliberately broken repositories.

Objects, images, links, tags, import records and leftovers; the secure-repository
branch (fs-verity) with the kernel's measure and enable ioctls replaced by a fake
that keeps digests per inode (this host has no fs-verity; the VM has).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cfsboot.composefs import fsverity, objectcheck
from cfsboot.composefs.repocheck import check_repository
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.fsck.report import FsckReport
from cfsboot.deploy.fsck.run import fsck_repository
from cfsboot.image.importer import import_image
from cfsboot.image.info import config_stream, load_image_info
from cfsboot.image.recordcheck import keep_stream
from cfstest.cli import one_line_error
from cfstest.cli import run as cfsboot
from cfstest.osimages import KVER, os_image
from setuproot.contract import HashAlg
from setuproot.verity import NoVerity


@dataclass
class Repo:
    path: Path
    image: str  # the imported image's digest
    ref: str  # where it came from
    layout: Path  # the OCI layout behind `ref`

    def open(self) -> Repository:
        return Repository.open(self.path)

    def object(self, hexdigest: str) -> Path:
        return self.path / "objects" / hexdigest[:2] / hexdigest[2:]

    def rel(self, hexdigest: str) -> str:
        return f"objects/{hexdigest[:2]}/{hexdigest[2:]}"

    def kernel(self) -> str:
        """The object holding the image's vmlinuz."""
        info = load_image_info(self.open(), self.image)
        assert info is not None
        digest = info.boot.kernels[0].vmlinuz.digest
        assert digest is not None
        return digest


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    layout = tmp_path / "img"
    ref = os_image(layout, "1")
    r = Repository.init(tmp_path / "repo", insecure=True)
    digest = import_image(ref, r, tag="os").image_digest
    return Repo(tmp_path / "repo", digest, ref, layout)


def fsck(repo: Repo, *, repair: bool = False) -> FsckReport:
    return fsck_repository(repo.path, do_repair=repair)


def found(report: FsckReport) -> list[tuple[str, str]]:
    return [(p.code, p.path) for p in report.problems]


def test_a_clean_repository_is_exit_0(repo: Repo) -> None:
    out = cfsboot("fsck", "--repo", repo.path)
    lines = out.stdout.splitlines()
    assert lines[0].startswith(f"repository {repo.path}: ")
    assert lines[0].endswith(" 1 images, 4 streams, 1 tags (sha512, insecure)")
    assert lines[1].startswith("fsck: no problems (") and len(lines) == 2
    doc = json.loads(cfsboot("fsck", "--repo", repo.path, "--json").stdout)
    assert doc["apiVersion"] == "cfsboot/fsck/v1"
    assert (doc["exitCode"], doc["problems"]) == (0, 0)
    [section] = doc["sections"]
    assert (section["group"], section["checked"], section["problems"]) == ("repository", True, [])


def test_a_damaged_object_is_fetched_again_from_the_images_origin(repo: Repo) -> None:
    k = repo.kernel()
    good = repo.object(k).read_bytes()
    repo.object(k).write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    out = cfsboot("fsck", "--repo", repo.path, check=False)
    assert out.returncode == 1
    line = next(ln for ln in out.stdout.splitlines() if k[2:] in ln)
    assert line.startswith(f"  {repo.rel(k)}: its content has the fs-verity digest sha512:")
    assert line.endswith(f"[--repair: fetch {repo.ref} again]")
    fixed = cfsboot("fsck", "--repo", repo.path, "--repair")
    assert "repaired:\n" in fixed.stdout
    assert (
        f"  image {repo.image[:16]}…: fetched {repo.ref} again; 1 damaged or missing object(s)"
        " written again\n"
    ) in fixed.stdout
    assert repo.object(k).read_bytes() == good
    assert fsverity.digest_file(repo.object(k), HashAlg.SHA512).hex() == k
    assert not [p for p in (repo.path / "objects").iterdir() if p.name.startswith(".")]


def test_a_damaged_object_that_cannot_be_fetched_stays_as_it_was(repo: Repo) -> None:
    k = repo.kernel()
    damaged = b"damaged" + repo.object(k).read_bytes()[7:]
    repo.object(k).write_bytes(damaged)
    shutil.rmtree(repo.layout)
    report = fsck(repo, repair=True)
    assert report.exit_code == 1
    assert found(report) == [("object-corrupt", repo.rel(k))]
    [line] = report.not_repaired
    assert line.startswith(f"image {repo.image[:16]}…: could not fetch it again: {repo.ref}: ")
    assert repo.object(k).read_bytes() == damaged
    assert not [p for p in (repo.path / "objects").iterdir() if p.name.startswith(".")]


def test_a_missing_object_says_who_needs_it_and_comes_back(repo: Repo) -> None:
    k = repo.kernel()
    good = repo.object(k).read_bytes()
    repo.object(k).unlink()
    [p] = fsck(repo).problems
    assert (p.code, p.path, p.subject) == ("object-missing", repo.rel(k), k)
    kernel = f"/usr/lib/modules/{KVER}/vmlinuz"
    assert p.message == f"missing (needed by image {repo.image[:16]}… for {kernel})"
    assert p.repair == f"fetch {repo.ref} again"
    assert fsck(repo, repair=True).exit_code == 0
    assert repo.object(k).read_bytes() == good


def test_a_missing_image_object_is_a_dangling_link_and_comes_back(repo: Repo) -> None:
    repo.object(repo.image).unlink()
    report = fsck(repo)
    assert found(report) == [("link-dangling", f"images/{repo.image}")]
    again = fsck(repo, repair=True)
    assert again.exit_code == 0, again.problems
    assert (repo.path / "images" / repo.image).resolve() == repo.object(repo.image)


def test_leftovers_are_reported_and_removed(repo: Repo) -> None:
    staging = repo.path / "objects/.staging-1234-abcd"
    staging.mkdir()
    (staging / "x").write_bytes(b"half an import")
    sub = repo.object(repo.image).parent
    (sub / ".tmp-0123456789abcdef").write_bytes(b"half an object")
    os.symlink("../objects/00/11", repo.path / "images/.x.cfsboot-tmp-0123")
    os.symlink("../nothing", repo.path / "streams/refs/.y.cfsboot-tmp-4567")
    report = fsck(repo)
    assert sorted(found(report)) == sorted(
        [
            ("leftover", "objects/.staging-1234-abcd"),
            ("leftover", f"objects/{sub.name}/.tmp-0123456789abcdef"),
            ("leftover", "images/.x.cfsboot-tmp-0123"),
            ("leftover", "streams/refs/.y.cfsboot-tmp-4567"),
        ]
    )
    assert {p.repair for p in report.problems} == {"remove it"}
    fixed = fsck(repo, repair=True)
    assert fixed.exit_code == 0
    assert sorted(fixed.repaired) == sorted(f"removed {path}" for _, path in found(report))
    assert not staging.exists() and not (sub / ".tmp-0123456789abcdef").exists()
    assert not os.path.lexists(repo.path / "images/.x.cfsboot-tmp-0123")


def test_strangers_are_reported_and_left_alone(repo: Repo) -> None:
    (repo.path / "objects/zz").write_bytes(b"?")
    sub = repo.object(repo.image).parent
    (sub / "README").write_bytes(b"?")
    os.symlink("../" + "f" * 128, repo.path / "images/refs/gone")
    os.symlink("../no-such-stream", repo.path / "streams/refs/gone")
    report = fsck(repo, repair=True)
    assert sorted(found(report)) == [
        ("tag-dangling", "images/refs/gone"),
        ("tag-dangling", "streams/refs/gone"),
        ("unexpected-entry", f"objects/{sub.name}/README"),
        ("unexpected-entry", "objects/zz"),
    ]
    assert all(p.repair is None for p in report.problems) and report.repaired == []
    assert (repo.path / "objects/zz").exists() and (sub / "README").exists()


@pytest.mark.parametrize("name", ["objects", "images", "streams"])
def test_a_top_directory_that_is_a_file_is_a_problem(repo: Repo, name: str) -> None:
    """Reported with the rest of the check; it used to end fsck with 'Not a directory'."""
    shutil.rmtree(repo.path / name)
    (repo.path / name).write_bytes(b"")
    report = fsck(repo)
    assert (report.exit_code, report.problems[0].code, report.problems[0].path) == (
        1,
        "layout",
        name,
    )
    assert report.problems[0].message == "is not a directory"


def test_an_image_that_does_not_parse(repo: Repo) -> None:
    bad = repo.open().write_image(b"not an EROFS image" * 300)
    [p] = fsck(repo).problems
    assert (p.code, p.path) == ("image-damaged", f"images/{bad}")
    assert p.message == "does not parse: not a composefs image (magic 0x20746f6e)"
    assert p.repair is None


def test_import_records_are_checked(repo: Repo) -> None:
    r = repo.open()
    manifest = "cfsboot-manifest-sha256:" + "0" * 64
    r.write_stream(manifest, b"{}")
    layer = "cfsboot-layer-sha256:" + "1" * 64
    r.write_stream(layer, b"not zstd")
    info = load_image_info(r, repo.image)
    assert info is not None
    (repo.path / "streams" / config_stream(info.config_digest)).unlink()
    report = fsck(repo)
    by_path = {p.path: p for p in report.problems}
    assert sorted(by_path) == sorted(
        [f"streams/{manifest}", f"streams/{layer}", f"streams/{config_stream(info.config_digest)}"]
    )
    assert by_path[f"streams/{manifest}"].message == (
        "its content does not have the digest sha256:000000000000… of its name"
    )
    assert by_path[f"streams/{layer}"].message.startswith("does not parse: corrupt layer record")
    missing = by_path[f"streams/{config_stream(info.config_digest)}"]
    assert (missing.code, missing.message) == (
        "record-missing",
        f"missing (a record of image {repo.image[:16]}…)",
    )
    assert missing.repair == f"fetch {repo.ref} again"
    fixed = fsck(repo, repair=True)
    # The config comes back; the two records no image names are gc's to remove.
    assert sorted(found(fixed)) == sorted(
        [("record-damaged", f"streams/{manifest}"), ("record-damaged", f"streams/{layer}")]
    )
    assert (repo.path / "streams" / config_stream(info.config_digest)).is_symlink()


def test_each_object_is_opened_once(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[str] = []
    real = objectcheck._open

    def counting(path: str) -> int:
        opened.append(path)
        return real(path)

    monkeypatch.setattr(objectcheck, "_open", counting)
    r = repo.open()
    check = check_repository(r, keep_stream=keep_stream)
    objects = sorted(str(repo.object(h)) for h in check.layout.objects)
    assert sorted(opened) == objects


@pytest.mark.parametrize("threads", [1, 3])
def test_the_outcome_does_not_depend_on_the_threads(repo: Repo, threads: int) -> None:
    k = repo.kernel()
    repo.object(k).write_bytes(b"x" * 5000)
    check = check_repository(repo.open(), threads=threads)
    assert [(p.code, p.path) for p in check.all_problems()] == [("object-corrupt", repo.rel(k))]
    assert check.bad == {k}


def test_command_line_errors_are_exit_2(tmp_path: Path, repo: Repo) -> None:
    one_line_error(
        cfsboot("fsck", "--repo", tmp_path / "none", check=False),
        code=2,
        contains=f"no composefs repository at {tmp_path / 'none'} (does not exist)",
    )
    one_line_error(
        cfsboot("fsck", "--repo", repo.path, "--esp", tmp_path, check=False),
        code=2,
        contains="--repo checks a repository alone: it takes no --sysroot, --esp or --run-dir",
    )


# -- a secure repository, with the kernel's fs-verity ioctls played by a fake -------------


class FakeVerity:
    """FS_IOC_MEASURE_VERITY / FS_IOC_ENABLE_VERITY by inode; digests computed in userspace."""

    def __init__(self) -> None:
        self.enabled: dict[int, tuple[HashAlg, bytes]] = {}

    def measure(self, fd: int, *, path: str | None = None) -> tuple[HashAlg, bytes]:
        got = self.enabled.get(os.fstat(fd).st_ino)
        if got is None:
            raise NoVerity(errno.ENODATA, "FS_IOC_MEASURE_VERITY: the file has no fs-verity", path)
        return got

    def enable(self, fd: int, alg: HashAlg, *, path: str | None = None) -> None:
        self.enabled[os.fstat(fd).st_ino] = (alg, fsverity.digest_fd(fd, alg))

    def enable_path(self, path: Path, alg: HashAlg = HashAlg.SHA512) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            self.enable(fd, alg)
        finally:
            os.close(fd)

    def disable(self, path: Path) -> None:
        del self.enabled[os.stat(path).st_ino]


@pytest.fixture
def secure(repo: Repo, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeVerity]:
    fake = FakeVerity()
    import cfsboot.composefs.objectstore as objectstore
    import cfsboot.composefs.repository as repository
    import cfsboot.deploy.fsck.repair as repair

    for module in (repository, objectcheck, objectstore, repair):
        monkeypatch.setattr(module, "measure_verity", fake.measure)
    for module in (objectstore, repair):
        monkeypatch.setattr(module, "enable_verity", fake.enable)
    for dirpath, _dirs, files in os.walk(repo.path / "objects"):
        for f in files:
            fake.enable_path(Path(dirpath, f))
    fake.enable_path(repo.path / "meta.json")
    assert not repo.open().insecure
    yield fake


def test_secure_repository_with_verity_everywhere_is_clean(repo: Repo, secure: FakeVerity) -> None:
    report = fsck(repo)
    assert report.exit_code == 0
    assert report.sections[0].summary.endswith("(sha512, secure)")


def test_an_object_without_verity_gets_it(repo: Repo, secure: FakeVerity) -> None:
    k = repo.kernel()
    secure.disable(repo.object(k))
    [p] = fsck(repo).problems
    assert (p.code, p.path, p.message) == (
        "object-no-verity",
        repo.rel(k),
        "it has no fs-verity (the repository is secure)",
    )
    assert p.repair == "enable fs-verity"
    fixed = fsck(repo, repair=True)
    assert fixed.repaired == [f"enabled fs-verity on {repo.rel(k)}"]
    assert fixed.exit_code == 0


def test_an_object_without_verity_and_the_wrong_content_is_corrupt(
    repo: Repo, secure: FakeVerity
) -> None:
    k = repo.kernel()
    secure.disable(repo.object(k))
    repo.object(k).write_bytes(b"other")
    [p] = fsck(repo).problems
    assert (p.code, p.path) == ("object-corrupt", repo.rel(k))
    assert p.message.startswith("its content has the fs-verity digest sha512:")
    assert p.repair == f"fetch {repo.ref} again"
    # Fetched again, the object is written with fs-verity, as every object of a secure repo.
    fixed = fsck(repo, repair=True)
    assert fixed.exit_code == 0, fixed.problems
    assert os.stat(repo.object(k)).st_ino in secure.enabled


def test_a_wrong_measured_digest_is_corrupt(repo: Repo, secure: FakeVerity) -> None:
    k = repo.kernel()
    secure.enabled[os.stat(repo.object(k)).st_ino] = (HashAlg.SHA512, bytes(64))
    [p] = fsck(repo).problems
    assert (p.code, p.message) == (
        "object-corrupt",
        "the kernel measures its fs-verity digest as sha512:0000000000000000…",
    )


def test_a_block_fs_verity_refuses_is_unreadable(
    repo: Repo, secure: FakeVerity, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = repo.kernel()
    real = objectcheck._read_through
    ino = os.stat(repo.object(k)).st_ino

    def eio(fd: int, size: int) -> None:
        if os.fstat(fd).st_ino == ino:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd, size)

    monkeypatch.setattr(objectcheck, "_read_through", eio)
    [p] = fsck(repo).problems
    assert (p.code, p.path, p.message) == (
        "object-unreadable",
        repo.rel(k),
        "it cannot be read: Input/output error",
    )
