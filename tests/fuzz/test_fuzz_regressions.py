"""Every crash the fuzz targets found, with its input pinned (issue 15).

Each test runs the input through the same path as the target and asserts the
one-line error (or the value) cfsboot gives now. The dumpfile's long numbers,
found here, were fixed by the perf-build rewrite.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cfsboot.boot.counting import grub_tries
from cfsboot.boot.grub import GrubError, GrubMenu
from cfsboot.cli import main
from cfsboot.composefs import dumpfile
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.tree import Inode, walk
from cfsboot.deploy.assessment import AssessmentConfig
from cfsboot.deploy.assessment import parse_config as parse_assessment
from cfsboot.deploy.origin import Origin
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import CfsbootError
from cfsboot.image.installconfig import InstallConfig, parse_file
from cfsboot.image.kargsd import load_kargs_d, parse_kargs_toml
from cfsboot.jsondoc import DocumentError
from cfsboot.oci.dockerarchive import parse_manifest_json
from cfsboot.oci.documents import ImageConfig, Index, Manifest
from cfstest.fuzzing import check
from cfstest.fuzztargets import DIGEST, all_targets
from setuproot.config import ConfigError, parse_config

HUGE = "9" * 5000  # past Python's 4300-digit limit of int(str)
DEEP = "[" * 5000  # past the recursion limit of json's and tomllib's parsers


# -- JSON: OCI documents and docker archives --------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (f'{{"schemaVersion": {HUGE}}}', "Exceeds the limit (4300 digits)"),
        ('{"a": ' + DEEP, "nested too deeply"),
    ],
)
def test_oci_documents_with_huge_numbers_or_deep_nesting(data: str, error: str) -> None:
    for parse in (
        lambda: Index.parse(data.encode(), "index.json", 1 << 20),
        lambda: Manifest.parse(data.encode(), config_limit=1, layer_limit=1),
        lambda: ImageConfig.parse(data.encode()),
    ):
        with pytest.raises(DocumentError, match=r"is not valid JSON \(") as e:
            parse()
        assert error in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CfsbootError, match=r"manifest.json in a.tar is not valid JSON \("):
        parse_manifest_json(data.encode(), "a.tar")


# -- TOML: kargs.d, setup-root-conf.toml, install config, boot assessment config ---------------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (f"kargs = [{HUGE}]", "invalid TOML: Exceeds the limit (4300 digits)"),
        (f"kargs = {DEEP}", "invalid TOML: nested too deeply"),
    ],
)
def test_toml_with_huge_numbers_or_deep_nesting(text: str, reason: str) -> None:
    with pytest.raises(CfsbootError) as e:
        parse_kargs_toml(text, name="x.toml", arch="x86_64")
    assert str(e.value).startswith(f"usr/lib/bootc/kargs.d/x.toml: {reason}")
    with pytest.raises(ConfigError) as c:
        parse_config(text.replace("kargs", "[etc]\nmount"), "/conf.toml")
    assert str(c.value).startswith(f"/conf.toml: {reason}")
    with pytest.raises(CfsbootError) as i:
        parse_file(text, "install.toml", InstallConfig(), arch="x86_64")
    assert str(i.value).startswith(f"install.toml: {reason}")
    with pytest.raises(CfsbootError) as a:
        parse_assessment(text, name="a.toml", base=AssessmentConfig())
    assert str(a.value).startswith("a.toml: ")  # its decode errors never said "invalid TOML"
    assert reason.removeprefix("invalid TOML: ") in str(a.value)


def test_kargs_d_file_that_is_not_utf8(tmp_path: Path) -> None:
    d = tmp_path / "usr/lib/bootc/kargs.d"
    d.mkdir(parents=True)
    (d / "10-x.toml").write_bytes(b'\x80args = ["console=ttyS0,115200"]\n')
    with pytest.raises(CfsbootError) as e:
        load_kargs_d(tmp_path, arch="x86_64")
    assert str(e.value) == "usr/lib/bootc/kargs.d/10-x.toml: not UTF-8 text (byte 0)"


# -- .origin files ----------------------------------------------------------------------------


def test_origin_that_is_not_utf8_is_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state/deploy" / DIGEST / f"{DIGEST}.origin"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\x80origin]\ncontainer-image-reference = x\n")
    with caplog.at_level(logging.WARNING):
        assert Sysroot(tmp_path, run_dir=tmp_path / "run").origin(DIGEST) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} is not UTF-8 text: not an origin file"
    ]


def test_origin_reference_without_transport_reads_back_the_same() -> None:
    origin = Origin.parse("[origin]\ncontainer-image-reference = o")
    assert origin.image == "o"
    assert "container-image-reference = o\n" in origin.serialise()
    assert Origin.parse(origin.serialise()) == origin


def test_origin_reference_in_containers_image_spelling() -> None:
    """Found by atheris: `ostree-unverified-image:docker://q.io/x` (what ostree-ext also
    reads) was taken as `docker:////q.io/x`."""
    text = "[origin]\ncontainer-image-reference = ostree-unverified-image:docker://q.io/a/b:1\n"
    origin = Origin.parse(text)
    assert origin.image == "docker://q.io/a/b:1"
    assert "= ostree-unverified-image:registry:q.io/a/b:1\n" in origin.serialise()
    assert Origin.parse(origin.serialise()) == origin


def test_origin_docker_reference_without_slashes_reads_back_the_same() -> None:
    """Found by atheris: `docker:name` (not skopeo's `docker://name`) was written back as
    `registry:name`, which reads as `docker://name`: a rewrite changed the reference."""
    origin = Origin.parse("[origin]\ncontainer-image-reference = docker:q.io/a\n")
    assert origin.image == "docker:q.io/a"
    assert "container-image-reference = docker:q.io/a\n" in origin.serialise()
    assert Origin.parse(origin.serialise()) == origin
    crash = (
        b"[origin]\ncontainer-image-reference = docker:doaaaaaaaaa\n\n"
        b"[imaeer://qifest_digest = sbu-"
    )
    again = Origin.parse(Origin.parse(crash.decode()).serialise())
    assert again == Origin.parse(crash.decode())


# -- the GRUB menu and its environment block ---------------------------------------------------

MARKER = "# cfsboot GRUB menu v1: generated by cfsboot, do not edit (rollback rewrites it)\n"


@pytest.mark.parametrize("value", ["0#", "²", "9" * 5000, ""])
def test_grub_menu_with_a_timeout_that_is_not_a_number(value: str) -> None:
    """Found by atheris: `set timeout=0#` was a ValueError from int()."""
    with pytest.raises(GrubError) as e:
        GrubMenu.parse(f"{MARKER}set timeout={value}\n")
    assert str(e.value) == f"line 2: timeout {value!r} is not a number"


@pytest.mark.parametrize("value", ["²", "٣", "10"])
def test_grubenv_counter_that_is_not_one_ascii_digit_is_out_of_tries(value: str) -> None:
    tries = grub_tries(value, 3, "k")
    assert tries is not None and (tries.left, tries.done) == (0, 3)


# -- trees thousands of directories deep -----------------------------------------------------


def _deep_tree(depth: int) -> Inode:
    root = Inode.directory()
    node = root
    for _ in range(depth):
        child = Inode.directory()
        assert node.children is not None
        node.children[b"d"] = child
        node = child
    return root


def test_composefs_info_dump_of_an_image_3000_directories_deep(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """The issue's RecursionError in tree.walk (C's composefs-info crashes there too)."""
    image = tmp_path / "deep.img"
    image.write_bytes(build_image(_deep_tree(3000)))
    assert main(["composefs-info", "dump", str(image)]) == 0
    lines = capsysbinary.readouterr().out.splitlines()
    assert len(lines) == 3001
    assert lines[-1] == b"/d" * 3000 + b" 27 40755 2 0 0 0 0.0 - - -"
    assert [p for p, _ in walk(_deep_tree(3))] == [b"/", b"/d", b"/d/d", b"/d/d/d"]


# -- the dumpfile parser (fixed by perf-build's rewrite) --------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        f"/ {HUGE} 40755 2 0 0 0 0.0 - - -\n",  # size (slow path)
        f"/ 0 40755 {HUGE} 0 0 0 0.0 - - -\n",  # nlink (fast path's metadata key)
        f"/ 0 40755 2 0 0 0 0.{HUGE} - - -\n",  # mtime nanoseconds
    ],
)
def test_dumpfile_number_with_thousands_of_digits(line: str) -> None:
    with pytest.raises(dumpfile.DumpfileError):
        dumpfile.parse(line.encode())


# -- the harness itself -----------------------------------------------------------------------


def test_harness_catches_a_write_outside_the_temp_dir(tmp_path: Path) -> None:
    from dataclasses import replace

    outside = tmp_path / "outside"
    inside = tmp_path / "inside"
    inside.mkdir()

    def escape(_data: bytes, _tmp: Path) -> None:
        outside.write_bytes(b"x")

    target = replace(all_targets()[0], run=escape)
    with pytest.raises(Exception, match="wrote outside") as e:
        check(target, b"", inside)
    assert type(e.value).__name__ == "Escape"


def test_harness_lets_documented_errors_pass_and_others_through(tmp_path: Path) -> None:
    from dataclasses import replace

    def fail(exc: BaseException) -> None:
        raise exc

    base = all_targets()[0]
    check(replace(base, run=lambda _d, _t: fail(CfsbootError("x"))), b"", tmp_path)
    with pytest.raises(KeyError):
        check(replace(base, run=lambda _d, _t: fail(KeyError("x"))), b"", tmp_path)


# -- layers: PAX numbers, gzip padding, the import's layer records -----------------------------


def _pax_member(records: dict[str, str]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo("etc/x")
        info.size = 1
        info.pax_headers = records
        t.addfile(info, io.BytesIO(b"x"))
    return buf.getvalue()


@pytest.mark.parametrize(
    ("records", "error"),
    [
        ({"mtime": HUGE}, "PAX header mtime has 5000 digits of seconds: out of range"),
        ({"mtime": "0" * 5000 + "7.5"}, None),  # leading zeros: still 7.5 s
        ({"uid": HUGE}, "PAX header uid is 5000 bytes long: out of range"),
        ({"size": HUGE}, "PAX header size is 5000 bytes long: out of range"),
    ],
)
def test_tar_pax_numbers_past_int_digit_limit(records: dict[str, str], error: str | None) -> None:
    """Found by reading: a PAX mtime of 5000 digits was int()'s ValueError (a traceback)."""
    import io

    from cfsboot.oci.tar import TarError, entries

    data = _pax_member(records)
    if error is None:
        [(entry, _body)] = list(entries(io.BytesIO(data)))
        assert (entry.mtime, entry.mtime_nsec) == (7, 500_000_000)
        return
    with pytest.raises(TarError) as e:
        list(entries(io.BytesIO(data)))
    assert str(e.value) == error


