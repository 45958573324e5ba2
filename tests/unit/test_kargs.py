from __future__ import annotations

from pathlib import Path

import pytest

from cfsboot.boot.kargs import install_kargs, karg_style, set_composefs_karg, upgrade_kargs
from cfsboot.errors import CfsbootError
from cfsboot.image.kargsd import KARGS_D, load_kargs_d, split_kargs
from cfsboot.linux.arch import rust_arch
from setuproot.contract import ComposefsKarg, HashAlg, KargStyle

OLD = ComposefsKarg("aa" * 64, HashAlg.SHA512, False)
NEW = ComposefsKarg("bb" * 64, HashAlg.SHA512, True)


def _kargs_d(root: Path, files: dict[str, str]) -> None:
    d = root / KARGS_D
    d.mkdir(parents=True)
    for name, text in files.items():
        (d / name).write_text(text)


def test_load_in_lexical_order_with_arch_match(tmp_path: Path) -> None:
    _kargs_d(
        tmp_path,
        {
            "20-console.toml": 'kargs = ["console=ttyS0,115200", "quiet splash"]\n',
            "10-first.toml": 'kargs = ["mitigations=auto,nosmt"]\n',
            "30-arm.toml": 'kargs = ["arm=1"]\nmatch-architectures = ["aarch64"]\n',
            "31-x86.toml": 'kargs = ["x86=1"]\nmatch-architectures = ["x86_64", "aarch64"]\n',
            "40-quoted.toml": "kargs = ['foo=\"a b\"']\n",
            "README": "not toml",
            "50-empty.toml": "kargs = []\n",
        },
    )
    assert load_kargs_d(tmp_path, arch="x86_64") == [
        "mitigations=auto,nosmt",
        "console=ttyS0,115200",
        "quiet",
        "splash",
        "x86=1",
        'foo="a b"',
    ]
    assert load_kargs_d(tmp_path, arch="aarch64")[3:5] == ["splash", "arm=1"]
    assert load_kargs_d(tmp_path / "none") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('kargs = ["a"]\nextra = 1\n', "unknown key 'extra'"),
        ('kargs = "a"\n', "'kargs' must be a list of strings"),
        ("match-architectures = []\n", "'kargs' must be a list of strings"),
        ('kargs = ["a"]\nmatch-architectures = "x86_64"\n', "'match-architectures' must be"),
        ("kargs = [\n", "invalid TOML"),
    ],
)
def test_bad_files_are_one_clear_error(tmp_path: Path, text: str, message: str) -> None:
    _kargs_d(tmp_path, {"bad.toml": text})
    with pytest.raises(CfsbootError) as e:
        load_kargs_d(tmp_path, arch="x86_64")
    assert str(e.value).startswith(f"{KARGS_D}/bad.toml: ")
    assert message in str(e.value)


def test_rust_arch_names() -> None:
    assert [rust_arch(m) for m in ("x86_64", "arm64", "ppc64le", "i686", "mips")] == [
        "x86_64",
        "aarch64",
        "powerpc64",
        "x86",
        "mips",
    ]


def test_split_keeps_quotes() -> None:
    assert split_kargs(' a  b="c d"\te ') == ["a", 'b="c d"', "e"]


def test_install_kargs_order_and_composefs_replacement() -> None:
    got = install_kargs(
        install=["rw", f"composefs={OLD.digest}", "console=ttyS0"],
        composefs=NEW,
        kargs_d=["quiet", "rw", f"composefs.digest=v1-sha512-12:{OLD.digest}"],
    )
    assert got == ["rw", "console=ttyS0", f"composefs=?{NEW.digest}", "quiet"]


def test_set_composefs_karg_keeps_position() -> None:
    args = ["a", f"composefs={OLD.digest}", "b", f"composefs.digest=v1-sha512-12:{OLD.digest}"]
    assert set_composefs_karg(args, NEW) == ["a", f"composefs=?{NEW.digest}", "b"]
    assert set_composefs_karg(["a"], OLD) == ["a", f"composefs={OLD.digest}"]


def test_upgrade_applies_kargs_d_difference() -> None:
    current = ["rw", "console=ttyS0", f"composefs={OLD.digest}", "old=1", "both=1", "admin=1"]
    got = upgrade_kargs(
        current, old_kargs_d=["old=1", "both=1"], new_kargs_d=["both=1", "new=1"], composefs=NEW
    )
    assert got == ["rw", "console=ttyS0", f"composefs=?{NEW.digest}", "both=1", "admin=1", "new=1"]


def test_install_kargs_digest_style() -> None:
    got = install_kargs(install=["rw"], composefs=OLD, kargs_d=["quiet"], style=KargStyle.DIGEST)
    assert got == ["rw", f"composefs.digest=v1-sha512-12:{OLD.digest}", "quiet"]
    sha256 = ComposefsKarg("cc" * 32, HashAlg.SHA256, True)
    got = install_kargs(install=[], composefs=sha256, kargs_d=[], style=KargStyle.DIGEST)
    assert got == [f"composefs.digest=?v1-sha256-12:{'cc' * 32}"]


def test_karg_style_of_arguments() -> None:
    assert karg_style(["rw", f"composefs={OLD.digest}"]) is KargStyle.COMPOSEFS
    assert karg_style([f"composefs.digest=v1-sha512-12:{OLD.digest}", "composefs=x"]) is (
        KargStyle.DIGEST
    )
    assert karg_style(["rw", "composefsx=1"]) is None


def test_set_composefs_karg_keeps_the_spelling_unless_told() -> None:
    args = ["a", f"composefs.digest=v1-sha512-12:{OLD.digest}", "b"]
    assert set_composefs_karg(args, NEW) == [
        "a",
        f"composefs.digest=?v1-sha512-12:{NEW.digest}",
        "b",
    ]
    assert set_composefs_karg(args, NEW, KargStyle.COMPOSEFS) == [
        "a",
        f"composefs=?{NEW.digest}",
        "b",
    ]
    assert set_composefs_karg(["a", f"composefs={OLD.digest}"], NEW, KargStyle.DIGEST) == [
        "a",
        f"composefs.digest=?v1-sha512-12:{NEW.digest}",
    ]


@pytest.mark.parametrize(
    ("current", "style", "expected"),
    [
        # The new entry spells it as the current one does ...
        ([f"composefs.digest=v1-sha512-12:{OLD.digest}", "rw"], None,
         f"composefs.digest=?v1-sha512-12:{NEW.digest}"),
        ([f"composefs={OLD.digest}", "rw"], None, f"composefs=?{NEW.digest}"),
        # ... unless told, and composefs= when the current one has none (a UKI's entry).
        ([f"composefs.digest=v1-sha512-12:{OLD.digest}", "rw"], KargStyle.COMPOSEFS,
         f"composefs=?{NEW.digest}"),
        ([f"composefs={OLD.digest}", "rw"], KargStyle.DIGEST,
         f"composefs.digest=?v1-sha512-12:{NEW.digest}"),
        (["rw"], None, f"composefs=?{NEW.digest}"),
    ],
)  # fmt: skip
def test_upgrade_karg_style(current: list[str], style: KargStyle | None, expected: str) -> None:
    got = upgrade_kargs(current, old_kargs_d=[], new_kargs_d=[], composefs=NEW, style=style)
    assert got == ([expected, "rw"] if len(current) == 2 else ["rw", expected])
