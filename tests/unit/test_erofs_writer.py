"""The EROFS writer against golden vectors: composefs-rs's pinned digests and C's test assets."""

from __future__ import annotations

import copy
import gzip
import hashlib
import stat
import struct
from pathlib import Path

import pytest

from cfsboot.commands.mkcomposefs import versions
from cfsboot.composefs import dumpfile
from cfsboot.composefs.erofs import format as fmt
from cfsboot.composefs.erofs.reader import read_image
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.erofs.xxhash import xxh32
from cfsboot.composefs.fsverity import digest_bytes
from cfsboot.composefs.tree import Inode
from cfsboot.errors import CfsbootError
from cfsboot.image.importer import import_image
from cfstest.gates import missing_capability
from cfstest.lenientdump import local_parse
from cfstest.ocibuild import Entry
from cfstest.ocirepo import base_layer, layout
from setuproot.contract import HashAlg


def _empty() -> Inode:
    return Inode.directory(0o755)


def _simple() -> Inode:
    """composefs-rs crates/composefs/tests/mkfs.rs `simple`: leaves with mode bits 0."""
    root = Inode.directory(0o755)
    assert root.children is not None
    root.children.update(
        {
            b"fifo": Inode(mode=stat.S_IFIFO),
            b"regular-inline": Inode(mode=stat.S_IFREG, content=b"hihi", size=4),
            b"regular-external": Inode(
                mode=stat.S_IFREG,
                size=1234,
                digest=b"\x5a" * 32,
                payload=b"5a/" + b"5a" * 31,
            ),
            b"chrdev": Inode(mode=stat.S_IFCHR, rdev=123),
            b"blkdev": Inode(mode=stat.S_IFBLK, rdev=123),
            b"socket": Inode(mode=stat.S_IFSOCK),
            b"symlink": Inode(mode=stat.S_IFLNK, payload=b"/target"),
        }
    )
    return root


# fs-verity sha256 digests pinned by composefs-rs test_erofs_digest_stability (V0 = C
# mkcomposefs default, V1 = C mkcomposefs --min-version=1).
PINNED = [
    ("empty", _empty, 0, "8f589e8f57ecb88823736b0d857ddca1e1068a23e264fad164b28f7038eb3682"),
    ("simple", _simple, 0, "9f3f5620ee0c54708516467d0d58741e7963047c7106b245d94c298259d0fa01"),
    ("empty", _empty, 1, "14a26c957c84f6eb774b91205476adc13196c7c33b9dd97d08d43725ecb90b63"),
    ("simple", _simple, 1, "ad6db6427568a1e4fdc772cbab7b6063f5eb4b33cb62982a740ba9213e5962b5"),
]


@pytest.mark.parametrize(("name", "make", "version", "expected"), PINNED)
def test_composefs_rs_pinned_digests(name: str, make: object, version: int, expected: str) -> None:
    assert callable(make)
    image = build_image(make(), min_version=version, max_version=version)
    assert digest_bytes(image).hex() == expected


# The C project's tests/assets: sha256 of the image file built by
# `mkcomposefs [--min-version=V --max-version=V] --from-file`.
ASSETS = [
    "special.dump",
    "special_v1.dump",
    "bigfile.dump",
    "bigfile-xattr.dump",
    "longlink.dump",
    "no-newline.dump",
    "honggfuzz-bigfile-with-acl.dump",
    "honggfuzz-chardev-nonzero-size.dump",
    "honggfuzz-long-symlink.dump",
    "honggfuzz-longlink-unterminated.dump",
    "config.dump.gz",
    "config-with-hard-link.dump.gz",
    "cs9-x86_64-minimal.dump.gz",
    pytest.param("cs9-x86_64-developer.dump.gz", marks=pytest.mark.slow),
    pytest.param("f36-x86_64-silverblue.dump.gz", marks=pytest.mark.slow),
]

# Assets that only C's lenient parser reads (fewer than 11 fields); our dumpfile.parse is strict.
LENIENT = {"honggfuzz-longlink-unterminated.dump"}


def _asset_tree(assets: Path, name: str) -> tuple[Inode, int, int, str]:
    data = (assets / name).read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    version_file = assets / f"{name}.version"
    lo, hi = (0, 1)
    if version_file.exists():
        lo = hi = int(version_file.read_text())
    expected = (assets / f"{name}.sha256").read_text().split()[0]
    if name in LENIENT:
        return local_parse(data), lo, hi, expected
    return dumpfile.parse(data), lo, hi, expected


@pytest.mark.parametrize("name", ASSETS)
def test_c_assets(composefs_assets: Path, name: str) -> None:
    if not (composefs_assets / name).exists():
        missing_capability(f"{name} is not in this copy of the C composefs assets")
    root, lo, hi, expected = _asset_tree(composefs_assets, name)
    image = build_image(root, min_version=lo, max_version=hi)
    assert hashlib.sha256(image).hexdigest() == expected


