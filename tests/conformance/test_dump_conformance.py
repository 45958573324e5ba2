"""Our image reader, dumpfile writer and `composefs-info` against C composefs 1.0.8.

C `mkcomposefs --from-file` makes every image here; then `read_image` + `dumps` (and our
`cfsboot composefs-info`) must print exactly what C `composefs-info` prints for it.
Corrupt images must give an ImageFormatError (a one-line CLI error), never a traceback.
"""

from __future__ import annotations

import gzip
import os
import random
import stat
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfsboot.commands.composefs_info import ls_lines
from cfsboot.composefs.dumpfile import DumpfileError, dumps, parse
from cfsboot.composefs.erofs.reader import ImageFormatError, read_image
from cfsboot.composefs.tree import Inode
from cfstest import cli
from cfstest.cli import one_line_error
from cfstest.reftools import RefTools
from cfstest.trees import trees

pytestmark = pytest.mark.conformance

ROOT_DIR = Path(__file__).resolve().parent.parent.parent
VERSION_ARGS = [[], ["--min-version=1"], ["--max-version=0"]]


class C:
    """The reference tools, working on image bytes through a scratch file."""

    def __init__(self, reftools: RefTools, scratch: Path) -> None:
        self.tools = reftools
        self.scratch = scratch

    def image(self, dump: bytes, args: list[str] | tuple[str, ...] = ()) -> bytes:
        out: bytes = self.tools.run("mkcomposefs", *args, "--from-file", "-", "-", input=dump)
        return out

    def info(self, command: str, image: bytes, *opts: str) -> bytes:
        path = self.scratch / "image.cfs"
        path.write_bytes(image)
        out: bytes = self.tools.run("composefs-info", *opts, command, path)
        return out


@pytest.fixture(scope="module")
def c(reftools: RefTools, tmp_path_factory: pytest.TempPathFactory) -> C:
    return C(reftools, tmp_path_factory.mktemp("c"))


def cfsboot(*args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
    return cli.run_bytes(*args)


def _assets(directory: Path) -> list[str]:
    return sorted(
        p.name
        for p in directory.glob("*.dump*")
        if not p.name.startswith("should-fail") and p.suffix in (".dump", ".gz")
    )


ASSET_DIR = Path(os.environ.get("CFSBOOT_COMPOSEFS_ASSETS", "/var/cache/cfsboot/composefs-assets"))
ASSETS = _assets(ASSET_DIR) or ["special.dump"]
BIG = {"f36-x86_64-silverblue.dump.gz", "cs9-x86_64-developer.dump.gz"}


def asset(directory: Path, name: str) -> tuple[bytes, list[str]]:
    data = (directory / name).read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    version = directory / f"{name}.version"
    args = []
    if version.exists():
        v = version.read_text().strip()
        args = [f"--min-version={v}", f"--max-version={v}"]
    return data, args


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in BIG else n for n in ASSETS]
)
def test_assets_dump_like_c(c: C, composefs_assets: Path, name: str) -> None:
    data, args = asset(composefs_assets, name)
    image = c.image(data, args)
    expected = c.info("dump", image)
    assert dumps(read_image(image)) == expected
    # A dump C prints is canonical: our parse + dumps reproduces it.
    assert dumps(parse(expected)) == expected


EDGE_CASES = [
    # mtimes before 1970 and at the int64 limits; nanoseconds are not zero-padded
    b"/ 0 40755 2 0 0 0 10.0 - - -\n/a 0 100644 1 0 0 0 -5.3 - - -\n"
    b"/b 0 100644 1 0 0 0 9223372036854775807.999999999 - - -\n"
    b"/c 0 100644 1 0 0 0 -9223372036854775808.1 - - -\n",
    # the biggest external file, ids that need extended inodes, a device number
    b"/ 0 40755 2 4294967295 65536 0 0.0 - - -\n"
    b"/big 9007199254740992 100644 70000 0 0 0 0.0 - - -\n"
    b"/dev 0 60600 1 0 0 4294967295 0.0 - - -\n",
    # escapes everywhere: names, symlink targets, content, xattr keys and values
    rb"/ 0 40755 2 0 0 0 0.0 - - - user.\x3d\x20\\\x3d=\x3d\x00\xff\n\t\r" + b"\n"
    rb"/- 1 100644 1 0 0 0 0.0 - \x2d - user.k=-" + b"\n"
    rb"/l\x20l 3 120777 1 0 0 0 0.0 \x20-\\ - -" + b"\n"
    rb"/\x7f\x80 2 100644 1 0 0 0 0.0 - \n\x00 -" + b"\n",
]


