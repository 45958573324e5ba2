"""The composefs dumpfile reader and writer (composefs-dump(5), C mkcomposefs/composefs-info)."""

from __future__ import annotations

import gzip
import io
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cfsboot.composefs.dumpescape import escape, unescape
from cfsboot.composefs.dumpfile import DumpfileError, dumps, parse, write
from cfsboot.composefs.tree import Inode, lookup, walk
from cfsboot.errors import CfsbootError
from cfstest.trees import trees

ROOT = b"/ 4096 40755 2 0 0 0 0.0 - - -\n"
DIGEST = "35d02f81325122d77ec1d11baba655bc9bf8a891ab26119a41c50fa03ddfb408"


@pytest.fixture
def asset(composefs_assets: Path) -> Callable[[str], bytes]:
    """Read one of the C project's test assets (gunzipped)."""

    def read(name: str) -> bytes:
        data = (composefs_assets / name).read_bytes()
        return gzip.decompress(data) if name.endswith(".gz") else data

    return read


# --- escaping ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "kw", "expected"),
    [
        (b"plain-text_1.2", {}, b"plain-text_1.2"),
        (b"a b", {}, b"a\\x20b"),
        (b"\\\n\r\t", {}, b"\\\\\\n\\r\\t"),
        (b"\x00\x01\x7f\x80\xff", {}, b"\\x00\\x01\\x7f\\x80\\xff"),
        (b"k=v", {}, b"k=v"),
        (b"k=v", {"equal": True}, b"k\\x3dv"),
        (b"-", {}, b"-"),
        (b"-", {"lone_dash": True}, b"\\x2d"),
        (b"--", {"lone_dash": True}, b"--"),
        (b"", {"lone_dash": True}, b""),
        (b"~!\"#$%&'()*+,./:;<>?@[]^`{|}", {"equal": True}, b"~!\"#$%&'()*+,./:;<>?@[]^`{|}"),
    ],
)
def test_escape(raw: bytes, kw: dict[str, bool], expected: bytes) -> None:
    assert escape(raw, **kw) == expected


def test_escape_every_byte_round_trips() -> None:
    every = bytes(range(256))
    for kw in ({}, {"equal": True}):
        escaped = escape(every, **kw)
        assert all(0x21 <= c <= 0x7E for c in escaped)
        assert unescape(escaped) == every


def test_unescape_accepts_upper_case_hex() -> None:
    assert unescape(b"\\x2D\\x3d\\xFF") == b"-=\xff"


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        (b"abc\\", "no character after escape"),
        (b"\\x4", "invalid hex escape"),
        (b"\\xg0", "invalid hex escape"),
        (b"\\a", "unsupported escape '\\a'"),
        (b"\\0", "unsupported escape '\\0'"),
    ],
)
def test_bad_escapes(field: bytes, reason: str) -> None:
    with pytest.raises(DumpfileError) as e:
        parse(ROOT + b"/f 1 100644 1 0 0 0 0.0 - " + field + b" -\n")
    assert e.value.lineno == 2
    assert reason in e.value.reason


# --- every field -------------------------------------------------------------------------

HAND = b"".join(
    [
        b"/ 4096 40555 3 0 0 0 1633950376.0 - - - trusted.foo1=bar-1 user.foo2=bar-2\n",
        b"/blk 0 60640 1 6 7 259 1633950376.123 - - -\n",
        b"/chr 0 20777 1 0 0 10769 1.1 - - - security.selinux=system_u:object_r:x:s0\\x00\n",
        b"/d 27 40700 2 4294967295 4294967294 0 9223372036854775807.999999999 - - -\n",
        b"/d/empty 0 100600 1 0 0 0 0.0 - - -\n",
        b"/ext 259 100644 1 1000 1000 0 1695368732.385062094 35/d02f8132 - "
        + DIGEST.encode()
        + b" user.a\\x3db=c\\x3dd user.empty=\n",
        b"/fifo 0 10644 1 0 0 0 0.0 - - -\n",
        b"/inline 10 100644 1 0 0 0 5.0 - some\\x20text\\n - user.v=\\x00\\xff\n",
        b"/link 259 @100644 1 1000 1000 0 1695368732.385062094 /ext - "
        + DIGEST.encode()
        + b" user.a\\x3db=c\\x3dd user.empty=\n",
        b"/sock 0 140755 1 0 0 0 0.0 - - -\n",
        b"/sym 3 120777 1 0 0 0 0.0 a\\x20b - -\n",
        b"/whiteout 0 20000 1 0 0 0 0.0 - - -\n",
        b"/x\\x20y=- 0 100644 1 0 0 0 0.0 - - -\n",
    ]
)