def test_input_tree_is_not_modified(composefs_assets: Path) -> None:
    root, lo, hi, _ = _asset_tree(composefs_assets, "special.dump")
    before = dumpfile.dumps(root)
    snapshot = copy.deepcopy(root)
    first = build_image(root, min_version=lo, max_version=hi)
    assert dumpfile.dumps(root) == before == dumpfile.dumps(snapshot)
    assert build_image(root, min_version=lo, max_version=hi) == first


def _whiteout_tree() -> Inode:
    root = Inode.directory(0o755)
    assert root.children is not None
    sub = Inode.directory(0o700)
    assert sub.children is not None
    sub.children[b"gone"] = Inode(mode=stat.S_IFCHR | 0o644)
    root.children[b"d"] = sub
    return root


def test_whiteouts_bump_to_v1_only_when_allowed() -> None:
    def header_version(image: bytes | bytearray) -> int:
        magic, _, _, version = fmt.COMPOSEFS_HEADER.unpack_from(image)
        assert magic == fmt.COMPOSEFS_MAGIC
        return int(version)

    assert header_version(build_image(_whiteout_tree())) == 1
    assert header_version(build_image(_whiteout_tree(), max_version=0)) == 0
    assert header_version(build_image(_empty())) == 0
    assert header_version(build_image(_empty(), min_version=1)) == 1
    # min > max: max follows min, as in lcfs_write_to()
    assert header_version(build_image(_empty(), min_version=1, max_version=0)) == 1


def test_acl_sets_header_flag() -> None:
    root = _empty()
    assert root.children is not None
    root.children[b"f"] = Inode(
        mode=stat.S_IFREG | 0o644, xattrs={b"system.posix_acl_access": b"\x02\0\0\0"}
    )
    _, _, flags, _ = fmt.COMPOSEFS_HEADER.unpack_from(build_image(root))
    assert flags == fmt.COMPOSEFS_FLAG_HAS_ACL
    _, _, flags, _ = fmt.COMPOSEFS_HEADER.unpack_from(build_image(_empty()))
    assert flags == 0


def test_sha512_digest_gives_sha512_metacopy() -> None:
    root = _empty()
    assert root.children is not None
    digest = bytes(range(64))
    root.children[b"big"] = Inode(
        mode=stat.S_IFREG | 0o644, size=100, digest=digest, payload=b"00/" + b"11" * 63
    )
    image = build_image(root)
    value = fmt.metacopy_value(digest)
    assert value == bytes([0, 68, 0, fmt.FS_VERITY_HASH_ALG_SHA512]) + digest
    assert value in image
    assert b"/00/" + b"11" * 63 in image


def test_metacopy_values() -> None:
    assert fmt.metacopy_value(b"\1" * 32) == b"\0\x24\0\1" + b"\1" * 32
    with pytest.raises(ValueError, match="unsupported length"):
        fmt.metacopy_value(b"\1" * 20)


def test_superblock_fields() -> None:
    image = build_image(_simple())
    sb = fmt.SUPERBLOCK.unpack_from(image, fmt.SUPERBLOCK_OFFSET)
    magic, checksum, compat, blkszbits, extslots, root_nid, inos = sb[:7]
    assert (magic, checksum, blkszbits, extslots) == (fmt.EROFS_MAGIC, 0, 12, 0)
    assert compat == fmt.FEATURE_COMPAT_MTIME | fmt.FEATURE_COMPAT_XATTR_FILTER
    assert root_nid == 36  # first slot after the superblock: 1152 / 32
    assert inos == 1 + 7 + 256  # root, 7 leaves, the 00..ff whiteout stubs
    assert len(image) % fmt.BLOCK_SIZE == 0


@pytest.mark.parametrize(
    ("make_child", "message"),
    [
        (lambda: Inode(mode=stat.S_IFREG, size=1 << 60), "too big"),
        (lambda: Inode(mode=stat.S_IFREG, content=b"x" * 5001, size=5001), "exceeds 5000"),
        (lambda: Inode(mode=stat.S_IFLNK, payload=b""), "empty target"),
        (lambda: Inode(mode=0o644), "invalid file type"),
    ],
)
def test_rejects_what_c_rejects(make_child: object, message: str) -> None:
    root = _empty()
    assert root.children is not None and callable(make_child)
    root.children[b"x"] = make_child()
    with pytest.raises(ValueError, match=message):
        build_image(root)


def test_rejects_directory_hardlinks() -> None:
    root = _empty()
    assert root.children is not None
    sub = Inode.directory()
    root.children[b"a"] = sub
    root.children[b"b"] = sub
    with pytest.raises(ValueError, match="directory hardlinked"):
        build_image(root)


def test_hardlink_is_one_inode_at_its_first_dumpfile_name() -> None:
    root = _empty()
    assert root.children is not None
    f = Inode(mode=stat.S_IFREG | 0o644, nlink=2, content=b"shared", size=6)
    sub = Inode.directory()
    assert sub.children is not None
    sub.children[b"x"] = f
    root.children[b"a"] = sub
    root.children[b"b"] = f
    image = build_image(root)
    _, _, _, _, _, _, inos = fmt.SUPERBLOCK.unpack_from(image, fmt.SUPERBLOCK_OFFSET)[:7]
    assert inos == 1 + 2 + 256  # root, a, the file once, stubs
    assert image.count(b"shared") == 1


