"""Byte-for-byte comparison of our EROFS writer with C `mkcomposefs --from-file` 1.0.8.

Each tree is serialized to a dumpfile, given to C, and the image compared with
`build_image()` of both the tree itself and of the dumpfile parsed back, for the default
versions (0..1) and for `--min-version=1`.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfsboot.composefs import dumpfile
from cfsboot.composefs.dumpfile import dumps
from cfsboot.composefs.erofs import format as fmt
from cfsboot.composefs.erofs.writer import build_image
from cfsboot.composefs.tree import Inode
from cfstest import cli
from cfstest.cli import one_line_error
from cfstest.reftools import RefTools
from cfstest.trees import trees
from cfstest.writercheck import assert_same_as_c, c_image, d, ext, f, lnk, tree

pytestmark = pytest.mark.conformance


def _every_type() -> Inode:
    return tree(
        {
            b"dir": tree({b"empty": d(0o700, uid=5, gid=6)}, mode=0o750),
            b"reg-empty": f(),
            b"reg-inline": f(b"hello\n", mtime=7, mtime_nsec=9),
            b"reg-ext": ext(12345),
            b"reg-ext-nodigest": ext(99, digest=None, payload=b"ab/cdef"),
            b"reg-ext-nopayload": ext(4096, payload=b""),
            b"symlink": lnk(b"../target"),
            b"chr": Inode(mode=stat.S_IFCHR | 0o620, rdev=(4 << 8) | 1),
            b"blk": Inode(mode=stat.S_IFBLK | 0o660, rdev=(8 << 8) | 0x10, uid=70000),
            b"fifo": Inode(mode=stat.S_IFIFO | 0o600, gid=1 << 20),
            b"sock": Inode(mode=stat.S_IFSOCK | 0o755, mtime=-5),
            b"suid": f(b"x", mode=0o4755, nlink=70000),
        },
        mtime=1_700_000_000,
        mtime_nsec=123,
    )


def _long_names() -> Inode:
    names = [bytes([0x61 + i % 26]) * (200 + i % 56) + b"%d" % i for i in range(60)]
    big = tree({n[:255]: f(b"%d" % i) for i, n in enumerate(names)})
    odd = tree({b"x" * 255: f(b"a"), b"sp ace": f(), b"nl\nx": f(), b"eq=x": f(), b"\xff\xfe": f()})
    return tree({b"big": big, b"odd": odd, b"y" * 255: lnk(b"z" * 255)})


def _dir_sizes() -> Inode:
    # Directories whose entries just fit / just overflow a block and half a block.
    root = tree({})
    assert root.children is not None
    for total in (2030, 2048, 2060, 4080, 4096, 4110, 8200):
        names: dict[bytes, Inode] = {}
        used = 12 + 1 + 12 + 2  # "." and ".."
        i = 0
        while used < total:
            name = b"n%05d" % i + b"_" * min(200, max(0, total - used - 12 - 6))
            names[name] = f()
            used += 12 + len(name)
            i += 1
        root.children[b"d%d" % total] = tree(names)
    return root


def _xattrs() -> Inode:
    many = {b"user.k%03d" % i: b"v" * (i % 7) for i in range(140)}
    return tree(
        {
            b"a": f(b"1", xattrs=dict(many)),
            b"b": f(b"2", xattrs=dict(many)),
            b"c": f(b"3", xattrs={b"user.big": b"B" * 3000, b"security.selinux": b"ctx\0"}),
            b"e": f(
                xattrs={
                    b"trusted.overlay.redirect": b"/x",
                    b"trusted.overlay.overlay.opaque": b"y",
                    b"trusted.overlaything": b"1",
                    b"user.overlay.whiteout": b"",
                    b"system.posix_acl_default": b"\x02\0\0\0",
                    b"system.nfs4_acl": b"n",
                    b"lustre.foo": b"l",
                    b"other.ns": b"o",
                }
            ),
            b"s1": lnk(b"t", xattrs={b"user.same": b"v", b"user.same2": b"v"}),
            b"s2": lnk(b"t", xattrs={b"user.same": b"v", b"user.same2": b"w"}),
        },
        xattrs={b"security.selinux": b"system_u:object_r:root_t:s0\0", b"user.root": b""},
    )


def _hardlinks() -> Inode:
    shared = f(b"shared content", nlink=3)
    ext_shared = ext(1 << 20, nlink=2)
    sym = lnk(b"/somewhere", nlink=2)
    dev = Inode(mode=stat.S_IFCHR | 0o600, rdev=5, nlink=2)
    return tree(
        {
            b"a": tree({b"deep": tree({b"file": shared})}),
            b"b": shared,
            b"c": tree({b"again": shared, b"ext": ext_shared}),
            b"ext2": ext_shared,
            b"s1": sym,
            b"s2": sym,
            b"dev1": dev,
            b"dev2": dev,
        }
    )


def _whiteouts() -> Inode:
    wh = Inode(mode=stat.S_IFCHR | 0o644)
    return tree(
        {
            b"00": d(),
            b"0a": f(b"not a whiteout stub"),
            b"ff": wh,
            b"sub": tree(
                {b"gone": Inode(mode=stat.S_IFCHR, uid=3), b"kept": f(b"k")},
                xattrs={b"trusted.overlay.opaque": b"y"},
            ),
            b"sub2": tree({b"wh": Inode(mode=stat.S_IFCHR | 0o600, size=7)}),
        },
        xattrs={b"security.selinux": b"root_ctx"},
    )


def _inline_sizes() -> Inode:
    root = tree({})
    assert root.children is not None
    sizes = [1, 63, 64, 65, 100, 2047, 2048, 2049, 3000, 4095, 4096, 4097, 4999, 5000]
    for i, size in enumerate(sizes):
        for pad in (0, 1, 2):
            xattrs = {b"user.p": b"p" * (pad * 37)} if pad else {}
            content = bytes((i * 7 + j) % 251 for j in range(size))
            root.children[b"f%04d_%d" % (size, pad)] = f(content, xattrs=xattrs)
    return root


def _symlinks() -> Inode:
    root = tree({})
    assert root.children is not None
    for length in (1, 100, 1000, 1023, 1024):
        for xsize in (0, 2000, 3000, 3040, 3100):
            xattrs = {b"user.x%d" % length: b"X" * xsize} if xsize else {}
            root.children[b"l%04d_%d" % (length, xsize)] = lnk(b"t" * length, xattrs=xattrs)
    return root


def _big_files() -> Inode:
    sizes = [1, 4095, 4096, 4097, (1 << 32) - 1, 1 << 32, (1 << 32) + 1, (1 << 43) + 1]
    sizes += [(1 << 43) * 512, (1 << 43) * 1023 + 5, (1 << 43) * 1024]
    return tree({b"e%02d" % i: ext(size) for i, size in enumerate(sizes)})


def _mtimes() -> Inode:
    return tree(
        {
            b"old": f(b"o", mtime=5, mtime_nsec=999_999_999),
            b"same": f(b"s", mtime=5, mtime_nsec=999_999_999),
            b"new": f(b"n", mtime=1 << 40),
            b"dir": tree({b"x": f()}, mtime=5, mtime_nsec=999_999_998),
        },
        mtime=100,
    )


def _special_sizes() -> Inode:
    """Devices, fifos and sockets keep no size in the image, yet a size past 32 bits
    still makes their inode extended (SIZE of their dumpfile lines)."""
    return tree(
        {
            b"chr": Inode(mode=stat.S_IFCHR | 0o644, rdev=5, size=9),
            b"blk": Inode(mode=stat.S_IFBLK | 0o644, rdev=7, size=1 << 33),
            b"fifo": Inode(mode=stat.S_IFIFO | 0o644, size=4096),
            b"sock": Inode(mode=stat.S_IFSOCK | 0o644, size=(1 << 32) - 1),
            b"sock2": Inode(mode=stat.S_IFSOCK | 0o644, size=1 << 32),
        }
    )


CASES: dict[str, Callable[[], Inode]] = {
    "every-type": _every_type,
    "long-names": _long_names,
    "dir-sizes": _dir_sizes,
    "xattrs": _xattrs,
    "hardlinks": _hardlinks,
    "whiteouts": _whiteouts,
    "inline-sizes": _inline_sizes,
    "symlinks": _symlinks,
    "big-files": _big_files,
    "mtimes": _mtimes,
    "special-sizes": _special_sizes,
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_edge_cases_match_c(reftools: RefTools, name: str) -> None:
    assert_same_as_c(reftools, CASES[name]())


def test_too_big_file_fails_like_c(reftools: RefTools) -> None:
    root = tree({b"huge": ext((1 << 43) * 1024 + 1)})
    with pytest.raises(ValueError, match="too big"):
        build_image(root)
    with pytest.raises(AssertionError, match="failed"):
        c_image(reftools, dumps(root), [])


def test_sha512_image_reads_back_in_c(reftools: RefTools, tmp_path: Path) -> None:
    """C 1.0.8 knows only sha256 digests (it truncates longer ones), so a sha512 image cannot
    be compared byte for byte. C must still read it as the same tree, the only difference to
    a digest-less twin being the 68-byte sha512 metacopy xattr."""
    digest = bytes(range(64))
    payload = b"00/" + digest[1:].hex().encode()

    def make(dg: bytes | None) -> Inode:
        return tree({b"f": ext(100, digest=dg, payload=payload), b"g": f(b"inline")})

    image = build_image(make(digest))
    twin = build_image(make(None))
    metacopy = fmt.metacopy_value(digest)
    assert metacopy == b"\0\x44\0\x02" + digest
    assert image.count(metacopy) == 1 and twin.count(metacopy) == 0
    # Same layout: only the metacopy entry grows by 68 bytes (and what follows shifts).
    assert len(image) == len(twin)
    dumps_of = []
    for name, img in (("sha512", image), ("twin", twin)):
        path = tmp_path / name
        path.write_bytes(img)
        dumps_of.append(reftools.run("composefs-info", "dump", path))
    assert dumps_of[0] == dumps_of[1]
    assert b"/f 100 100644 1 0 0 0 0.0 " + payload + b" - -\n" in dumps_of[0]


# --- random trees ------------------------------------------------------------------------

_NAMES = st.binary(min_size=1, max_size=12).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
) | st.sampled_from([b"00", b"a", b"b", b"ff", b"x" * 255, b"\xff"])
_XATTR_KEYS = st.sampled_from(
    [
        b"user.a",
        b"user.b",
        b"security.selinux",
        b"trusted.overlay.opaque",
        b"trusted.x",
        b"system.posix_acl_access",
        b"user.overlay.whiteout",
        b"lustre.z",
    ]
)
_XATTRS = st.dictionaries(
    _XATTR_KEYS, st.sampled_from([b"", b"v", b"w" * 40, b"\0\xff"]), max_size=4
)
_TIMES = st.sampled_from([0, 1, 1_700_000_000, 1 << 33])


@st.composite
def _leaf(draw: st.DrawFn) -> Inode:
    kinds = ["inline", "ext", "empty", "link", "chr", "blk", "fifo", "sock", "wh"]
    kind = draw(st.sampled_from(kinds))
    node: Inode
    if kind == "inline":
        node = f(draw(st.binary(min_size=1, max_size=5000)))
    elif kind == "ext":
        node = ext(draw(st.sampled_from([1, 65, 4096, 1 << 33, (1 << 44) + 3])))
    elif kind == "empty":
        node = f()
    elif kind == "link":
        node = lnk(draw(st.binary(min_size=1, max_size=1024).filter(lambda t: b"\0" not in t)))
    elif kind == "wh":
        node = Inode(mode=stat.S_IFCHR | 0o644)
    else:
        ftype = {"chr": stat.S_IFCHR, "blk": stat.S_IFBLK, "fifo": stat.S_IFIFO}.get(
            kind, stat.S_IFSOCK
        )
        rdev = draw(st.integers(1, 1 << 20)) if kind in ("chr", "blk") else 0
        node = Inode(mode=ftype | 0o600, rdev=rdev)
    node.uid = draw(st.sampled_from([0, 1000, 70000]))
    node.gid = draw(st.sampled_from([0, 1000]))
    node.mtime = draw(_TIMES)
    node.mtime_nsec = draw(st.sampled_from([0, 5]))
    node.xattrs = draw(_XATTRS)
    node.nlink = draw(st.sampled_from([1, 2]))
    return node


def _local_trees() -> st.SearchStrategy[Inode]:
    """Trees aimed at the writer's corners: long symlinks, huge external files, whiteouts
    next to overlay xattrs (which may make C fail), and hardlinks added afterwards."""

    def extend(children: st.SearchStrategy[Inode]) -> st.SearchStrategy[Inode]:
        return st.builds(
            lambda kids, xattrs, mtime: tree(kids, xattrs=xattrs, mtime=mtime),
            st.dictionaries(_NAMES, children, max_size=6),
            _XATTRS,
            _TIMES,
        )

    return st.recursive(_leaf(), extend, max_leaves=30).filter(Inode.is_dir).map(_add_hardlinks)


def _add_hardlinks(root: Inode) -> Inode:
    """Give a few leaves a second name, as a dumpfile's '@' lines do."""
    leaves: list[Inode] = []
    dirs: list[Inode] = []
    for node in _nodes(root):
        (dirs if node.children is not None else leaves).append(node)
    for i, leaf in enumerate(leaves[::3]):
        if leaf.is_whiteout():
            continue
        target = dirs[i % len(dirs)]
        assert target.children is not None
        target.children.setdefault(b"hl%d" % i, leaf)
    return root