class _GzipThenZeros:
    """A gzip member, then `zeros` bytes of zero padding, produced as read (not held)."""

    def __init__(self, member: bytes, zeros: int) -> None:
        self.member, self.zeros = member, zeros

    def read(self, n: int = -1) -> bytes:
        if self.member:
            out, self.member = self.member[:n], self.member[n:]
            return out
        n = min(n, self.zeros)
        self.zeros -= n
        return bytes(n)

    def readinto(self, b: bytearray | memoryview) -> int:
        data = self.read(len(b))
        b[: len(data)] = data
        return len(data)


def test_gzip_layer_with_a_long_zero_padding() -> None:
    """Each 256 KiB of padding after the last gzip member was one more recursion: 300 MiB
    of zeros (a blob anyone can publish) was a RecursionError."""
    import gzip

    from cfsboot.oci.streams import decompress

    stream = decompress(_GzipThenZeros(gzip.compress(b"tar", mtime=0), 300 << 20))  # type: ignore[arg-type]
    assert stream.read() == b"tar"


def _record(doc: object) -> bytes:
    import json

    import zstandard

    return zstandard.ZstdCompressor().compress(json.dumps(doc).encode())


_ROW = ["file", "usr/a", 420, 0, 0, 0, 0, 1, "", 0, {}, "a", None]