@pytest.mark.parametrize("text", EDGE_CASES)
def test_edge_cases_like_c(c: C, text: bytes) -> None:
    image = c.image(text)
    expected = c.info("dump", image)
    assert dumps(read_image(image)) == expected
    assert dumps(parse(text)) == text
    assert dumps(parse(expected)) == expected


@pytest.mark.parametrize("name", ["special.dump", "config-with-hard-link.dump.gz"])
def test_cli_like_c(c: C, composefs_assets: Path, tmp_path: Path, name: str) -> None:
    data, args = asset(composefs_assets, name)
    image = tmp_path / "image.cfs"
    image.write_bytes(c.image(data, args))
    # A partial object store: every other object exists.
    objects = c.info("objects", image.read_bytes()).splitlines()
    basedir = tmp_path / "objects"
    basedir.mkdir()
    for obj in objects[::2]:
        (basedir / os.fsdecode(obj)).parent.mkdir(parents=True, exist_ok=True)
        (basedir / os.fsdecode(obj)).write_bytes(b"")
    for command, opts in [
        ("dump", []),
        ("ls", []),
        ("objects", []),
        ("missing-objects", [f"--basedir={basedir}"]),
        ("dump", ["--filter=inline", "--filter=whiteout", "--filter=etc"]),
    ]:
        expected = c.tools.run("composefs-info", *opts, command, image, image)
        ours = cfsboot("composefs-info", *opts, command, image, image)
        assert ours.returncode == 0, ours.stderr
        assert ours.stdout == expected, (command, opts)


def test_measure_file_like_c(c: C, tmp_path: Path) -> None:
    files = []
    for i, content in enumerate([b"hello world\n", b"foo bar baz\n", os.urandom(70000)]):
        path = tmp_path / f"f{i}"
        path.write_bytes(content)
        files.append(path)
    expected = c.tools.run("composefs-info", "measure-file", *files)
    ours = cfsboot("composefs-info", "measure-file", *files)
    assert ours.returncode == 0 and ours.stdout == expected
    assert expected.splitlines()[0] == (
        b"37061ef2ac4c21bec68489b56138c5780306a4ad7fe6676236ecdf2c9027cd92"
    )


def test_measure_empty_file_is_the_kernels_digest(c: C, tmp_path: Path) -> None:
    """C 1.0.8 hashes an empty file wrongly (fixed upstream in a66faad): we follow the kernel."""
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert c.tools.run("composefs-info", "measure-file", empty) == (
        b"cfc3391077edfd51859f6e5e16e03f82b1da3ee1a35d418b0d0b3b57740b4405\n"
    )
    assert cfsboot("composefs-info", "measure-file", empty).stdout == (
        b"3d248ca542a24fc62d1c43b916eae5016878e2533c88238480b26128a1f1af95\n"
    )


# --- random trees --------------------------------------------------------------------------


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=trees(), version=st.sampled_from(range(len(VERSION_ARGS))))
def test_random_trees_dump_like_c(c: C, tree: Inode, version: int) -> None:
    text = dumps(tree)
    image = c.image(text, VERSION_ARGS[version])
    expected = c.info("dump", image)
    loaded = read_image(image)
    assert dumps(loaded) == expected
    assert dumps(parse(expected)) == expected


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(tree=trees())
def test_random_trees_ls_and_objects_like_c(c: C, tree: Inode) -> None:
    image = c.image(dumps(tree))
    loaded = read_image(image)
    assert b"".join(ls_lines(loaded)) == c.info("ls", image)
    payloads = set()
    stack = [loaded]
    while stack:
        node = stack.pop()
        for child in (node.children or {}).values():
            if child.is_reg() and child.payload is not None:
                payloads.add(child.payload + b"\n")
            if child.is_dir():
                stack.append(child)
    assert b"".join(sorted(payloads)) == c.info("objects", image)


# --- corrupt images ------------------------------------------------------------------------