def _nodes(root: Inode) -> list[Inode]:
    out = [root]
    for node in out:
        if node.children is not None:
            out.extend(c for c in node.children.values() if c not in out)
    return out


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_local_trees())
def test_random_corner_trees_match_c(reftools: RefTools, root: Inode) -> None:
    assert_same_as_c(reftools, root)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trees())
def test_random_trees_match_c(reftools: RefTools, root: Inode) -> None:
    assert_same_as_c(reftools, root)


# --- hardlinks named by '@' lines before their target, and the CLI --------------------

_LINK_FIRST_DUMP = b"""/ 4096 40755 2 0 0 0 0.0 - - -
/a 0 @100644 - - - - 0.0 /sub/b - -
/sub 4096 40755 2 0 0 0 0.0 - - -
/sub/b 300 100644 2 0 0 0 0.0 ab/cd - %s
/sub/c 0 @100644 - - - - 0.0 /a - -
""" % (b"ab" * 32)


def test_hardlink_placed_at_its_non_link_line_like_c(reftools: RefTools) -> None:
    expected = c_image(reftools, _LINK_FIRST_DUMP, [])
    root = dumpfile.parse(_LINK_FIRST_DUMP)
    links = dumpfile.link_paths(_LINK_FIRST_DUMP)
    assert links == [b"/a", b"/sub/c"]
    assert build_image(root, link_paths=links) == expected
    # Without the hint the inode sits at its first name, as in `composefs-info dump` output.
    assert build_image(root) == c_image(reftools, dumps(root), [])
    assert build_image(root) != expected


