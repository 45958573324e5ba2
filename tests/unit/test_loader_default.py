"""loader.conf `default` and entry ids, the way systemd-boot reads them.

The cases come from systemd's source, src/boot/boot.c (config_defaults_load_from_file,
boot_entry_parse_tries, boot_entry_add_type1, config_find_entry,
config_select_default_entry) and src/boot/efi-string.c (efi_fnmatch, strtolower16,
line_get_key_value): each row says which rule it pins.
"""

from __future__ import annotations

import pytest

from cfsboot.boot.bls import (
    SAVED,
    BLSEntry,
    EntryFile,
    default_entry,
    glob_match,
    is_entry_name,
    loader_default,
    parse_entries,
)
from cfsboot.boot.counting import Tries, split_name


@pytest.mark.parametrize(
    ("pattern", "text", "match"),
    [
        # plain characters: exact, case-sensitive (both sides are folded before matching)
        ("a.conf", "a.conf", True),
        ("a.conf", "A.conf", False),
        ("a.conf", "a.confx", False),
        ("a.conf", "xa.conf", False),
        ("", "", True),
        ("", "a", False),
        # ?: exactly one character
        ("a?c", "abc", True),
        ("a?c", "ac", False),
        ("a?", "a", False),
        # *: any run, the empty one too; runs of stars are one star
        ("*", "", True),
        ("*", "anything", True),
        ("a*", "a", True),
        ("*.conf", "x.conf", True),
        ("*.conf", "x.conf.bak", False),
        ("a**b", "ab", True),
        ("a*b*c", "a-b-b-c", True),
        ("a*b*c", "a-c-b", False),
        ("*ab", "aab", True),  # the last segment must sit at the end
        ("*a?", "ab", True),
        ("bootc_*-1.conf", "bootc_debian-13-1.conf", True),
        ("bootc_*-1.conf", "bootc_debian-13-0.conf", False),
        # [...]: members and ranges
        ("[abc]", "b", True),
        ("[abc]", "d", False),
        ("[a-c]x", "bx", True),
        ("[a-c]x", "dx", False),
        ("[a-c]x", "Bx", False),  # ranges compare code units: fold first
        ("[0-9][0-9]", "42", True),
        ("[a-c-f]", "-", True),  # ranges do not chain: a-c, '-', 'f'
        ("[a-c-f]", "f", True),
        ("[a-c-f]", "e", False),
        ("[-a]", "-", True),  # '-' first is a member
        ("[a-]", "-", True),  # '-' last is a member
        ("[]a]", "]", True),  # ']' first is a member
        ("[]a]", "a", True),
        ("[!a]", "!", True),  # no negation: '!' is a member
        ("[!a]", "b", False),
        ("[^a]", "^", True),
        ("[ab]", "", False),  # a set needs a character
        ("[ab", "[ab", False),  # no closing bracket: matches nothing
        ("[ab", "a", False),
        ("[a-", "a", False),
        # \: escapes, outside and inside sets
        (r"\*", "*", True),
        (r"\*", "x", False),
        (r"a\?", "a?", True),
        (r"a\?", "ab", False),
        (r"[\]]", "]", True),
        (r"[\-a]", "-", True),
        (r"[a-\z]", "m", True),  # an escaped range end
        ("a\\", "a", False),  # a trailing backslash matches nothing
        ("a\\", "a\\", False),
        ("[a\\", "a", False),
    ],
)
def test_glob_match(pattern: str, text: str, match: bool) -> None:
    assert glob_match(pattern, text) is match


@pytest.mark.parametrize(
    ("name", "base", "tries"),
    [
        ("x.conf", "x.conf", None),
        ("x+3.conf", "x.conf", Tries(3, 0)),
        ("x+2-1.conf", "x.conf", Tries(2, 1)),
        ("x+0-3.conf", "x.conf", Tries(0, 3)),
        ("x+007.conf", "x.conf", Tries(7, 0)),  # digits, leading zeros too
        ("x+3.CONF", "x.CONF", Tries(3, 0)),  # the suffix in any case
        ("a+1b+2.conf", "a+1b.conf", Tries(2, 0)),  # the last '+' counts
        ("x+3+.conf", "x+3+.conf", None),  # ... and it has no digits after it
        ("x+.conf", "x+.conf", None),
        ("x+3-.conf", "x+3-.conf", None),
        ("x+3-y.conf", "x+3-y.conf", None),
        ("x+1-2-3.conf", "x+1-2-3.conf", None),  # the counter must end at the suffix
        ("x+3.conf.bak", "x+3.conf.bak", None),
        ("x+3", "x+3", None),
        ("x+2147483647.conf", "x.conf", Tries(2147483647, 0)),  # INT_MAX
        ("x+2147483648.conf", "x+2147483648.conf", None),  # past INT_MAX: no counter
        ("x+1-2147483648.conf", "x+1-2147483648.conf", None),
        ("x+\u0663.conf", "x+\u0663.conf", None),  # ASCII digits only
    ],
)
def test_boot_counter_in_names(name: str, base: str, tries: Tries | None) -> None:
    assert split_name(name) == (base, tries)
    ef = EntryFile(name, BLSEntry())
    assert (ef.tries_left, ef.tries_done) == ((tries.left, tries.done) if tries else (None, 0))