def _c_sample(c: C) -> bytes:
    """A small image with every layout: inline tails, blocks, chunks, shared xattrs, links."""
    lines = [
        b"/ 4096 40755 2 0 0 0 10.0 - - - security.selinux=s\\x00 user.x=1",
        b"/big 5000 100644 1 0 0 0 10.0 - " + b"b" * 5000 + b" - user.x=1",
        b"/dev 0 20644 1 70000 0 1234 11.5 - - -",
        b"/dir 0 40700 2 0 0 0 10.0 - - -",
        *[b"/dir/entry-%03d 0 100644 1 0 0 0 10.0 - - -" % i for i in range(180)],
        b"/ext 8000 100644 2 0 0 0 10.0 ab/cdef - " + b"ab" * 32 + b" trusted.overlay.a=b",
        b"/hl 0 @100644 0 0 0 0 0.0 /ext - -",
        b"/small 3 100644 1 0 0 0 10.0 - abc - user.x=1",
        b"/sym 4 120777 1 0 0 0 10.0 /dir - -",
        b"/wh 0 20000 1 0 0 0 10.0 - - -",
    ]
    return c.image(b"\n".join(lines) + b"\n")


def _read_or_error(image: bytes) -> None:
    """Reading must either work (and dump) or raise ImageFormatError: nothing else."""
    try:
        root = read_image(image)
    except ImageFormatError as e:
        assert str(e) and "\n" not in str(e)
        return
    dumps(root)


def test_truncated_images(c: C) -> None:
    image = _c_sample(c)
    for size in [0, 1, 32, 1023, 1024, 1100, 4095, 4096, *range(4097, len(image), 257)]:
        _read_or_error(image[:size])
    with pytest.raises(ImageFormatError, match="smaller than one block"):
        read_image(image[:4095])
    with pytest.raises(ImageFormatError, match="outside the image"):
        read_image(image[: len(image) - 4096])  # the directory's data block is gone


def test_every_metadata_byte_flipped(c: C) -> None:
    image = _c_sample(c)
    (meta_blkaddr,) = struct.unpack_from("<I", image, 1024 + 40)
    inodes = max(meta_blkaddr * 4096, 1024 + 128)
    for off in [*range(0, 32), *range(1024, 1024 + 128)]:
        for flip in (0xFF, 0x01, 0x80):
            damaged = bytearray(image)
            damaged[off] ^= flip
            _read_or_error(bytes(damaged))
    # The first inodes: the root, its xattrs (shared and inline), files, the big directory.
    for off in range(inodes, inodes + 2048):
        damaged = bytearray(image)
        damaged[off] ^= 0xFF
        _read_or_error(bytes(damaged))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_random_damage(c: C, data: st.DataObject) -> None:
    image = bytearray(_SAMPLE.get("image") or _SAMPLE.setdefault("image", _c_sample(c)))
    for _ in range(data.draw(st.integers(1, 8))):
        off = data.draw(st.integers(0, len(image) - 1))
        image[off] = data.draw(st.integers(0, 255))
    _read_or_error(bytes(image))


_SAMPLE: dict[str, bytes] = {}


def _patch(image: bytes, off: int, fmt: str, *values: int) -> bytes:
    out = bytearray(image)
    struct.pack_into(fmt, out, off, *values)
    return bytes(out)


def test_specific_corruptions(c: C) -> None:
    image = _c_sample(c)
    root_nid = struct.unpack_from("<H", image, 1024 + 14)[0]
    meta = struct.unpack_from("<I", image, 1024 + 40)[0] * 4096
    root_off = meta + root_nid * 32
    cases = [
        (_patch(image, 0, "<I", 0x12345678), "not a composefs image"),
        (_patch(image, 4, "<I", 2), "unsupported composefs header version 2"),
        (_patch(image, 1024, "<I", 0), "no EROFS superblock"),
        (_patch(image, 1024 + 12, "<B", 9), "unsupported EROFS block size"),
        (_patch(image, 1024 + 40, "<I", 1 << 20), "points past the end"),
        (_patch(image, 1024 + 14, "<H", 0xFFFF), "outside the image"),
        (_patch(image, root_off + 4, "<H", stat.S_IFREG | 0o644), "root inode is not a directory"),
        (_patch(image, root_off + 4, "<H", 0o170644), "invalid mode"),
        (_patch(image, root_off, "<H", 3 << 1), "unsupported data layout 3"),
        (_patch(image, root_off + 2, "<H", 0xFFFF), "outside the image"),
    ]
    for damaged, message in cases:
        with pytest.raises(ImageFormatError, match=message):
            read_image(damaged)


