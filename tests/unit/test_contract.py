from __future__ import annotations

import pytest

from setuproot.contract import (
    ComposefsKarg,
    HashAlg,
    KargError,
    KargStyle,
    parse_cmdline,
    split_cmdline,
)

SHA256 = "ab" * 32
SHA512 = "cd" * 64


def test_split_cmdline_quotes() -> None:
    assert split_cmdline('a b="c d" e') == ["a", "b=c d", "e"]
    assert split_cmdline("  ") == []


def test_parse_plain_and_insecure() -> None:
    (k,) = parse_cmdline(f"root=/dev/vda2 composefs={SHA512} rw")
    assert (k.digest, k.algorithm, k.insecure) == (SHA512, HashAlg.SHA512, False)
    (k,) = parse_cmdline(f"composefs=?{SHA256.upper()}")
    assert (k.digest, k.algorithm, k.insecure) == (SHA256, HashAlg.SHA256, True)
    assert k.to_karg() == f"composefs=?{SHA256}"


def test_versioned_comes_first() -> None:
    ks = parse_cmdline(f"composefs={SHA512} composefs.digest=?v1-sha256-12:{SHA256}")
    assert [(k.algorithm, k.insecure) for k in ks] == [
        (HashAlg.SHA256, True),
        (HashAlg.SHA512, False),
    ]


def test_absent() -> None:
    assert parse_cmdline("root=/dev/sda quiet composefsx=1") == []


@pytest.mark.parametrize(
    "cmdline",
    [
        "composefs",
        "composefs=",
        "composefs=xyz",
        f"composefs={SHA256}0",
        f"composefs.digest=v1-sha256-12:{SHA512}",
        f"composefs.digest={SHA256}",
    ],
)
def test_bad_kargs(cmdline: str) -> None:
    with pytest.raises(KargError, match="invalid kernel argument composefs"):
        parse_cmdline(cmdline)


# composefs-rs's vectors (crates/composefs-boot/src/cmdline.rs, its tests): the
# spelling `composefs.digest=[?]v1-<hash>-12:<hex>` it writes for V1 EROFS images.
RS_SHA256 = "8b7df143d91c716ecfa5fc1730022f6b421b05cedee8fd52b1fc65a96030ad52"
RS_SHA512 = (
    "6f06b5e82420abec546d6e6d3ddd612c50cfa9b707c129345b7ec16f456b92fe"
    "35df68999b042e1a6a70dfe75f2fed8cf9f67afd0bf08d2374678d75e2f65a02"
)


@pytest.mark.parametrize(
    ("digest", "alg", "insecure", "composefs", "digest_style"),
    [
        (RS_SHA256, HashAlg.SHA256, False,
         f"composefs={RS_SHA256}", f"composefs.digest=v1-sha256-12:{RS_SHA256}"),
        (RS_SHA512, HashAlg.SHA512, False,
         f"composefs={RS_SHA512}", f"composefs.digest=v1-sha512-12:{RS_SHA512}"),
        (RS_SHA256, HashAlg.SHA256, True,
         f"composefs=?{RS_SHA256}", f"composefs.digest=?v1-sha256-12:{RS_SHA256}"),
    ],
)  # fmt: skip
def test_karg_styles_round_trip(
    digest: str, alg: HashAlg, insecure: bool, composefs: str, digest_style: str
) -> None:
    k = ComposefsKarg(digest, alg, insecure)
    assert k.to_karg() == k.to_karg(KargStyle.COMPOSEFS) == composefs
    assert k.to_karg(KargStyle.DIGEST) == digest_style
    assert parse_cmdline(composefs) == parse_cmdline(digest_style) == [k]


def test_composefs_rs_cmdlines() -> None:
    # test_from_cmdline_v1 / _v2_fallback: other arguments around it.
    (k,) = parse_cmdline(f"root=UUID=abc composefs.digest=v1-sha256-12:{RS_SHA256} rw")
    assert k == ComposefsKarg(RS_SHA256, HashAlg.SHA256, False)
    # test_composefs_cmdline_v1_takes_priority_over_v2: composefs.digest= is tried first.
    ks = parse_cmdline(f"composefs={'bb' * 32} composefs.digest=v1-sha256-12:{'aa' * 32}")
    assert [k.digest for k in ks] == ["aa" * 32, "bb" * 32]
    # test_composefs_digest_v2_parsed_as_v2: the v2 descriptor names a digest as well.
    (k,) = parse_cmdline(f"composefs.digest=?v2-sha512-12:{RS_SHA512}")
    assert k == ComposefsKarg(RS_SHA512, HashAlg.SHA512, True)


@pytest.mark.parametrize(
    "value",
    [
        f"v1-sha256-12:{'zz' * 32}",  # test_composefs_cmdline_invalid_hex_errors
        f"v1-sha256-8:{RS_SHA256}",  # ..._unsupported_blocksize_errors
        f"v1-sha512-99:{RS_SHA512}",
        f"v3-sha256-12:{RS_SHA256}",  # unknown format version
    ],
)
def test_composefs_rs_refused_digests(value: str) -> None:
    with pytest.raises(KargError) as e:
        parse_cmdline(f"composefs.digest={value}")
    assert str(e.value) == (
        f"invalid kernel argument composefs.digest={value}:"
        " expected [?]v1-sha256-12:HEX or [?]v1-sha512-12:HEX"
    )


def test_split_cmdline_without_quotes_splits_as_with_them() -> None:
    """No quote: str.split(), whose whitespace is str.isspace()'s (the quoted path's)."""
    assert all(c.isspace() == (len(f"a{c}b".split()) == 2) for c in map(chr, range(0x110000)))
    for text in ["", " a  b\t\tc\n", "\x1c a\x85b\u3000c\xa0d ", "composefs=ab ro\x0bx"]:
        # An empty quoted argument at the end takes the quoted path.
        assert split_cmdline(text) == split_cmdline(text + ' ""')[:-1]