def test_parse_every_field() -> None:
    root = parse(HAND)
    assert root.mode == stat.S_IFDIR | 0o555 and root.nlink == 3 and root.size == 4096
    assert root.xattrs == {b"trusted.foo1": b"bar-1", b"user.foo2": b"bar-2"}
    assert root.mtime == 1633950376 and root.mtime_nsec == 0
    c = root.children
    assert c is not None and sorted(c) == [
        b"blk", b"chr", b"d", b"ext", b"fifo", b"inline", b"link", b"sock", b"sym",
        b"whiteout", b"x y=-",
    ]  # fmt: skip
    assert (c[b"blk"].mode, c[b"blk"].rdev, c[b"blk"].uid, c[b"blk"].gid) == (0o60640, 259, 6, 7)
    assert c[b"blk"].mtime_nsec == 123
    assert (c[b"chr"].rdev, c[b"chr"].mtime, c[b"chr"].mtime_nsec) == (10769, 1, 1)
    assert c[b"chr"].xattrs == {b"security.selinux": b"system_u:object_r:x:s0\0"}
    d = c[b"d"]
    assert (d.uid, d.gid, d.size) == (0xFFFFFFFF, 0xFFFFFFFE, 27)
    assert (d.mtime, d.mtime_nsec) == (2**63 - 1, 999_999_999)
    assert d.children is not None and list(d.children) == [b"empty"]
    ext = c[b"ext"]
    assert (ext.size, ext.payload, ext.digest, ext.content) == (
        259,
        b"35/d02f8132",
        bytes.fromhex(DIGEST),
        None,
    )
    assert ext.xattrs == {b"user.a=b": b"c=d", b"user.empty": b""}
    assert c[b"link"] is ext  # a hardlink is the same object
    assert ext.nlink == 1  # the target's nlink is kept, as in C
    inline = c[b"inline"]
    assert (inline.content, inline.size, inline.payload) == (b"some text\n", 10, None)
    assert inline.xattrs == {b"user.v": b"\x00\xff"}
    assert (c[b"sym"].payload, c[b"sym"].size) == (b"a b", 3)
    assert c[b"whiteout"].is_whiteout()
    empty = lookup(c[b"d"], b"/empty")
    assert empty is not None and empty.content is None


def test_dumps_is_canonical_for_hand_case() -> None:
    assert dumps(parse(HAND)) == HAND
    out = io.BytesIO()
    write(parse(HAND), out)
    assert out.getvalue() == HAND


def test_parse_accepts_stream_and_no_final_newline() -> None:
    assert dumps(parse(io.BytesIO(HAND))) == HAND
    assert dumps(parse(HAND[:-1])) == HAND


def test_hardlinks_forward_chain_and_nlink() -> None:
    text = ROOT + (
        b"/a 0 @100644 1 0 0 0 0.0 /b - -\n"  # forward reference to a hardlink line
        b"/b 0 @100644 1 0 0 0 0.0 /d/f - -\n"
        b"/d 0 40755 2 0 0 0 0.0 - - -\n"
        b"/d/f 3 100644 7 0 0 0 0.0 - abc - user.x=1\n"
    )
    root = parse(text)
    assert root.children is not None and root.children[b"d"].children is not None
    f = root.children[b"d"].children[b"f"]
    assert root.children[b"a"] is f and root.children[b"b"] is f
    assert f.nlink == 7
    # C prints the first name in tree order in full and the later ones as '@' lines
    # carrying the target's metadata.
    assert dumps(root) == ROOT + (
        b"/a 3 100644 7 0 0 0 0.0 - abc - user.x=1\n"
        b"/b 3 @100644 7 0 0 0 0.0 /a abc - user.x=1\n"
        b"/d 0 40755 2 0 0 0 0.0 - - -\n"
        b"/d/f 3 @100644 7 0 0 0 0.0 /a abc - user.x=1\n"
    )