def test_directory_cycle_is_rejected(c: C) -> None:
    image = c.image(b"/ 0 40755 2 0 0 0 0.0 - - -\n/d 0 40755 2 0 0 0 0.0 - - -\n")
    root = read_image(image)
    assert root.children is not None and b"d" in root.children
    # The root ("." "..", the 256 whiteout stubs and "d") fills one directory block at
    # the root inode's i_u; point the dirent of "d" at the root itself.
    root_nid = struct.unpack_from("<H", image, 1024 + 14)[0]
    meta = struct.unpack_from("<I", image, 1024 + 40)[0] * 4096
    block = struct.unpack_from("<I", image, meta + root_nid * 32 + 16)[0] * 4096
    count = struct.unpack_from("<H", image, block + 8)[0] // 12
    dirents = [struct.unpack_from("<QH", image, block + 12 * i) for i in range(count)]
    names = [
        image[block + off : block + (dirents[i + 1][1] if i + 1 < count else off + 1)]
        for i, (_, off) in enumerate(dirents)
    ]
    d_index = names.index(b"d")
    damaged = _patch(image, block + 12 * d_index, "<Q", root_nid)
    with pytest.raises(ImageFormatError, match="linked more than once"):
        read_image(damaged)


def test_cli_error_on_corrupt_image(c: C, tmp_path: Path) -> None:
    image = tmp_path / "bad.cfs"
    image.write_bytes(_patch(_c_sample(c), 1024, "<I", 0))
    proc = cfsboot("composefs-info", "dump", image)
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert proc.stderr == (
        f"cfsboot: failed to load '{image}': no EROFS superblock (magic 0x00000000)\n".encode()
    )
    missing = cfsboot("composefs-info", "ls", tmp_path / "missing")
    assert one_line_error(missing).startswith("cfsboot: failed to open ")


def test_random_seeds_of_damage_are_reproducible(c: C) -> None:
    """A fixed-seed sweep (cheap, deterministic) over the whole image, two bytes at a time."""
    image = _c_sample(c)
    rng = random.Random(1234)
    for _ in range(500):
        damaged = bytearray(image)
        for _ in range(2):
            damaged[rng.randrange(len(image))] = rng.randrange(256)
        _read_or_error(bytes(damaged))


def test_shared_directory_blocks_are_rejected(c: C) -> None:
    """Many directories pointing at one block: refused, instead of reading it again and again."""
    from cfsboot.composefs.erofs.reader import _Reader

    lines = [b"/ 0 40755 2 0 0 0 0.0 - - -", b"/d 0 40755 2 0 0 0 0.0 - - -"]
    lines += [b"/d/file-%03d 0 100644 1 0 0 0 0.0 - - -" % i for i in range(200)]
    lines += [b"/e%02d 0 40755 2 0 0 0 0.0 - - -" % i for i in range(40)]
    image = c.image(b"\n".join(lines) + b"\n")
    reader = _Reader(image)
    _, entries = reader.load(reader.root_nid)
    nids = dict(entries)
    d_off = reader.meta + nids[b"d"] * 32
    (d_block,) = struct.unpack_from("<I", image, d_off + 16)
    assert d_block  # /d has a whole block of entries
    damaged = image
    for i in range(40):
        off = reader.meta + nids[b"e%02d" % i] * 32
        damaged = _patch(damaged, off, "<H", 0)  # compact, FLAT_PLAIN
        damaged = _patch(damaged, off + 8, "<I", 4096)  # i_size: one block
        damaged = _patch(damaged, off + 16, "<I", d_block)  # ... the block of /d
    with pytest.raises(ImageFormatError, match="directories take more space than the image"):
        read_image(damaged)


# --- the parser against C's parser ---------------------------------------------------------

