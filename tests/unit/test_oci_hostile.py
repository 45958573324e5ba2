"""Hostile or broken images: one clear error line and nothing published in the repository."""

from __future__ import annotations

import dataclasses
import gzip
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from cfsboot.cli import main
from cfsboot.composefs.repository import Repository
from cfsboot.errors import CfsbootError
from cfsboot.image.importer import import_image
from cfstest.ocibuild import Compression, Descriptor, Entry, Layout, tar_bytes, tar_chunks
from cfstest.ocirepo import base_layer, make_repo, snapshot

BIG = [Entry(f"usr/lib/big{i}", data=bytes([i]) * 3000) for i in range(5)]


def _image(
    path: Path, layers: list[list[Entry]], compression: Compression = Compression.GZIP
) -> None:
    out = Layout(path)
    out.add_image([out.add_layer(tar_chunks(layer), compression) for layer in layers])


def _entries(*extra: Entry) -> Callable[[Path], None]:
    """A good first layer with objects, then a second layer holding the hostile entries."""
    return lambda p: _image(p, [[*base_layer(), *BIG], list(extra)])


def _raw_layer(data: bytes) -> Callable[[Path], None]:
    def build(p: Path) -> None:
        out = Layout(p)
        good = out.add_layer(tar_chunks([*base_layer(), *BIG]))
        out.add_image([good, out.add_layer([data], Compression.NONE)])

    return build


def _with_desc(change: Callable[[Layout, list[Descriptor]], None]) -> Callable[[Path], None]:
    def build(p: Path) -> None:
        out = Layout(p)
        descs = [out.add_layer(tar_chunks([*base_layer(), *BIG]))]
        change(out, descs)
        out.add_image(descs)

    return build


def _layer_blob(p: Path) -> Path:
    index = json.loads((p / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"]
    manifest = json.loads((p / "blobs" / "sha256" / mdigest[7:]).read_text())
    digest: str = manifest["layers"][-1]["digest"]
    return p / "blobs" / "sha256" / digest[7:]


def _corrupt_layer(p: Path) -> None:
    _image(p, [[*base_layer(), *BIG]])
    blob = _layer_blob(p)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))


def _broken_early_in_a_big_layer(p: Path) -> None:
    """A header broken at the start of a layer far longer than what is read ahead of the tar
    (streams.ReadAhead): the blob's thread is still reading when the tar fails, and the
    error must still name the real cause, the blob's digest."""
    big = [Entry(f"usr/lib/b{i}", data=bytes([i]) * (1 << 20)) for i in range(24)]
    _image(p, [[*base_layer(), *big]], Compression.NONE)
    blob = _layer_blob(p)
    data = bytearray(blob.read_bytes())
    data[5] ^= 0x20  # the first header's name: its checksum no longer matches
    blob.write_bytes(bytes(data))


def _missing(which: str) -> Callable[[Path], None]:
    def build(p: Path) -> None:
        _image(p, [[*base_layer(), *BIG]])
        index = json.loads((p / "index.json").read_text())
        mdigest = index["manifests"][0]["digest"]
        manifest = json.loads((p / "blobs" / "sha256" / mdigest[7:]).read_text())
        digest = {
            "manifest": mdigest,
            "config": manifest["config"]["digest"],
            "layer": manifest["layers"][0]["digest"],
        }[which]
        (p / "blobs" / "sha256" / digest[7:]).unlink()

    return build


def _truncated_blob(p: Path) -> None:
    _image(p, [[*base_layer(), *BIG]], Compression.NONE)
    blob = _layer_blob(p)
    blob.write_bytes(blob.read_bytes()[:-1000])


def _longer_blob(p: Path) -> None:
    _image(p, [[*base_layer(), *BIG]], Compression.NONE)
    blob = _layer_blob(p)
    blob.write_bytes(blob.read_bytes() + b"\0" * 512)


def _huge_index(p: Path) -> None:
    _image(p, [[*base_layer(), *BIG]])
    index = p / "index.json"
    index.write_bytes(index.read_bytes() + b" " * (4 << 20))


GOOD_TAR = tar_bytes([*base_layer(), Entry("usr/x", data=b"x" * 2000)])
BAD_CHECKSUM = bytearray(GOOD_TAR)
BAD_CHECKSUM[512 * 3 + 5] ^= 0x20

CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "dotdot": (_entries(Entry("../evil", data=b"x")), r"tar member path '../evil' contains '\.\.'"),
    "absolute-escape": (_entries(Entry("/../../etc/shadow", data=b"x")), r"contains '\.\.'"),
    "hardlink-missing": (
        _entries(Entry("usr/h", "hardlink", linkname="usr/nothing")),
        r"hardlink 'usr/h' points to 'usr/nothing', which does not exist",
    ),
    "hardlink-outside": (
        _entries(Entry("usr/h", "hardlink", linkname="../../etc/passwd")),
        r"hardlink target .* contains '\.\.'",
    ),
    "hardlink-to-dir": (
        _entries(Entry("usr/h", "hardlink", linkname="usr/lib")),
        "points to a directory",
    ),
    "whiteout-root": (_entries(Entry(".wh.", data=b"")), "whites out the root directory"),
    "whiteout-dotdot": (_entries(Entry("./.wh..", data=b"")), "whites out the root directory"),
    "duplicate": (
        _entries(Entry("usr/a", data=b"1"), Entry("./usr/a", data=b"2")),
        "duplicate entries for 'usr/a'",
    ),
    "duplicate-root": (
        _entries(Entry("./", "dir"), Entry("/", "dir")),
        "duplicate entries for '/'",
    ),
    "name-with-nul": (_entries(Entry(b"usr/a\0b" + b"c" * 100, data=b"")), "NUL byte"),
    "name-with-slash": (_entries(Entry("usr/file/", "file", data=b"x")), "ends with '/'"),
    "parent-symlink": (
        _entries(Entry("usr/ln", "symlink", linkname="/etc"), Entry("usr/ln/f", data=b"x")),
        "a parent is not a directory",
    ),
    "truncated-tar": (_raw_layer(GOOD_TAR[:2500]), "truncated tar"),
    "corrupt-tar": (_raw_layer(bytes(BAD_CHECKSUM)), "bad header checksum"),
    "absurd-member-size": (
        _raw_layer(tar_bytes([Entry("a", data=b"", size=1 << 50)])),
        "absurd size",
    ),
    "corrupt-gzip": (_raw_layer(b"\x1f\x8b\x08\x00" + b"junk" * 100), "corrupt layer: gzip"),
    "truncated-gzip": (_raw_layer(gzip.compress(GOOD_TAR, mtime=0)[:-100]), "gzip"),
    "wrong-layer-digest": (_corrupt_layer, r"layer sha256:[0-9a-f]{64} digest mismatch"),
    "wrong-digest-tar-broken-first": (
        _broken_early_in_a_big_layer,
        r"^layer sha256:[0-9a-f]{64} digest mismatch",
    ),
    "wrong-diff-id": (
        _with_desc(
            lambda out, d: d.__setitem__(
                0,
                dataclasses.replace(d[0], diff_id="sha256:" + "0" * 64),
            )
        ),
        r"\(uncompressed, diff_id\) digest mismatch",
    ),
    "absurd-descriptor-size": (
        _with_desc(lambda out, d: d.__setitem__(0, dataclasses.replace(d[0], size=1 << 60))),
        "absurd size",
    ),
    "truncated-blob": (_truncated_blob, "is truncated"),
    "absurd-index": (
        _huge_index,
        r"index.json in .* is absurdly large \(\d+ bytes, limit 4194304\)",
    ),
    "longer-blob": (_longer_blob, "larger than its declared"),
    "missing-layer": (_missing("layer"), r"layer sha256:[0-9a-f]{64} is missing from"),
    "missing-config": (_missing("config"), r"config sha256:[0-9a-f]{64} is missing from"),
    "missing-manifest": (_missing("manifest"), r"manifest sha256:[0-9a-f]{64} is missing from"),
}


@pytest.fixture
def repo(tmp_path: Path) -> Repository:
    """A repository that already holds one image, so 'unchanged' means something."""
    r = make_repo(tmp_path / "repo")
    _image(tmp_path / "first", [[*base_layer(), Entry("usr/first", data=b"f" * 300)]])
    import_image(f"oci:{tmp_path}/first", r, tag="first")
    return r


@pytest.mark.parametrize("case", sorted(CASES))
def test_hostile_image_publishes_nothing(case: str, repo: Repository, tmp_path: Path) -> None:
    build, message = CASES[case]
    build(tmp_path / "bad")
    before = snapshot(repo.path)
    with pytest.raises(CfsbootError, match=message):
        import_image(f"oci:{tmp_path}/bad", repo, tag="bad")
    assert snapshot(repo.path) == before


def test_cli_prints_one_line(
    repo: Repository, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _entries(Entry("../evil", data=b"x"))(tmp_path / "bad")
    before = snapshot(repo.path)
    rc = main(["image", "import", f"oci:{tmp_path}/bad", "--repo", str(repo.path)])
    out, err = capsys.readouterr()
    assert rc == 1 and out == ""
    assert err == "cfsboot: tar member path '../evil' contains '..'\n"
    assert snapshot(repo.path) == before


def test_not_a_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CfsbootError, match="is not an OCI image layout"):
        import_image(f"oci:{tmp_path}/empty", None)
    with pytest.raises(CfsbootError, match="no image tagged 'v2'"):
        _image(tmp_path / "img", [base_layer()])
        import_image(f"oci:{tmp_path}/img:v2", None)