def test_symlink_size_is_the_target_length() -> None:
    root = parse(ROOT + b"/s 999 120777 1 0 0 0 0.0 target - -\n")
    assert root.children is not None
    assert root.children[b"s"].size == 6


def test_optional_fields_and_empty_payload() -> None:
    root = parse(ROOT + b"/e 0 100644 1 0 0 0 0.0 - - -\n/x 5 100644 1 0 0 0 0.0  - -\n")
    assert root.children is not None
    assert root.children[b"e"].content is None
    x = root.children[b"x"]
    assert (x.payload, x.digest, x.content, x.size) == (None, None, None, 5)


def test_biggest_external_file_and_negative_mtime() -> None:
    root = parse(ROOT + b"/x 9007199254740992 100644 1 0 0 0 -5.3 - - -\n")
    assert root.children is not None
    x = root.children[b"x"]
    assert (x.size, x.mtime, x.mtime_nsec) == (2**53, -5, 3)
    assert dumps(root) == ROOT + b"/x 9007199254740992 100644 1 0 0 0 -5.3 - - -\n"


def test_sha512_digest_is_accepted() -> None:
    root = parse(ROOT + b"/x 5 100644 1 0 0 0 0.0 ab/cd - " + b"ab" * 64 + b"\n")
    assert root.children is not None and root.children[b"x"].digest == b"\xab" * 64


# --- errors: every one names its line -----------------------------------------------------

