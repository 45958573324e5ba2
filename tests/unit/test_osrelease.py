from __future__ import annotations

from pathlib import Path

import pytest

from cfsboot.image.osrelease import OsRelease, parse_os_release, unquote


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("debian", "debian"),
        ('"Debian GNU/Linux 13 (trixie)"', "Debian GNU/Linux 13 (trixie)"),
        ("'a \"b\" $c'", 'a "b" $c'),
        (r'"a \"q\" \$x \\ \` \n"', 'a "q" $x \\ ` \\n'),
        (r"a\ b\'c", "a b'c"),
        ("\"x\"'y'z", "xyz"),
        ('""', ""),
        ("", ""),
    ],
)
def test_unquote(raw: str, value: str) -> None:
    assert unquote(raw) == value


def test_parse_skips_comments_and_bad_lines(caplog: pytest.LogCaptureFixture) -> None:
    text = (
        "# comment\n"
        "\n"
        'PRETTY_NAME="Debian GNU/Linux 13 (trixie)"\n'
        "  ID=debian  \n"
        "not an assignment\n"
        "1BAD=x\n"
        'BROKEN="unterminated\n'
        "VERSION_ID='13'\n"
    )
    assert parse_os_release(text) == {
        "PRETTY_NAME": "Debian GNU/Linux 13 (trixie)",
        "ID": "debian",
        "VERSION_ID": "13",
    }
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "os-release line 5 ignored",
        "os-release line 6 ignored",
        "os-release line 7 ignored",
    ]


def test_title_and_version_selection() -> None:
    full = OsRelease.parse('PRETTY_NAME="P"\nNAME=N\nID=i\nVERSION_ID=1\nVERSION="1 (x)"\n')
    assert (full.title("D"), full.version("D"), full.os_id, full.boot_label()) == (
        "P",
        "1",
        "i",
        "P 1",
    )
    no_pretty = OsRelease.parse('NAME=N\nID=i\nVERSION="1 (x)"\nPRETTY_NAME=""\n')
    assert (no_pretty.title("D"), no_pretty.version("D"), no_pretty.boot_label()) == (
        "N",
        "1 (x)",
        "N 1 (x)",
    )
    only_id = OsRelease.parse("ID=i\n")
    assert (only_id.title("D"), only_id.version("D"), only_id.boot_label()) == ("i", "D", "i")
    empty = OsRelease()
    assert (empty.title("D"), empty.version("D"), empty.os_id, empty.boot_label()) == (
        "D",
        "D",
        "bootc",
        None,
    )


def test_from_root_prefers_usr_lib_and_ignores_links(tmp_path: Path) -> None:
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text("ID=etc\n")
    assert OsRelease.from_root(tmp_path).os_id == "etc"
    (tmp_path / "usr/lib/os-release").write_text("ID=usr\n")
    assert OsRelease.from_root(tmp_path).os_id == "usr"
    (tmp_path / "usr/lib/os-release").unlink()
    (tmp_path / "usr/lib/os-release").symlink_to("/etc/os-release")  # host's: never followed
    assert OsRelease.from_root(tmp_path).os_id == "etc"
    assert OsRelease.from_root(tmp_path / "nothing").fields == {}
