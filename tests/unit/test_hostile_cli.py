"""Hostile files through the command line: one `cfsboot: ...` line on stderr, exit 1, nothing else.

The fuzz targets (tests/fuzz) call the parsers; these go through `cfsboot.cli.main`, which
turns any exception that is not a user error into an "internal error" line with exit 70,
so exit 1 here means the bad input was recognised as such, not merely survived.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from cfsboot.cli import main
from cfsboot.composefs import dumpfile
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.image.importer import import_image
from cfstest import cli
from cfstest.ocibuild import Entry, Layout, tar_chunks
from cfstest.ocirepo import base_layer, make_repo, snapshot

SMALL = (
    b"/ 4096 40755 3 0 0 0 1.5 - - - user.a=b\n"
    b"/d 0 40700 2 0 0 0 0.0 - - - trusted.overlay.opaque=y\n"
    b"/f 5 100644 1 0 0 0 0.0 - hello -\n"
    b"/h 5 @100644 1 0 0 0 0.0 /f - -\n"
    b"/l 3 120777 1 0 0 0 0.0 /f - -\n"
    b"/x 4096 100644 1 0 0 0 0.0 ab/" + b"c" * 62 + b" - " + b"ab" + b"c" * 62 + b"\n"
)


def _one_line(rc: int, err: str) -> str:
    assert rc == 1, f"exit {rc}: {err}"
    assert err.startswith("cfsboot: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err[len("cfsboot: ") : -1]


def _image() -> bytes:
    return bytes(build_image(dumpfile.parse(SMALL)))


def test_composefs_info_on_truncated_images(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every cut of an image, at each 64 bytes: a dump of what is whole, or one error line."""
    image = _image()
    path = tmp_path / "cut.img"
    errors = set()
    for end in range(0, len(image), 64):
        path.write_bytes(image[:end])
        for command in ("dump", "ls", "objects"):
            rc = main(["composefs-info", command, str(path)])
            _out, err = capsys.readouterr()
            line = _one_line(rc, err)
            assert line.startswith(f"failed to load {str(path)!r}: "), line
            errors.add(line.split(": ", 1)[1].split(" ")[0])
    # Each cut is refused (the last block holds inode data), for more than one reason.
    assert errors == {"image", "superblock", "directory"}, errors