_TOKENS = [
    *(b"", b"-", b"0", b"1", b"01", b"-1", b"+1", b"0x10", b"1.", b".1", b"1.1", b"-1.5"),
    *(b"1.1000000000", b"4294967295", b"4294967296", b"18446744073709551615"),
    *(b"18446744073709551616", b"9223372036854775808.0", b"@100644", b"@20777", b"100644"),
    *(b"40755", b"120777", b"777", b"200000", b"/", b"//", b"/inline", b"a", b"ab/cd"),
    *(b"\\x00", b"\\q", b"\\x2d", b"x=y", b"=", b"k=", b"user.x=1 user.x=2", b"a b"),
    *(b"ab" * 32, b"AB" * 32, b"ab" * 64, b"abc"),
]


def test_parser_accepts_only_what_c_accepts_and_means_the_same(c: C) -> None:
    """Dumpfiles with one field replaced: whatever we accept, C accepts, and the image C
    makes from `dumps(parse(x))` is the image C makes from x (same meaning)."""
    lines = [
        b"/ 4096 40555 2 0 0 0 1633950376.0 - - - trusted.foo1=bar-1 user.foo2=bar-2",
        b"/blockdev 0 60777 1 0 0 107690 1633950376.0 - - - trusted.bar=bar-2",
        b"/chardev 0 20777 1 0 0 10769 1633950376.0 - - - trusted.foo=bar-2",
        b"/ext 100 100644 1 0 0 0 1.0 ab/cd - " + b"ab" * 32,
        b"/hl 0 @100644 1 0 0 0 0.0 /inline - -",
        b"/inline 15 100777 1 0 0 0 1633950376.0 - FOOBAR\\nINAFILE\\n - user.foo=bar-2",
        b"/sym 3 120777 1 0 0 0 1.0 abc - -",
        b"/whiteout 0 20777 1 0 0 0 1633950376.0 - - - trusted.foo=bar-2",
    ]
    rng = random.Random(20261122)
    accepted = 0
    for _ in range(250):
        mutated = list(lines)
        j = rng.randrange(len(mutated))
        fields = mutated[j].split(b" ")
        k = rng.randrange(len(fields) + 1)
        fields[k : k + 1] = [rng.choice(_TOKENS)]
        mutated[j] = b" ".join(fields)
        text = b"\n".join(mutated) + b"\n"
        try:
            tree = parse(text)
        except DumpfileError:
            continue
        accepted += 1
        assert c.image(dumps(tree)) == c.image(text), mutated[j]
    assert accepted > 30


def test_c_redirect_overread_is_not_copied(c: C) -> None:
    """C 1.0.8's reader takes up to 2 bytes past a redirect value (`value_size++` where it
    means `--`); they show when the value ends on a 4-byte boundary (payload length 3 mod 4),
    here the first null chunk address. We read the payload as written."""
    payload = b"ab/" + b"c" * 64
    text = b"/ 4096 40755 2 0 0 0 0.0 - - -\n/f 100 100644 1 0 0 0 0.0 " + payload + b" - -\n"
    image = c.image(text)
    assert c.info("dump", image).splitlines()[1].split(b" ")[8] == payload + b"\\xff\\xff"
    root = read_image(image)
    assert root.children is not None and root.children[b"f"].payload == payload
    assert dumps(root) == text


def test_image_deeper_than_the_recursion_limit(c: C, tmp_path: Path) -> None:
    """A valid image 1500 directories deep (C's composefs-info crashes on such depths):
    `composefs-info dump` prints one line per file, and the tree it read is the input."""
    depth = 1500
    lines = [b"/ 4096 40755 3 0 0 0 0.0 - - -"]
    for level in range(1, depth + 1):
        nlink = 2 if level == depth else 3
        lines.append(b"/d" * level + b" 4096 40755 %d 0 0 0 0.0 - - -" % nlink)
    lines.append(b"/d" * depth + b"/f 4 100644 1 0 0 0 0.0 - deep -")
    # dumpfile order: depth first, so the file comes right after its directory
    dump = b"\n".join(lines) + b"\n"
    image_path = tmp_path / "deep.cfs"
    image_path.write_bytes(c.image(dump))
    proc = cfsboot("composefs-info", "dump", image_path)
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert proc.stdout == dumps(read_image(image_path.read_bytes()))
    out = proc.stdout.splitlines()
    assert [line.split(b" ")[0] for line in out] == [line.split(b" ")[0] for line in lines]
    assert out[-1] == lines[-1]


