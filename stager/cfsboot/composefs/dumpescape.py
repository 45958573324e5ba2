"""The escapes of composefs dumpfile fields (composefs-dump(5)).

Reading accepts exactly what C mkcomposefs accepts: `\\\\ \\n \\r \\t \\xXY`.
Writing follows `composefs-info dump` (print_escaped): every byte outside
isgraph() in the C locale, and the backslash, is escaped; `=` too in xattrs;
a field that is a lone `-` becomes `\\x2d`, because `-` means "none".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

# --- unescaping ------------------------------------------------------------------------

_ESCAPE: Final = re.compile(rb"\\(?:x([0-9A-Fa-f]{2})|([\\nrt]))")
_SIMPLE: Final = {b"\\": b"\\", b"n": b"\n", b"r": b"\r", b"t": b"\t"}


class EscapeError(ValueError):
    """A field with an escape C mkcomposefs rejects."""


def _unescape_match(m: re.Match[bytes]) -> bytes:
    if m.group(1) is not None:
        return bytes((int(m.group(1), 16),))
    return _SIMPLE[m.group(2)]


def _bad_escape(field: bytes) -> str:
    """Why `field` has an escape C rejects (the first bad one)."""
    i = 0
    while True:
        i = field.index(b"\\", i)
        m = _ESCAPE.match(field, i)
        if m is None:
            nxt = field[i + 1 : i + 2]
            if not nxt:
                return "no character after escape '\\'"
            if nxt == b"x":
                return f"invalid hex escape {field[i : i + 4]!r}"
            return f"unsupported escape '\\{nxt.decode('latin-1')}'"
        i = m.end()


def unescape(field: bytes) -> bytes:
    """Undo the dumpfile escapes (`\\\\ \\n \\r \\t \\xXY`); any other escape is a ValueError."""
    if field.find(b"\\") < 0:
        return field
    pieces: list[bytes] = []
    pos = 0
    for m in _ESCAPE.finditer(field):
        chunk = field[pos : m.start()]
        if chunk.find(b"\\") >= 0:
            raise EscapeError(_bad_escape(field))
        pieces.append(chunk)
        pieces.append(_unescape_match(m))
        pos = m.end()
    tail = field[pos:]
    if tail.find(b"\\") >= 0:
        raise EscapeError(_bad_escape(field))
    pieces.append(tail)
    return b"".join(pieces)


# --- escaping (composefs-info.c print_escaped) -------------------------------------------


def _escape_table(escape_equal: bool) -> list[bytes]:
    table = []
    for c in range(256):
        if c == 0x5C:
            table.append(b"\\\\")
        elif c == 0x0A:
            table.append(b"\\n")
        elif c == 0x0D:
            table.append(b"\\r")
        elif c == 0x09:
            table.append(b"\\t")
        elif (c == 0x3D and escape_equal) or not 0x21 <= c <= 0x7E:  # isgraph() in the C locale
            table.append(b"\\x%02x" % c)
        else:
            table.append(bytes((c,)))
    return table


_TABLE: Final = _escape_table(False)
_TABLE_EQ: Final = _escape_table(True)
_NEEDS: Final = re.compile(rb"[^\x21-\x5b\x5d-\x7e]")
_NEEDS_EQ: Final = re.compile(rb"[^\x21-\x3c\x3e-\x5b\x5d-\x7e]")


def _sub(table: list[bytes]) -> Callable[[re.Match[bytes]], bytes]:
    return lambda m: table[m.group()[0]]


_SUB: Final = _sub(_TABLE)
_SUB_EQ: Final = _sub(_TABLE_EQ)


def escape(value: bytes, *, equal: bool = False, lone_dash: bool = False) -> bytes:
    """Escape one field the way `composefs-info dump` does."""
    if lone_dash and value == b"-":
        return b"\\x2d"
    if equal:
        return _NEEDS_EQ.sub(_SUB_EQ, value)
    return _NEEDS.sub(_SUB, value)


def escape_optional(value: bytes | None) -> bytes:
    return b"-" if value is None else escape(value, lone_dash=True)