@pytest.mark.parametrize(
    ("row", "error"),
    [
        (_ROW[:10] + [[], *_ROW[11:]], "bad xattrs of 'usr/a'"),  # was an AttributeError
        ([_ROW[0], 7, *_ROW[2:]], "bad entry path 7"),
        (_ROW[:2] + [float("inf"), *_ROW[3:]], "bad mode of 'usr/a'"),
        (_ROW[:3] + [1 << 100, *_ROW[4:]], "bad uid of 'usr/a'"),  # found by atheris
        (_ROW[:6] + [10**9, *_ROW[7:]], "bad mtime_nsec of 'usr/a'"),
        (_ROW[:9] + [1 << 32, *_ROW[10:]], "bad rdev of 'usr/a'"),
        ([_ROW[0], "usr/../../x", *_ROW[2:]], "bad entry path 'usr/../../x'"),
        (_ROW[:12] + ["../../etc/shadow"], "bad object digest of 'usr/a'"),
        (_ROW[:12] + [["ab"]], "bad object digest of 'usr/a'"),
        (_ROW[:12], "an entry is not a row of 13 values"),
        ([_ROW[0], "9" * 300 + "usr", *_ROW[2:]], f"bad entry path '{'9' * 79}"),  # hypothesis
        (_ROW[:10] + [{"user.x": "v" * 65537}, *_ROW[11:]], "bad xattrs of 'usr/a'"),
        (_ROW[:11] + ["a" * 65, None], "bad inline content of 'usr/a'"),
    ],
)
def test_damaged_layer_record_is_a_layer_error(row: list[object], error: str) -> None:
    """A damaged record in the repository (gc, fsck and a re-import read them back) was an
    AttributeError or OverflowError, gave paths with `..` and digests that are not hex, or
    numbers and names the EROFS writer refused with a ValueError (atheris: a uid of 70
    digits; hypothesis in make test: a name of 300 bytes)."""
    from cfsboot.oci.apply import LayerError, LayerRecord

    doc = {"format": 1, "diff_id": "sha256:" + "1" * 64, "algorithm": "sha256", "entries": [row]}
    with pytest.raises(LayerError) as e:
        LayerRecord.from_bytes(_record(doc))
    assert str(e.value).startswith(f"corrupt layer record in the repository ({error}")


