"""Version strings compared the way the UAPI Version Format Specification says.

systemd-boot sorts boot entries and kernels this way (systemd's
strverscmp_improved); cfsboot uses it to pick an image's newest kernel and to
sort the boot menu like the boot loader will.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import Any


_VERSION_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789~-^.")
_DIGITS = "0123456789"
_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"


def cmp3(a: Any, b: Any) -> int:
    """-1, 0 or 1 as a < b, a == b, a > b (C's three-way compare)."""
    return int(a > b) - int(a < b)


def _span(s: str, i: int, chars: str) -> int:
    j = i
    while j < len(s) and s[j] in chars:
        j += 1
    return j - i


def compare_versions(a: str | None, b: str | None) -> int:
    """-1, 0 or 1 as `a` is older than, as new as, or newer than `b` (None counts as "").

    The steps and their order are systemd's (which sorts the boot menu), checked
    against its test vectors; where the written spec differs (`^`), systemd wins.
    """
    a, b = a or "", b or ""
    i = j = 0

    def at(s: str, k: int) -> str:
        return s[k] if k < len(s) else ""

    while True:
        # Characters outside the version alphabet only separate components.
        while i < len(a) and a[i] not in _VERSION_CHARS:
            i += 1
        while j < len(b) and b[j] not in _VERSION_CHARS:
            j += 1
        # '~' marks a pre-release: it sorts below everything, even the end of the string.
        if at(a, i) == "~" or at(b, j) == "~":
            r = cmp3(at(a, i) != "~", at(b, j) != "~")
            if r:
                return r
            i, j = i + 1, j + 1
        if not at(a, i) or not at(b, j):
            return cmp3(at(a, i), at(b, j))  # the string with more left is newer
        # '-' (release), '^' (patch) and '.' (point release): the string with the
        # separator is older than one with anything else there.
        for sep in "-^.":
            if at(a, i) == sep or at(b, j) == sep:
                r = cmp3(at(a, i) != sep, at(b, j) != sep)
                if r:
                    return r
                i, j = i + 1, j + 1
        ca, cb = at(a, i), at(b, j)
        if (ca and ca in _DIGITS) or (cb and cb in _DIGITS):
            na, nb = _span(a, i, _DIGITS), _span(b, j, _DIGITS)
            r = cmp3(na > 0, nb > 0)  # a number is newer than no number
            if r:
                return r
            while a[i : i + 1] == "0":
                i, na = i + 1, na - 1
            while b[j : j + 1] == "0":
                j, nb = j + 1, nb - 1
            # A longer digit run is a bigger number; equal lengths compare as strings.
            r = cmp3(na, nb) or cmp3(a[i : i + na], b[j : j + nb])
        else:
            na, nb = _span(a, i, _LETTERS), _span(b, j, _LETTERS)
            n = min(na, nb)
            r = cmp3(a[i : i + n], b[j : j + n]) or cmp3(na, nb)
        if r:
            return r
        i, j = i + na, j + nb