BAD = [
    (b"", 1, "no files in dumpfile"),
    (b"\n", 1, "expected at least 11 fields"),
    (ROOT + b"\n", 2, "expected at least 11 fields"),
    (b"/a 0 100644 1 0 0 0 0.0 - - -\n", 1, "the first line must be the root"),
    (b"/ 0 100644 1 0 0 0 0.0 - - -\n", 1, "the root must be a directory"),
    (ROOT + ROOT, 2, "a second root"),
    (ROOT + b"/a/b 0 100644 1 0 0 0 0.0 - - -\n", 2, "parent directory of b'/a/b' is missing"),
    (
        ROOT + b"/f 0 100644 1 0 0 0 0.0 - - -\n/f/x 0 100644 1 0 0 0 0.0 - - -\n",
        3,
        "missing or not",
    ),
    (ROOT + b"/f 0 100644 1 0 0 0 0.0 - - -\n" * 2, 3, "already exists"),
    (ROOT + b"f 0 100644 1 0 0 0 0.0 - - -\n", 2, "is not absolute"),
    (ROOT + b"/f/ 0 100644 1 0 0 0 0.0 - - -\n", 2, "empty file name"),
    (ROOT + b"/" + b"n" * 256 + b" 0 100644 1 0 0 0 0.0 - - -\n", 2, "longer than 255"),
    (ROOT + b"/a\\x00b 0 100644 1 0 0 0 0.0 - - -\n", 2, "NUL byte"),
    (ROOT + b"/a\0 0 100644 1 0 0 0 0.0 - - -\n", 2, "embedded NUL byte"),
    (ROOT + b"/f x 100644 1 0 0 0 0.0 - - -\n", 2, "invalid size 'x'"),
    (ROOT + b"/f +1 100644 1 0 0 0 0.0 - - -\n", 2, "invalid size '+1'"),
    (ROOT + b"/f 18446744073709551616 100644 1 0 0 0 0.0 - - -\n", 2, "size 18446744073709551616"),
    (ROOT + b"/f 0 100648 1 0 0 0 0.0 - - -\n", 2, "invalid mode '100648'"),
    (ROOT + b"/f 0 200644 1 0 0 0 0.0 - - -\n", 2, "does not fit in 16 bits"),
    (ROOT + b"/f 0 170644 1 0 0 0 0.0 - - -\n", 2, "invalid file type"),
    (ROOT + b"/f 0 100644 4294967296 0 0 0 0.0 - - -\n", 2, "nlink 4294967296 is out of range"),
    # C checks the gid and rdev parse errors only when the uid is 0: we always do.
    (ROOT + b"/f 0 100644 1 5 x 0 0.0 - - -\n", 2, "invalid gid 'x'"),
    (ROOT + b"/f 0 100644 1 5 0 -1 0.0 - - -\n", 2, "invalid rdev '-1'"),
    (ROOT + b"/f 0 100644 1 0 4294967296 0 0.0 - - -\n", 2, "gid 4294967296 is out of range"),
    (ROOT + b"/f 0 100644 1 0 0 0 5 - - -\n", 2, "invalid mtime '5'"),
    (ROOT + b"/f 0 100644 1 0 0 0 1.1000000000 - - -\n", 2, "nanoseconds"),
    (ROOT + b"/f 0 100644 1 0 0 0 9223372036854775808.0 - - -\n", 2, "mtime 9223372036854775808"),
    (ROOT + b"/f 2 100644 1 0 0 0 0.0 - abc -\n", 2, "content size 3 does not match size 2"),
    (ROOT + b"/f 5001 100644 1 0 0 0 0.0 - " + b"x" * 5001 + b" -\n", 2, "exceeds 5000"),
    (ROOT + b"/f 1 100644 1 0 0 0 0.0 - x " + DIGEST.encode() + b"\n", 2, "either inline"),
    (ROOT + b"/f 1 100644 1 0 0 0 0.0 a/b x -\n", 2, "either inline content"),
    (ROOT + b"/f 0 100644 1 0 0 0 0.0 a/b - -\n", 2, "empty file cannot have"),
    (ROOT + b"/f 1 100644 1 0 0 0 0.0 - - abc\n", 2, "digest must be 64"),
    (ROOT + b"/f 1 100644 1 0 0 0 0.0 - - " + b"g" * 64 + b"\n", 2, "digest must be 64"),
    (ROOT + b"/f 1 100644 1 0 0 0 0.0 " + b"p" * 4096 + b" - -\n", 2, "payload longer"),
    (ROOT + b"/f 9007199254740993 100644 1 0 0 0 0.0 - - -\n", 2, "too big"),
    (ROOT + b"/s 0 120777 1 0 0 0 0.0 - - -\n", 2, "symlink without a target"),
    (ROOT + b"/s 1 120777 1 0 0 0 0.0 t t -\n", 2, "inline content is only valid"),
    (ROOT + b"/d 0 40755 1 0 0 0 0.0 x - -\n", 2, "payload is only valid"),
    (ROOT + b"/c 0 20644 1 0 0 0 0.0 - - " + DIGEST.encode() + b"\n", 2, "digest is only valid"),
    (ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - novalue\n", 2, "has no '='"),
    (ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - a=1  b=2\n", 2, "has no '='"),
    (ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - a=1 a=2\n", 2, "duplicate xattr"),
    (ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - a\\x00b=1\n", 2, "NUL byte"),
    (ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - a=" + b"v" * 65536 + b"\n", 2, "more than 65535"),
    (ROOT + b"/f 0 100644 1 0 0 0 0.0 - - - a=\\xff" + b"v" * 32761 + b"\n", 2, "limit of one"),
    (ROOT + b"/h 0 @100644 1 0 0 0 0.0 - - -\n", 2, "hardlink without a target"),
    (ROOT + b"/h 0 @100644 1 0 0 0 0.0 /nope - -\n", 2, "no target at b'/nope'"),
    (ROOT + b"/h 0 @100644 1 0 0 0 0.0 / - -\n", 2, "is a directory"),
    (ROOT + b"/h 0 @100644 1 0 0 0 0.0 h - -\n", 2, "is not absolute"),
    (ROOT + b"/h 0 @40755 1 0 0 0 0.0 / - -\n", 2, "directories cannot be hardlinked"),
    (ROOT + b"/a 0 @100644 1 0 0 0 0.0 /b - -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n", 2, "itself"),
]


@pytest.mark.parametrize(("text", "lineno", "reason"), BAD)
def test_invalid_input(text: bytes, lineno: int, reason: str) -> None:
    with pytest.raises(DumpfileError) as e:
        parse(text)
    assert e.value.lineno == lineno
    assert reason in e.value.reason, e.value.reason
    assert str(e.value).startswith(f"dumpfile line {lineno}: ")
    assert isinstance(e.value, CfsbootError)


# The C project's should-fail assets: line and reason of our rejection.
SHOULD_FAIL = {
    "should-fail-big-inline.dump": (2, "expected at least 11 fields, found 10"),
    "should-fail-dir-hardlink.dump": (2, "directories cannot be hardlinked"),
    "should-fail-dot-name.dump": (2, "path b'/.' has a '.' or '..' component"),
    "should-fail-dotdot-name.dump": (2, "path b'/..' has a '.' or '..' component"),
    "should-fail-empty-link-name.dump": (2, "symlink without a target"),
    "should-fail-empty-name.dump": (2, "path b'//' has an empty file name"),
    "should-fail-empty-xattr-key.dump": (2, "xattr name length 0 is not in 1..255"),
    "should-fail-honggfuzz-long-xattr.dump": (1, "duplicate xattr b'user.foo2'"),
    "should-fail-long-link.dump": (2, "symlink target longer than 4095 bytes"),
    "should-fail-long-xattr-key.dump": (2, "xattrs take more than 65535 bytes"),
    "should-fail-long-xattr-value.dump": (2, "invalid file type in mode 644"),
    "should-fail-no-ftype.dump": (2, "invalid file type in mode 0"),
    "should-fail-self-hardlink.dump": (2, "mode 63340777 does not fit in 16 bits"),
    "should-fail-too-big.dump": (2, "file size 9500000000000000 is too big"),
}


@pytest.mark.parametrize("name", sorted(SHOULD_FAIL))
def test_should_fail_assets(asset: Callable[[str], bytes], name: str) -> None:
    lineno, reason = SHOULD_FAIL[name]
    with pytest.raises(DumpfileError) as e:
        parse(asset(name))
    assert (e.value.lineno, e.value.reason[: len(reason)]) == (lineno, reason)


def test_should_fail_assets_are_all_covered(composefs_assets: Path) -> None:
    assert {p.name for p in composefs_assets.glob("should-fail-*.dump")} == set(SHOULD_FAIL)


def test_intended_reasons_of_the_should_fail_assets() -> None:
    """The faults those assets aim at (some trip an earlier check first), in isolation."""
    cases = [
        (b"/big 5004 100777 1 0 0 0 0.0 - " + b"x" * 5004 + b" -\n", "exceeds 5000"),
        (b"/l 0 120777 1 0 0 0 0.0 " + b"a" * 5000 + b" - -\n", "longer than 4095"),
        (b"/f 0 100644 1 0 0 0 0.0 - - - foo=" + b"a" * 40000 + b"\n", "limit of one inode"),
        (b"/f 0 100644 1 0 0 0 0.0 - - - " + b"a" * 256 + b"=1\n", "not in 1..255"),
        (b"/s 0 @100644 2 0 0 0 0.0 /s - -\n", "refers to itself"),
    ]
    for line, reason in cases:
        with pytest.raises(DumpfileError, match=reason):
            parse(ROOT + line)


# --- the C assets round trip --------------------------------------------------------------

ROUND_TRIP = [
    "special.dump",
    "special_v1.dump",
    "bigfile.dump",
    "bigfile-xattr.dump",
    "honggfuzz-bigfile-with-acl.dump",
    "honggfuzz-chardev-nonzero-size.dump",
    "honggfuzz-long-symlink.dump",
    "config.dump.gz",
    "config-with-hard-link.dump.gz",
    "cs9-x86_64-minimal.dump.gz",
]


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_assets_round_trip(asset: Callable[[str], bytes], name: str) -> None:
    data = asset(name)
    assert dumps(parse(data)) == data


def test_assets_round_trip_after_normalisation(asset: Callable[[str], bytes]) -> None:
    # no-newline: the final newline is added, and the RDEV of a directory is dropped (C
    # keeps it for devices only); longlink: a symlink's SIZE is its target's length.
    data = asset("no-newline.dump")
    assert not data.endswith(b"\n")
    assert dumps(parse(data)) == data.replace(b" 222 0 0 10 ", b" 222 0 0 0 ") + b"\n"
    data = asset("longlink.dump")
    expected = data.replace(b"/big-but-not-max-link 5 ", b"/big-but-not-max-link 4070 ")
    assert dumps(parse(data)) == expected.replace(b"/max-link 5 ", b"/max-link 4095 ")


def test_hardlinks_in_config_asset_share_objects(asset: Callable[[str], bytes]) -> None:
    root = parse(asset("config-with-hard-link.dump.gz"))
    seen: dict[int, int] = {}
    for _, node in walk(root):
        seen[id(node)] = seen.get(id(node), 0) + 1
    assert max(seen.values()) >= 2


def test_honggfuzz_longlink_unterminated_is_rejected(asset: Callable[[str], bytes]) -> None:
    # C reads 9 fields, a 32-bit mode and an empty DIGEST (garbage digest): we refuse.
    with pytest.raises(DumpfileError, match="expected at least 11 fields, found 9"):
        parse(asset("honggfuzz-longlink-unterminated.dump"))


# --- property: the writer's output parses back to the same dumpfile ----------------------


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(trees())
def test_random_trees_round_trip(tree: Inode) -> None:
    text = dumps(tree)
    again = parse(text)
    assert dumps(again) == text
    # Hardlinks stay hardlinks: the same number of distinct objects.
    assert len({id(n) for _, n in walk(again)}) == len({id(n) for _, n in walk(tree)})


# Fields that are valid, invalid or just unusual somewhere in a line.
_ODD_FIELDS = [
    b"-", b"", b"0", b"1", b"00", b"4294967295", b"4294967296", b"18446744073709551615",
    b"18446744073709551616", b"100644", b"40755", b"120777", b"20644", b"177777", b"1177777",
    b"@100644", b"0.0", b"-1.5", b"1.999999999", b"1.1000000000", b"9223372036854775808.0",
    b"/", b"/a", b"//a", b"/a/", b"/.", b"/..", b"a" * 256, b"/" + b"a" * 256, b"x\\",
    b"\\q", b"a\\x00b", b"\\x2d", b"ab/cd", b"11" * 32, b"11" * 64, b"zz" * 32, b"5000",
    b"5001", b"65", b"user.a=b", b"user.a=b user.a=c", b"=x", b"k", b"#1\\n", b"+1", b"1_0",
    b"0x1", b"x" * 4096,
]  # fmt: skip


def _outcome(text: bytes, *, fast: bool) -> bytes:
    """The dumpfile of what `text` parses to, or the error, with or without the fast path."""
    try:
        return dumps(parse(text, fast_path=fast))
    except DumpfileError as e:
        return str(e).encode()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(trees(), st.data())
def test_fast_path_agrees_with_the_strict_parser(tree: Inode, data: st.DataObject) -> None:
    """Lines the fast path takes give the tree the strict path gives; the others it leaves."""
    lines = dumps(tree).split(b"\n")
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(lines) - 1))
        fields = lines[i].split(b" ")
        j = data.draw(st.integers(0, len(fields)))
        odd = data.draw(st.sampled_from(_ODD_FIELDS))
        if j < len(fields) and data.draw(st.booleans()):
            fields[j] = odd
        else:
            fields.insert(j, odd)
        lines[i] = b" ".join(fields)
    text = b"\n".join(lines)
    assert _outcome(text, fast=True) == _outcome(text, fast=False)


_TEMPLATES = [
    b"/d 4096 40755 2 0 0 0 1.5 - - - security.selinux=x\\x00",
    b"/f 70000 100644 1 0 0 0 1.0 ab/cdef - " + b"ab" * 32 + b" user.a=b",
    b"/i 3 100644 1 5 6 0 2.0 - #1\\n - security.selinux=x",
    b"/e 0 100644 1 0 0 0 0.0 - - -",
    b"/l 5 120777 1 0 0 0 0.0 ../ab - -",
    b"/p 0 10644 1 0 0 0 0.0 - - -",
    b"/h 0 @100644 - - - - 0.0 /d - -",
]


def test_fast_path_agrees_with_the_strict_parser_on_every_field() -> None:
    """Each field of common lines replaced by (or preceded by) each odd value."""
    for template in _TEMPLATES:
        fields = template.split(b" ")
        for j in range(len(fields) + 1):
            for odd in _ODD_FIELDS:
                for line in (
                    b" ".join([*fields[:j], odd, *fields[j + 1 :]]),
                    b" ".join([*fields[:j], odd, *fields[j:]]),
                ):
                    text = ROOT + b"/d 4096 40755 2 0 0 0 1.0 - - -\n" + line + b"\n"
                    assert _outcome(text, fast=True) == _outcome(text, fast=False), line


def test_parse_100k_lines_round_trips() -> None:
    lines = [ROOT]
    for d in range(100):
        lines.append(b"/d%03d 0 40755 2 0 0 0 1700000000.0 - - - security.selinux=x\\x00\n" % d)
        for i in range(1000):
            lines.append(
                b"/d%03d/f%04d 4096 100644 1 0 0 0 1700000000.5 %s/%s - %s user.x=y\n"
                % (d, i, DIGEST[:2].encode(), DIGEST[2:].encode(), DIGEST.encode())
            )
    data = b"".join(lines)
    root = parse(data)
    assert root.children is not None and len(root.children) == 100
    assert dumps(root) == data


# --- hostile input: numbers, depth, chains (no traceback, no recursion limit) -------------

_HUGE = b"1" + b"0" * 5000  # int() refuses to convert more than 4300 digits
_LINE = b"/f 5 100644 1 0 0 0 1.0 - hello -\n"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (_LINE.replace(b" 5 ", b" " + _HUGE + b" ", 1), "size of 5001 digits is out of range"),
        (b"/f 0 100644 " + _HUGE + b" 0 0 0 1.0 - - -\n", "nlink of 5001 digits is out of range"),
        (b"/f 0 100644 1 " + _HUGE + b" 0 0 1.0 - - -\n", "uid of 5001 digits is out of range"),
        (b"/f 0 100644 1 0 " + _HUGE + b" 0 1.0 - - -\n", "gid of 5001 digits is out of range"),
        (b"/f 0 100644 1 0 0 " + _HUGE + b" 1.0 - - -\n", "rdev of 5001 digits is out of range"),
        (b"/f 0 100644 1 0 0 0 " + _HUGE + b".0 - - -\n", "mtime of 5001 digits is out of range"),
        (b"/f 0 100644 1 0 0 0 -" + _HUGE + b".0 - - -\n", "mtime of 5002 digits is out of"),
        (
            b"/f 0 100644 1 0 0 0 1." + _HUGE + b" - - -\n",
            "mtime nanoseconds of 5001 digits are out of range",
        ),
    ],
)
def test_numbers_of_thousands_of_digits_are_refused(line: bytes, reason: str) -> None:
    with pytest.raises(DumpfileError) as e:
        parse(ROOT + line)
    assert e.value.lineno == 2
    assert e.value.reason.startswith(reason), e.value.reason
    assert len(str(e.value)) < 120


def test_leading_zeros_do_not_count_as_digits() -> None:
    root = parse(ROOT + b"/f 0 100644 " + b"0" * 5000 + b"7 0 0 0 1.0 - - -\n")
    assert root.children is not None and root.children[b"f"].nlink == 7


DEEP = 1500  # deeper than Python's default recursion limit (1000)


def deep_tree(depth: int = DEEP) -> Inode:
    root = Inode.directory(0o755)
    node = root
    for _ in range(depth):
        assert node.children is not None
        child = Inode.directory(0o755)
        node.children[b"d"] = child
        node = child
    assert node.children is not None
    node.children[b"f"] = Inode(mode=stat.S_IFREG | 0o644, content=b"deep", size=4)
    return root


def test_deep_tree_walks_dumps_and_parses() -> None:
    root = deep_tree()
    paths = [path for path, _ in walk(root)]
    assert len(paths) == DEEP + 2
    assert paths[-1] == b"/d" * DEEP + b"/f"
    text = dumps(root)
    assert text.count(b"\n") == DEEP + 2
    assert dumps(parse(text)) == text


def test_long_hardlink_chain_resolves_without_recursion() -> None:
    # Each '@' line names the one before it; only the first names a real file.
    lines = [ROOT, b"/f 5 100644 1 0 0 0 1.0 - hello -\n"]
    lines += [
        b"/l%04d 0 @100644 - - - - 0.0 /%s - -\n" % (i, b"f" if i == 0 else b"l%04d" % (i - 1))
        for i in range(DEEP)
    ]
    root = parse(b"".join(lines))
    assert root.children is not None
    assert root.children[b"l%04d" % (DEEP - 1)] is root.children[b"f"]