def test_xxh32_vectors() -> None:
    assert xxh32(b"", 0) == 0x02CC5D05
    assert xxh32(b"a", 0) == 0x550D7456
    assert xxh32(b"abc", 0) == 0x32D153FF
    assert xxh32(b"Nobody inspects the spammish repetition", 0) == 0xE2293B2F


def test_struct_sizes() -> None:
    assert struct.calcsize(fmt.INODE_COMPACT.format) == 32
    assert fmt.INODE_EXTENDED.size == 64
    assert fmt.DIRENT.size == 12
    assert fmt.XATTR_IBODY_HEADER.size == 12
    assert fmt.COMPOSEFS_HEADER.size == 32


def test_fails_where_c_fails_on_replaced_overlay_xattrs() -> None:
    """C 1.0.8 loses its xattr accounting when it clones the tree; replacing a long input
    xattr on a whiteout (or its parent) then fails with ERANGE. We fail the same way."""
    root = _empty()
    assert root.children is not None
    root.children[b"wh"] = Inode(mode=stat.S_IFCHR, xattrs={b"user.overlay.whiteout": b"w" * 40})
    with pytest.raises(ValueError, match="Numerical result out of range"):
        build_image(root)
    # A short old value keeps C's estimate positive: no failure.
    root.children[b"wh"].xattrs[b"user.overlay.whiteout"] = b""
    image = build_image(root)
    assert b"overlay.overlay.whiteouts" in image  # the parent's escaped marker


def test_cli_version_defaults_follow_c() -> None:
    """mkcomposefs: 0..1 by default; once one bound is given, the other defaults to 0."""
    assert versions(None, None) == (0, 1)
    assert versions(1, None) == (1, 1)
    assert versions(None, 1) == (0, 1)
    assert versions(None, 0) == (0, 0)
    assert versions(1, 0) == (1, 1)


def test_link_paths_place_hardlinks_at_their_target_line() -> None:
    dump = (
        b"/ 4096 40755 2 0 0 0 0.0 - - -\n"
        b"/a 0 @100644 - - - - 0.0 /z - -\n"
        b"/z 5 100644 2 0 0 0 0.0 - hello -\n"
    )
    assert dumpfile.link_paths(dump) == [b"/a"]
    assert dumpfile.link_paths(dump.replace(b"@", b"")) == []
    root = dumpfile.parse(dump)
    plain, placed = build_image(root), build_image(root, link_paths=[b"/a"])
    assert plain != placed and len(plain) == len(placed)
    with pytest.raises(ValueError, match="only '@' names"):
        build_image(root, link_paths=[b"/a", b"/z"])
    with pytest.raises(ValueError, match="not in the tree"):
        build_image(root, link_paths=[b"/nope/x"])


# --- what an EROFS image cannot hold (issue 15) --------------------------------------------


def test_xattrs_c_would_refuse_are_one_line_naming_the_file(tmp_path: Path) -> None:
    """Linux allows 65536-byte values (XATTR_SIZE_MAX) and so does the tar reader; C's
    writer allows one file 32767 bytes of xattrs (and an EROFS entry's value size is 16
    bits). Through a layer, as a user would meet it."""
    ping = Entry(
        "usr/bin/ping",
        data=b"p" * 100,
        mode=0o755,
        xattrs={"security.capability": bytes(65536)},
    )
    ref = layout(tmp_path / "img", [[*base_layer(), ping]])
    with pytest.raises(CfsbootError) as e:
        import_image(ref, None, algorithm=HashAlg.SHA256)
    assert str(e.value) == (
        "cannot build the composefs image: the xattrs of /usr/bin/ping take 65574 bytes"
        " (security.capability alone 65536), more than the 32767 composefs allows for one"
        " file; remove or shorten them in the source"
    )


ROOT_LINE = b"/ 4096 40755 2 0 0 0 0.0 - - -\n"


@pytest.mark.parametrize("value_len", [32767 - 12 - 7 - 8, 32767 - 12 - 7 - 8 + 1])
def test_xattr_space_of_one_file_ends_where_c_ends_it(value_len: int) -> None:
    """The largest xattrs C's writer takes fit, and are read back; one byte more is refused
    (the same limit as the dumpfile reader's)."""
    xattrs = {b"user.big": b"v" * value_len}
    root = Inode(mode=stat.S_IFDIR | 0o755, children={b"f": Inode(stat.S_IFREG | 0o644)})
    assert root.children is not None
    root.children[b"f"].xattrs = xattrs
    line = b"/f 0 100644 1 0 0 0 0.0 - - - user.big=" + b"v" * value_len
    if value_len <= 32767 - 12 - 7 - 8:
        back = read_image(build_image(root))
        assert back.children is not None and back.children[b"f"].xattrs == xattrs
        dumpfile.parse(ROOT_LINE + line + b"\n")
    else:
        with pytest.raises(CfsbootError, match=r"^cannot build .* /f take 32768 bytes"):
            build_image(root)
        with pytest.raises(CfsbootError, match="xattrs exceed the 32767-byte limit"):
            dumpfile.parse(ROOT_LINE + line + b"\n")