def _cli(*args: str | Path, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return cli.run_bytes(*args, input=input)


@pytest.mark.parametrize("version_args", [[], ["--min-version=1"], ["--max-version=0"]])
def test_cli_from_file_matches_c(
    reftools: RefTools, tmp_path: Path, version_args: list[str]
) -> None:
    dump = dumps(_whiteouts()) + b""
    src = tmp_path / "in.dump"
    src.write_bytes(dump)
    expected = c_image(reftools, dump, version_args)
    ours = _cli("mkcomposefs", *version_args, "--from-file", src, tmp_path / "out.img")
    assert ours.returncode == 0, ours.stderr
    assert (tmp_path / "out.img").read_bytes() == expected
    # stdin to stdout, and the digest C prints
    piped = _cli("mkcomposefs", *version_args, "--from-file", "-", "-", input=dump)
    assert piped.stdout == expected
    c_digest = reftools.run("mkcomposefs", *version_args, "--from-file", "--print-digest-only", src)
    ours_digest = _cli("mkcomposefs", *version_args, "--from-file", "--print-digest-only", src)
    assert ours_digest.stdout == c_digest and len(c_digest) == 65


def test_cli_directory_matches_c(reftools: RefTools, tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "a" / "b").mkdir(parents=True)
    (src / "a" / "small").write_bytes(b"inline me\n")
    (src / "a" / "b" / "big").write_bytes(bytes(range(256)) * 40)
    (src / "link").symlink_to("a/small")
    os.utime(src / "a" / "small", (1, 1_600_000_000))
    stores = [tmp_path / "store-c", tmp_path / "store-ours"]
    for store in stores:
        store.mkdir()
    c_out = reftools.run(
        "mkcomposefs", f"--digest-store={stores[0]}", "--print-digest", src, tmp_path / "c.img"
    )
    ours = _cli(
        "mkcomposefs", f"--digest-store={stores[1]}", "--print-digest", src, tmp_path / "o.img"
    )
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == c_out
    assert (tmp_path / "o.img").read_bytes() == (tmp_path / "c.img").read_bytes()
    assert sorted(p.relative_to(stores[1]) for p in stores[1].rglob("*")) == sorted(
        p.relative_to(stores[0]) for p in stores[0].rglob("*")
    )


def test_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dump"
    bad.write_bytes(
        b"/ 4096 40755 2 0 0 0 0.0 - - -\n/huge %d 100644 1 0 0 0 0.0 - - -\n" % (1 << 60)
    )
    proc = _cli("mkcomposefs", "--from-file", bad, tmp_path / "out.img")
    one_line_error(proc)
    assert not (tmp_path / "out.img").exists()
    proc = _cli("mkcomposefs", "--from-file", bad)
    assert proc.returncode == 1 and b"no IMAGE given" in proc.stderr


@pytest.mark.parametrize(
    "value",
    [
        b"/f %s 100644 1 0 0 0 0.0 - - -",
        b"/f 0 %s 1 0 0 0 0.0 - - -",
        b"/f 0 100644 %s 0 0 0 0.0 - - -",
        b"/f 0 100644 1 %s 0 0 0.0 - - -",
        b"/f 0 100644 1 0 %s 0 0.0 - - -",
        b"/f 0 100644 1 0 0 %s 0.0 - - -",
        b"/f 0 100644 1 0 0 0 %s.0 - - -",
        b"/f 0 100644 1 0 0 0 0.%s - - -",
        b"/f 0 @100644 1 0 0 0 0.0 - - -".replace(b"100644", b"%s"),
    ],
)
def test_cli_numbers_of_thousands_of_digits_are_one_line(tmp_path: Path, value: bytes) -> None:
    """SIZE, MODE, NLINK, UID, GID, RDEV, MTIME seconds or nanoseconds with 5000 digits."""
    line = value % (b"7" * 5000)
    bad = tmp_path / "bad.dump"
    bad.write_bytes(b"/ 4096 40755 2 0 0 0 0.0 - - -\n" + line + b"\n")
    proc = _cli("mkcomposefs", "--from-file", bad, tmp_path / "out.img")
    assert proc.returncode == 1
    assert proc.stderr.startswith(b"cfsboot: dumpfile line 2: ")
    assert b" of 5000 digits " in proc.stderr
    assert proc.stderr.count(b"\n") == 1 and len(proc.stderr) < 200
    assert not (tmp_path / "out.img").exists()


def test_symlinks_longer_than_a_dumpfile_allows(reftools: RefTools, tmp_path: Path) -> None:
    """Only a directory source can carry targets of 1025..4095 bytes: the writer moves
    them to a data block when inode + xattrs + target reach 4096 bytes, like C."""
    src = tmp_path / "src"
    src.mkdir()
    for n in (1025, 2000, 3000, 4000, 4031, 4032, 4064, 4095):
        (src / f"l{n}").symlink_to("t" * n)
    c_img = reftools.run("mkcomposefs", src, "-")
    ours = _cli("mkcomposefs", src, "-")
    assert ours.returncode == 0, ours.stderr
    assert ours.stdout == c_img