# -- writing an image's /etc and /var out ------------------------------------------------------


def test_extract_of_a_directory_1500_deep(tmp_path: Path) -> None:
    """extract() recursed once per directory: an image whose /etc nests 1500 deep (3000 path
    bytes, under PATH_MAX) was a RecursionError at deploy."""
    import os

    from cfsboot.deploy.state import remove_tree
    from cfsboot.image.extract import extract

    root = _deep_tree(1500)
    node: Inode | None = root
    while node is not None:  # owned by us: chown works without root
        node.uid, node.gid, node.mtime = os.getuid(), os.getgid(), 1700000000
        node = (node.children or {}).get(b"d")
    try:
        extract(root, tmp_path / "etc", tmp_path / "objects")
        deepest = tmp_path / "etc" / "/".join(["d"] * 1500)
        assert deepest.is_dir() and not any(deepest.iterdir())
        assert os.stat(tmp_path / "etc").st_mtime == 1700000000  # set after its children
        assert os.stat(deepest).st_mtime == 1700000000
    finally:
        # Removing it (a deployment's removal does) recursed too, in shutil.rmtree; left in
        # pytest's temporary directory it would break pytest's own clean-up of it.
        remove_tree(tmp_path / "etc")
    assert not (tmp_path / "etc").exists()


# -- state files -------------------------------------------------------------------------------


def test_boot_assessment_record_nested_too_deeply_is_no_record(tmp_path: Path) -> None:
    """json.loads raises RecursionError, not ValueError, on `[[[[...`: status and fsck read
    the cached update, the health results and this record with `except ValueError` only
    (the other three are pinned in their modules' tests)."""
    from cfsboot.deploy.assessrecord import read_record, record_path

    sysroot = Sysroot(tmp_path, run_dir=tmp_path / "run")
    path = record_path(sysroot, DIGEST)
    path.parent.mkdir(parents=True)
    path.write_text("[" * 100_000)
    assert read_record(sysroot, DIGEST) is None
    path.write_text('{"failed": ["x"]}')
    assert read_record(sysroot, DIGEST) == {"failed": ["x"]}


