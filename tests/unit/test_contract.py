from __future__ import annotations

import pytest

from setuproot.contract import HashAlg, KargError, parse_cmdline, split_cmdline

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