# --- dumpfiles C accepts and we refuse (issue 15), decided one by one ---------------------

_ROOT_LINE = b"/ 4096 40755 2 0 0 0 0.0 - - -\n"
# (the line after the root, what C mkcomposefs 1.0.8 does with it, our one-line refusal)
_REFUSED = [
    # Nanoseconds of a second or more: C stores them as written (5.1000000000 comes back
    # from composefs-info; 4294967296 wraps to 0): the kernel would hand out a timespec
    # that utimensat() itself refuses.
    (
        b"/f 0 100644 1 0 0 0 5.1000000000 - - -",
        b"/f 0 100644 1 0 0 0 5.1000000000 - - -",
        "mtime nanoseconds 1000000000 are out of range",
    ),
    (
        b"/f 0 100644 1 0 0 0 5.4294967296 - - -",
        b"/f 0 100644 1 0 0 0 5.0 - - -",
        "mtime nanoseconds 4294967296 are out of range",
    ),
    # A repeated xattr name: C keeps the last value. Which one the author meant is a guess.
    (
        b"/f 0 100644 1 0 0 0 0.0 - - - user.a=1 user.a=2",
        b"/f 0 100644 1 0 0 0 0.0 - - - user.a=2",
        "duplicate xattr b'user.a'",
    ),
    # A size of 2**64-1: C writes it into the inode, with a payload or without one (a file
    # with neither content nor object, 16 EiB long); no file of an OS image is that big.
    (
        b"/f 18446744073709551615 100644 1 0 0 0 0.0 ab/cdef - -",
        b"/f 18446744073709551615 100644 1 0 0 0 0.0 ab/cdef - -",
        "file size 18446744073709551615 is too big for a composefs image",
    ),
    (
        b"/f 18446744073709551615 100644 1 0 0 0 0.0 - - -",
        b"/f 18446744073709551615 100644 1 0 0 0 0.0 - - -",
        "file size 18446744073709551615 is too big for a composefs image",
    ),
    # Signs: C's strtoull() reads -0 as 0, +5 as 5 and -1 as 2**64-1 (then uid 4294967295).
    # composefs-info never writes a sign: a signed number is a damaged or forged line.
    (b"/f 0 100644 1 -0 0 0 0.0 - - -", b"/f 0 100644 1 0 0 0 0.0 - - -", "invalid uid '-0'"),
    (b"/f 0 100644 1 +5 0 0 0.0 - - -", b"/f 0 100644 1 5 0 0 0.0 - - -", "invalid uid '+5'"),
    (
        b"/f 0 100644 1 -1 0 0 0.0 - - -",
        b"/f 0 100644 1 4294967295 0 0 0.0 - - -",
        "invalid uid '-1'",
    ),
    (b"/d 0 20644 1 0 0 -0 0.0 - - -", b"/d 0 20644 1 0 0 0 0.0 - - -", "invalid rdev '-0'"),
    # An rdev written in hex: C refuses it too ("Invalid integer 0x10").
    (b"/d 0 20644 1 0 0 0x10 0.0 - - -", None, "invalid rdev '0x10'"),
]


@pytest.mark.parametrize(("line", "c_reads", "refusal"), _REFUSED)
def test_dumpfiles_c_is_lenient_with_are_refused_in_one_line(
    c: C, tmp_path: Path, line: bytes, c_reads: bytes | None, refusal: str
) -> None:
    dump = tmp_path / "in.dump"
    dump.write_bytes(_ROOT_LINE + line + b"\n")
    proc = subprocess.run(
        [str(c.tools.mkcomposefs), "--from-file", str(dump), str(tmp_path / "c.img")],
        capture_output=True,
        check=False,
    )
    if c_reads is None:
        assert proc.returncode != 0
    else:
        assert proc.returncode == 0, proc.stderr
        read_back = c.tools.run("composefs-info", "dump", tmp_path / "c.img")
        assert read_back.splitlines()[-1] == c_reads
    ours = cfsboot("mkcomposefs", "--from-file", dump, tmp_path / "ours.img")
    assert one_line_error(ours) == f"cfsboot: dumpfile line 2: {refusal}"
    assert not (tmp_path / "ours.img").exists()
