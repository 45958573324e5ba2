from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cfsboot.boot.grub import MARKER, GrubEntry, GrubError, GrubMenu, quote

A = "aa" * 64
B = "bb" * 64

BLS_ENTRY = GrubEntry(
    title="Debian GNU/Linux 13 (trixie)",
    deployment=A,
    fs_uuid="0a1b2c3d-0000-4000-8000-000000000001",
    linux=f"/boot/bootc_composefs-{A}/vmlinuz",
    initrd=(f"/boot/bootc_composefs-{A}/initrd",),
    options=("rw", f"composefs={A}", "console=ttyS0,115200", "x=$HOME;{}"),
)
UKI_ENTRY = GrubEntry(
    title="It's UKI",
    deployment=B,
    fs_uuid="ABCD-1234",
    chainload=f"/EFI/Linux/bootc/bootc_composefs-{B}.efi",
)


def test_render_exact() -> None:
    menu = GrubMenu((UKI_ENTRY, BLS_ENTRY), timeout=3)
    assert menu.render() == (
        f"{MARKER}\n"
        "set timeout=3\n"
        f"set default=cfsboot-{B}\n"
        "\n"
        f"menuentry 'It'\\''s UKI' --id cfsboot-{B} {{\n"
        "\tinsmod part_gpt\n"
        "\tinsmod fat\n"
        "\tinsmod chain\n"
        "\tsearch --no-floppy --fs-uuid --set=root ABCD-1234\n"
        f"\tchainloader /EFI/Linux/bootc/bootc_composefs-{B}.efi\n"
        "}\n"
        "\n"
        f"menuentry 'Debian GNU/Linux 13 (trixie)' --id cfsboot-{A} {{\n"
        "\tinsmod part_gpt\n"
        "\tinsmod fat\n"
        "\tinsmod ext2\n"
        "\tsearch --no-floppy --fs-uuid --set=root 0a1b2c3d-0000-4000-8000-000000000001\n"
        f"\tlinux /boot/bootc_composefs-{A}/vmlinuz rw composefs={A} console=ttyS0,115200"
        " 'x=$HOME;{}'\n"
        f"\tinitrd /boot/bootc_composefs-{A}/initrd\n"
        "}\n"
    )
    assert GrubMenu.parse(menu.render()) == menu


def test_rollback_reorders() -> None:
    menu = GrubMenu((UKI_ENTRY, BLS_ENTRY))
    back = GrubMenu.parse(menu.render()).with_default(A)
    assert [e.deployment for e in back.entries] == [A, B]
    assert f"set default=cfsboot-{A}\n" in back.render()
    with pytest.raises(GrubError, match="has no entry"):
        menu.with_default("cc" * 64)


def test_empty_menu_and_no_search() -> None:
    e = GrubEntry(title="t", deployment=A, linux="/vmlinuz")
    assert "search" not in e.render()
    for menu in (GrubMenu(), GrubMenu((e,))):
        assert GrubMenu.parse(menu.render()) == menu


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (GrubEntry(title="t", deployment=A), "exactly one of linux or chainload"),
        (GrubEntry(title="t", deployment=A, linux="/k", chainload="/u"), "exactly one of"),
        (GrubEntry(title="t", deployment=A, chainload="/u", options=("x",)), "takes no initrd"),
        (GrubEntry(title="t", deployment=A, linux="/k", options=('a="b c"',)), "cannot be passed"),
        (GrubEntry(title="t", deployment=A, linux="/k", options=("a\\b",)), "cannot be passed"),
        (GrubEntry(title="t\nu", deployment=A, linux="/k"), "line breaks"),
    ],
)
def test_render_refuses(entry: GrubEntry, message: str) -> None:
    with pytest.raises(GrubError, match=message):
        GrubMenu((entry,)).render()


def test_duplicate_deployment_refused() -> None:
    with pytest.raises(GrubError, match="twice"):
        GrubMenu((BLS_ENTRY, BLS_ENTRY)).render()


def _counting(key: str) -> str:
    """An entry's boot counting block for `key`, as far as the parser reads it."""
    return f"\t# cfsboot-counting {key} 3 begin\n\t# cfsboot-counting end\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("set timeout=5\n", "marker line missing"),
        (f"{MARKER}\nset color=red\n", "line 2: unexpected setting 'color'"),
        (f"{MARKER}\nboot\n", "line 2: unexpected command 'boot'"),
        (f"{MARKER}\nmenuentry x {{\n}}\n", "expected: menuentry TITLE --id ID {"),
        (f"{MARKER}\nmenuentry x --id other {{\n}}\n", "entry id 'other' is not cfsboot's"),
        (f"{MARKER}\nmenuentry x --id cfsboot-a {{\n\tlinux /k\n", "line 2: menu entry is not"),
        (f"{MARKER}\nmenuentry x --id cfsboot-a {{\n\techo hi\n}}\n", "line 3: unexpected command"),
        (f'{MARKER}\nmenuentry "x" --id cfsboot-a {{\n}}\n', "line 2: '\"' is not in menus"),
        (f"{MARKER}\nmenuentry 'x --id cfsboot-a {{\n}}\n", "unterminated single quote"),
        (
            f"{MARKER}\nmenuentry x --id cfsboot-a {{\n{_counting('9' * 41)}}}\n",
            "line 3: boot counter key '99999",
        ),
        (
            f"{MARKER}\nmenuentry x --id cfsboot-a {{\n{_counting('Key')}}}\n",
            "is not 1-40 lowercase letters or digits",
        ),
    ],
)
def test_parse_refuses_foreign_text(text: str, message: str) -> None:
    with pytest.raises(GrubError) as e:
        GrubMenu.parse(text)
    assert message in str(e.value)


def test_quote() -> None:
    assert quote("console=ttyS0,115200") == "console=ttyS0,115200"
    assert quote("") == "''"
    assert quote("a b") == "'a b'"
    assert quote("it's") == "'it'\\''s'"


_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\n\r\0"), min_size=1
)
_karg = st.from_regex(r"[A-Za-z0-9_.,:=+@%/$;{}()#&|<>!?*~^-]+", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    titles=st.lists(_text, min_size=1, max_size=3),
    paths=st.lists(_text, min_size=1, max_size=3),
    options=st.lists(_karg, max_size=4),
    uuid=st.none() | _text,
)
def test_round_trip(
    titles: list[str], paths: list[str], options: list[str], uuid: str | None
) -> None:
    entries = []
    for i, title in enumerate(titles):
        if i % 2:
            entries.append(GrubEntry(title, f"{i:x}" * 4, uuid, chainload=paths[0]))
        else:
            entries.append(
                GrubEntry(title, f"{i:x}" * 4, uuid, paths[0], tuple(paths[1:]), tuple(options))
            )
    menu = GrubMenu(tuple(entries), timeout=len(titles))
    assert GrubMenu.parse(menu.render()) == menu