# -- image archives (Python's tarfile) -----------------------------------------------------------


def _pax_record(key: bytes, value: bytes) -> bytes:
    body = key + b"=" + value + b"\n"
    n = len(body) + 2
    while len(str(n)) + 1 + len(body) != n:
        n += 1
    return str(n).encode() + b" " + body


@pytest.mark.parametrize("transport", ["docker-archive", "oci-archive"])
def test_archive_with_a_gnu_sparse_header_without_its_map(tmp_path: Path, transport: str) -> None:
    """Found by reading tarfile: a PAX GNU sparse 1.0 member whose map is not numbers made
    tarfile.getmembers() raise ValueError (an internal error, exit 70, from the CLI)."""
    import tarfile

    from cfsboot.image.importer import import_image

    records = b"".join(
        _pax_record(k, v)
        for k, v in (
            (b"GNU.sparse.major", b"1"),
            (b"GNU.sparse.minor", b"0"),
            (b"GNU.sparse.name", b"manifest.json"),
            (b"GNU.sparse.realsize", b"10"),
        )
    )

    def header(name: str, typeflag: bytes, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.type = size, typeflag
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    path = tmp_path / "image.tar"
    path.write_bytes(
        header("PaxHeader", b"x", len(records))
        + records.ljust(-(-len(records) // 512) * 512, b"\0")
        + header("manifest.json", b"0", 512)
        + b"x" * 512
        + bytes(1024)
    )
    with pytest.raises(CfsbootError) as e:
        import_image(f"{transport}:{path}", None)
    assert str(e.value) == (
        f"{path} is not an uncompressed tar archive "
        "(not enough values to unpack (expected 2, got 1))"
    )


def test_device_number_past_32_bits_in_a_layer(tmp_path: Path) -> None:
    """Found writing the layer-record regression: a char device 4096:0 in a layer (a legal
    tar) became an rdev past 32 bits, and the EROFS writer's ValueError an internal error."""
    from cfsboot.image.importer import import_image
    from cfstest.ocibuild import Compression, Entry, build_layout
    from cfstest.ocirepo import base_layer

    for major, minor in ((4096, 0), (0, 1 << 20)):
        layer = [*base_layer(), Entry("usr/c", "char", major=major, minor=minor)]
        build_layout(tmp_path / f"{major}", [layer], compression=Compression.NONE)
        with pytest.raises(CfsbootError) as e:
            import_image(f"oci:{tmp_path}/{major}", None)
        assert str(e.value) == (
            f"tar member 'usr/c' has device number {major}:{minor}, past what composefs can"
            " store (major < 4096, minor < 1048576)"
        )
    build_layout(
        tmp_path / "ok",
        [[*base_layer(), Entry("usr/c", "char", major=4095, minor=(1 << 20) - 1)]],
        compression=Compression.NONE,
    )
    import_image(f"oci:{tmp_path}/ok", None)


def test_gpt_entry_array_of_hundreds_of_gigabytes(tmp_path: Path) -> None:
    """Found by atheris (gpt): 512 entries of 486604800 bytes each (a multiple of 128, as
    the header's CRC says) made read_layout ask for 249 GB in one read: a MemoryError."""
    import struct
    import zlib

    from cfsboot.boot.gpt import read_layout

    disk = bytearray(64 * 512)
    header = bytearray(92)
    header[0:8] = b"EFI PART"
    struct.pack_into("<IIIIQQQQ", header, 8, 0x10000, 92, 0, 0, 1, 63, 34, 62)
    struct.pack_into("<QII", header, 72, 2, 512, 486604800)
    struct.pack_into("<I", header, 16, zlib.crc32(bytes(header)))
    disk[512 : 512 + 92] = header
    path = tmp_path / "disk.img"
    path.write_bytes(disk)
    with pytest.raises(CfsbootError) as e:
        read_layout(path)
    assert str(e.value).startswith(
        f"{path}: damaged GPT: primary header (LBA 1): the partition entry array lies past"
        " the end of the disk; backup header (LBA 63): no GPT signature"
    )


# -- systemd-boot's EFI variables ------------------------------------------------------


def test_efi_variable_globs_with_many_stars_and_unclosed_sets(tmp_path: Path) -> None:
    """Patterns a backtracking glob takes exponential time on (`*a*a*...x`), or that scan
    an unclosed `[` at each position, match nothing and are noted unmatched, one by one."""
    from cfsboot.boot import loadervars
    from cfstest.fuzzstate import _menu, _utf16

    stars, unclosed = "*b" * 2000 + "x", "*[" * 2000
    target = next(t for t in all_targets() if t.name == "efivars")
    check(target, _utf16(stars, unclosed, stars), tmp_path)
    vardir = tmp_path / "efivars"
    bl = _menu(tmp_path / "esp")
    lv = loadervars.read_loader_vars(vardir)
    assert loadervars.unmatched(bl, lv) == [
        ("LoaderEntryOneShot", stars),
        ("LoaderEntryDefault", unclosed),
    ]
    assert loadervars.next_boot(bl, lv).chosen.variable is None


def test_efi_variable_naming_an_auto_entry_with_control_characters(tmp_path: Path) -> None:
    """An `auto-` value is taken for one of systemd-boot's own entries, its id the value
    itself: the warning status and staging log quotes it, on one line."""
    from cfsboot.boot import loadervars
    from cfstest.fuzzstate import _menu, _utf16

    target = next(t for t in all_targets() if t.name == "efivars")
    check(target, _utf16("auto-\x1b[2J\nx"), tmp_path)
    lv = loadervars.read_loader_vars(tmp_path / "efivars")
    nb = loadervars.next_boot(_menu(tmp_path / "esp"), lv)
    assert nb.warning() == (
        "the EFI variable LoaderEntryOneShot names 'auto-\\x1b[2j\\nx' (not a cfsboot"
        " entry): systemd-boot starts it at the next boot instead of uki-6.1.efi;"
        ' `bootctl set-oneshot ""` clears it'
    )


# -- state files cfsboot reads back ----------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "lines"),
    [
        # A newline and an escape in a check's last line: one line of printable text.
        (
            b'[{"name": "a\\u001b[2J", "status": 1, "seconds": 1e999, "last_line": "x\\ny"}]',
            ["a [2J exited with status 1: x y"],
        ),
        # Entries of the wrong types were taken as they came ("1 exited with status x").
        (
            b'[{"name": 1, "status": "x", "seconds": 0}, {"name": "b", "status": true,'
            b' "seconds": 0}, {"name": "c", "status": 2, "seconds": "0"}, 7, null]',
            [],
        ),
        (b'[{"name": "d", "status": 2, "seconds": 0, "extra": 1}]', ["d exited with status 2"]),
    ],
)
def test_health_results_read_back_as_one_line_each(
    tmp_path: Path, doc: bytes, lines: list[str]
) -> None:
    from cfsboot.deploy import health

    target = next(t for t in all_targets() if t.name == "state-files")
    check(target, doc, tmp_path)
    assert health.read_results(tmp_path / "run" / "cfsboot" / "health-checks.json") == lines


def test_boot_assessment_record_failures_read_back_as_one_line_each(tmp_path: Path) -> None:
    """What status shows as the last failure: printable lines, whatever the record holds."""
    from cfsboot.deploy import assessrecord

    target = next(t for t in all_targets() if t.name == "state-files")
    check(target, b'{"failed": ["a\\nb", 3, ["c"]], "time": "t"}', tmp_path)
    record = assessrecord.read_record(Sysroot(tmp_path / "root", run_dir=tmp_path / "run"), DIGEST)
    assert record == {"failed": ["a b", "3", "['c']"], "time": "t"}
    check(target, b'{"failed": {"a": 1}}', tmp_path)
    record = assessrecord.read_record(Sysroot(tmp_path / "root", run_dir=tmp_path / "run"), DIGEST)
    assert record == {"failed": []}