def test_composefs_info_on_images_with_a_byte_changed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each byte of the metadata flipped in turn: exit 0 (a different tree) or 1, never 70."""
    image = _image()
    path = tmp_path / "flip.img"
    used = [i for i in range(len(image)) if image[i]]  # bytes the writer set (headers, inodes)
    refused = 0
    for i in used:
        path.write_bytes(image[:i] + bytes([image[i] ^ 0xFF]) + image[i + 1 :])
        rc = main(["composefs-info", "dump", str(path)])
        _out, err = capsys.readouterr()
        if rc:
            _one_line(rc, err)
            refused += 1
    assert 0 < refused < len(used)


def test_measure_file_of_a_directory_names_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = main(["composefs-info", "measure-file", str(tmp_path)])
    line = _one_line(rc, capsys.readouterr().err)
    assert line == f"failed to measure {str(tmp_path)!r}: Is a directory"


def test_composefs_info_subprocess_prints_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "junk.img"
    path.write_bytes(_image()[:4100])
    proc = cli.run_bytes("composefs-info", "dump", path)
    assert proc.stdout == b""
    line = cli.one_line_error(proc)
    assert line.startswith("cfsboot: ") and str(path) in line


# -- image import of a layout whose documents are damaged ---------------------------------------


def _layout(path: Path) -> Layout:
    out = Layout(path)
    out.add_image([out.add_layer(tar_chunks([*base_layer(), Entry("usr/a", data=b"a" * 100)]))])
    return out


def _manifest_path(path: Path) -> Path:
    index = json.loads((path / "index.json").read_bytes())
    digest: str = index["manifests"][0]["digest"]
    return path / "blobs/sha256" / digest[7:]


def _swap_manifest(path: Path, data: bytes) -> None:
    """Replace the manifest by `data`, stored and indexed under its right digest and size."""
    old = _manifest_path(path)
    old.unlink()
    digest = hashlib.sha256(data).hexdigest()
    (path / "blobs/sha256" / digest).write_bytes(data)
    index = json.loads((path / "index.json").read_bytes())
    index["manifests"][0].update(digest=f"sha256:{digest}", size=len(data))
    (path / "index.json").write_text(json.dumps(index))


DAMAGE: dict[str, tuple[Callable[[Path], object], str]] = {
    "manifest-not-json": (
        lambda p: _swap_manifest(p, b'{"schemaVersion": 2, "config": '),
        r"^manifest sha256:[0-9a-f]{64} in .*/img is not valid JSON \(",
    ),
    "manifest-wrong-types": (
        lambda p: _swap_manifest(p, b'{"schemaVersion": 2, "config": [], "layers": {}}'),
        r"^manifest sha256:[0-9a-f]{64} in .*/img has no config$",
    ),
    "manifest-changed-in-place": (
        lambda p: _manifest_path(p).write_bytes(
            _manifest_path(p).read_bytes().replace(b"schemaVersion", b"schemaVersiom")
        ),
        r"^manifest sha256:[0-9a-f]{64} digest mismatch: expected",
    ),
    "index-not-json": (
        lambda p: (p / "index.json").write_bytes(b"\xff\xfe{"),
        r"^index.json in .*/img is not valid JSON \('utf-16-le' codec can't decode",
    ),
    "index-digest-traversal": (
        lambda p: (p / "index.json").write_text(
            json.dumps(
                {
                    "schemaVersion": 2,
                    "manifests": [
                        {
                            "mediaType": "application/vnd.oci.image.manifest.v1+json",
                            "digest": "sha256:../../../../etc/passwd",
                            "size": 10,
                        }
                    ],
                }
            )
        ),
        r"^index.json in .*/img: manifest has an invalid digest 'sha256:(\.\./){4}etc/passwd'",
    ),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_import_of_a_layout_with_damaged_documents(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    damage, message = DAMAGE[case]
    _layout(tmp_path / "img")
    damage(tmp_path / "img")
    repo = make_repo(tmp_path / "repo")
    before = snapshot(repo.path)
    rc = main(["image", "import", f"oci:{tmp_path}/img", "--repo", str(repo.path)])
    out, err = capsys.readouterr()
    assert out == ""
    line = _one_line(rc, err)
    assert re.search(message, line), line
    assert snapshot(repo.path) == before


def test_import_of_a_layer_with_a_pax_mtime_of_5000_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The tar regression of test_fuzz_regressions, through the command line."""
    out = Layout(tmp_path / "img")
    pax = b"5012 mtime=" + b"9" * 5000 + b"\n"
    assert len(pax) == 5012
    good = [*base_layer(), Entry("usr/a", data=b"a" * 100)]
    layer = out.add_layer(iter([b"".join(tar_chunks(good, end_marker=False)), _pax("x", pax)]))
    out.add_image([layer])
    repo = make_repo(tmp_path / "repo")
    before = snapshot(repo.path)
    rc = main(["image", "import", f"oci:{tmp_path}/img", "--repo", str(repo.path)])
    assert _one_line(rc, capsys.readouterr().err) == (
        "PAX header mtime has 5000 digits of seconds: out of range"
    )
    assert snapshot(repo.path) == before
    with pytest.raises(Exception, match="out of range"):
        import_image(f"oci:{tmp_path}/img", None)


def _pax(name: str, records: bytes) -> bytes:
    """A PAX 'x' header with `records`, then an empty file `name`, then the end of archive."""
    import tarfile

    def header(n: str, typeflag: bytes, size: int) -> bytes:
        info = tarfile.TarInfo(n)
        info.size = size
        info.type = typeflag
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    body = records + bytes(-len(records) % 512)
    return header("PaxHeader", b"x", len(records)) + body + header(name, b"0", 0) + bytes(1024)