@pytest.mark.parametrize(
    ("name", "entry_id"),
    [
        ("bootc_debian-13-1.conf", "bootc_debian-13-1.conf"),
        ("bootc_debian-13-1+3.conf", "bootc_debian-13-1.conf"),
        ("Bootc_Debian-13-1+2-1.CONF", "bootc_debian-13-1.conf"),  # folded, counter gone
        ("ÄBC.conf", "Äbc.conf"),  # folding is A-Z only
    ],
)
def test_entry_id(name: str, entry_id: str) -> None:
    assert EntryFile(name, BLSEntry()).id == entry_id


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("bootc_debian-13-1.conf", True),
        ("other.CONF", True),
        ("other.Conf", True),
        (".bootc_debian-13-1.conf", False),  # hidden: a leftover temp file
        (".conf", False),
        ("bootc_debian-13-1.conf.tmp", False),
        ("bootc_debian-13-1.conf.cfsboot-tmp-0a1b2c", False),
        ("README", False),
        ("auto-windows.conf", False),  # systemd-boot's own ids
        ("Auto-windows.conf", True),  # ... compared as written
    ],
)
def test_which_names_are_entries(name: str, read: bool) -> None:
    assert is_entry_name(name) is read
    assert [f.name for f in parse_entries([(name, "title X\n")])] == ([name] if read else [])


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", None),
        ("timeout 5\n", None),
        ("default bootc_*\n", "bootc_*"),
        ("default\tbootc_*\n", "bootc_*"),  # a tab separates too
        ("  default   BOOTC_X.conf  \n", "bootc_x.conf"),  # trimmed and folded
        ('default "a b*"\n', "a b*"),  # quotes removed
        ("default 'a*'\n", "a*"),
        ("default \"a*'\n", "\"a*'"),  # unmatched quotes kept
        ("default a\ndefault b\n", "b"),  # the last one wins
        ("default a\rdefault b", "b"),  # CR ends a line too
        ("# default a\n", None),
        ("   # default a\n", None),
        ("default\n", None),  # a key without value is skipped
        ("default   \n", None),
        ("Default a\n", None),  # keys are case-sensitive
        ("default @saved\n", SAVED),
        ("default @SAVED\n", SAVED),
        ("default a\ndefault @other\n", "a"),  # other @ values are ignored
        ("default a\ndefault @saved\n", SAVED),
    ],
)
def test_loader_default(text: str, pattern: str | None) -> None:
    assert loader_default(text) == pattern


def _menu() -> list[EntryFile]:
    return parse_entries(
        [
            ("bootc_debian-14-1.conf", "sort-key bootc-debian-0\nversion 14\n"),
            ("bootc_debian-13-0+1-2.conf", "sort-key bootc-debian-1\nversion 13\n"),
            ("Windows.conf", "title Windows\n"),
        ]
    )


@pytest.mark.parametrize(
    ("pattern", "chosen"),
    [
        (None, "bootc_debian-14-1.conf"),  # the first in menu order
        ("", "bootc_debian-14-1.conf"),
        ("windows.conf", "Windows.conf"),  # the id is folded
        ("WINDOWS.CONF", "Windows.conf"),  # and so is the pattern
        ("windows", "bootc_debian-14-1.conf"),  # the id keeps .conf: no match, the first
        ("bootc_debian-13-0.conf", "bootc_debian-13-0+1-2.conf"),  # the id has no counter
        ("bootc_debian-13-0+1-2.conf", "bootc_debian-14-1.conf"),  # so this matches nothing
        ("bootc_*", "bootc_debian-14-1.conf"),  # the first match in menu order
        ("bootc_*-0.conf", "bootc_debian-13-0+1-2.conf"),
        ("*", "bootc_debian-14-1.conf"),
        ("w[a-z]ndows.conf", "Windows.conf"),
        ("[ab", "bootc_debian-14-1.conf"),
        (SAVED, "bootc_debian-14-1.conf"),  # no EFI variables: the first
        ("@Saved", "bootc_debian-14-1.conf"),
    ],
)
def test_default_entry(pattern: str | None, chosen: str) -> None:
    got = default_entry(_menu(), pattern)
    assert got is not None and got.name == chosen


def test_default_entry_of_an_empty_menu() -> None:
    assert default_entry([], "x") is None
