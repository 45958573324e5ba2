"""Which entry a boot loader boots, decided from the specifications, not by cfsboot's code.

An oracle for the tests that check what cfsboot leaves on an ESP (the crash harness,
the lifecycle tests). It is written from the documents, and imports nothing from
`cfsboot`:

- the UAPI Boot Loader Specification (BLS): Type #1 entry files, the boot counting
  suffix `+LEFT[-DONE]` in their names, and its "Sorting" section;
- the UAPI Version Format Specification, for `version` and file names;
- systemd-boot's manual pages: loader.conf(5) `default` (a glob, `?` `*` `[...]` with
  ranges, matched case-insensitively on the entry id, the name without its counter,
  as `bootctl list` shows it);
- (GRUB's menus: cfstest.grubmenu.)

Where systemd (the boot loader that boots these disks) differs from the written
specification, systemd wins, and the place says so; systemd's published test vectors
and, where installed, `systemd-analyze compare-versions` and `bootctl list` check this
module (tests/unit/test_bootorder.py).

Not modelled: EFI variables (LoaderEntryDefault, LoaderEntryOneShot, `@saved`), which
cfsboot never sets and a disk image does not carry; Type #2 entries (UKIs found in
EFI/Linux/*.efi), which `read_esp` refuses to overlook: it fails if there are any.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cmp_to_key
from pathlib import Path

# ---------------------------------------------------------------------------------------
# Version Format Specification
# ---------------------------------------------------------------------------------------

_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_DIGITS = frozenset("0123456789")
# Everything else is skipped (step 1): it only separates components.
_ALPHABET = _LETTERS | _DIGITS | frozenset("-.~^")


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


class _Cursor:
    """One side of a comparison: a string and how far it has been read."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_separators(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] not in _ALPHABET:
            self.pos += 1

    def take(self, chars: frozenset[str]) -> str:
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1
        return self.text[start : self.pos]


def _marker(a: _Cursor, b: _Cursor, mark: str) -> int:
    """Both start with `mark`: skip it (0). One does: that one is older (-1 or 1)."""
    ha, hb = a.peek() == mark, b.peek() == mark
    if ha and hb:
        a.pos += 1
        b.pos += 1
        return 0
    return (hb - ha) if (ha or hb) else 0


def version_compare(left: str | None, right: str | None) -> int:
    """-1, 0 or 1 as `left` is an older, the same or a newer version than `right`.

    The steps of the Version Format Specification's "Version Comparison", with the
    order and direction systemd's strverscmp_improved() has (systemd's test vectors
    pin both; the spec's text differs in two places):

    - a `~` is looked at before the end of a string: `~` sorts lower than the end
      (the vectors: "" > "~", "123~rc1" < "123");
    - a `^` is a separator like `-` and `.`: the string that has it where the other
      has something else is the older one (the vectors: "123^patch1" < "123.a-1",
      "1.0^20160101" < "1.0.1"; the spec says `^` compares higher);
    - a number is newer than no number at all (the spec reads an empty numeric
      prefix as 0).
    """
    a, b = _Cursor(left or ""), _Cursor(right or "")
    while True:
        a.skip_separators()
        b.skip_separators()
        r = _marker(a, b, "~")
        if r:
            return r
        if not a.peek() or not b.peek():
            return bool(a.peek()) - bool(b.peek())  # the one with more left is newer
        for mark in "-^.":
            r = _marker(a, b, mark)
            if r:
                return r
        if a.peek() in _DIGITS or b.peek() in _DIGITS:
            na, nb = a.take(_DIGITS), b.take(_DIGITS)
            if not na or not nb:
                return bool(na) - bool(nb)
            r = _sign(int(na) - int(nb))
        else:
            la, lb = a.take(_LETTERS), b.take(_LETTERS)
            r = (la > lb) - (la < lb)  # byte order: 'A' < 'a'; a prefix sorts first
        if r:
            return r


# ---------------------------------------------------------------------------------------
# Boot Loader Specification, Type #1 entries
# ---------------------------------------------------------------------------------------

# "+LEFT" or "+LEFT-DONE" right before the suffix (BLS "Boot counting").
_COUNTER = re.compile(r"\+(\d+)(?:-(\d+))?(?=\.(?:conf|efi)$)")
_MULTI = ("initrd",)  # keys that may repeat; `options` lines are joined with spaces


@dataclass(frozen=True)
class Entry:
    """One Type #1 entry file as a boot loader sees it."""

    file: str  # the file name on the ESP, boot counter included
    fields: dict[str, str]
    initrd: tuple[str, ...] = ()
    options: tuple[str, ...] = ()  # the kernel command line, word by word

    @property
    def id(self) -> str:
        """The name without its boot counter: what loader.conf `default` is matched on."""
        return _COUNTER.sub("", self.file)

    @property
    def tries_left(self) -> int | None:
        m = _COUNTER.search(self.file)
        return None if m is None else int(m.group(1))

    @property
    def tries_done(self) -> int:
        m = _COUNTER.search(self.file)
        return 0 if m is None or m.group(2) is None else int(m.group(2))

    @property
    def bad(self) -> bool:
        """Out of tries (BLS: "tries left" at zero): sorted after every other entry."""
        return self.tries_left == 0

    def get(self, key: str) -> str | None:
        return self.fields.get(key)

    @property
    def title(self) -> str | None:
        return self.get("title")

    @property
    def version(self) -> str | None:
        return self.get("version")

    @property
    def sort_key(self) -> str | None:
        return self.get("sort-key")

    @property
    def machine_id(self) -> str | None:
        return self.get("machine-id")

    @property
    def linux(self) -> str | None:
        return self.get("linux")

    @property
    def efi(self) -> str | None:
        return self.get("efi")


def parse_entry(file: str, text: str) -> Entry:
    """A `.conf` file: one `key value` per line, `#` starts a comment line."""
    fields: dict[str, str] = {}
    multi: dict[str, list[str]] = {k: [] for k in _MULTI}
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        key, value = key.strip(), value.strip()
        if key == "options":
            options += value.split()
        elif key in multi:
            multi[key].append(value)
        else:
            fields[key] = value  # a key given twice: the last one counts
    return Entry(file, fields, tuple(multi["initrd"]), tuple(options))


def _strcmp(a: str | None, b: str | None) -> int:
    """BLS "Alphanumerical order": strcmp on UTF-8; an unset or empty string is lower."""
    ab, bb = (a or "").encode(), (b or "").encode()
    return (ab > bb) - (ab < bb)


def compare_entries(a: Entry, b: Entry) -> int:
    """Negative when `a` is shown above (before) `b` in the menu: BLS "Sorting"."""
    # 1. Entries out of tries go after all others.
    r = a.bad - b.bad
    if r:
        return r
    # 3. An entry with a sort-key goes before one without.
    r = (a.sort_key is None) - (b.sort_key is None)
    if r:
        return r
    # 2. Both have one: sort-key and machine-id increasing, version decreasing.
    if a.sort_key is not None and b.sort_key is not None:
        r = _strcmp(a.sort_key, b.sort_key) or _strcmp(a.machine_id, b.machine_id)
        r = r or -version_compare(a.version, b.version)
        if r:
            return r
    # 4. The file name, decreasing version order. The spec says "with the suffix
    # removed"; systemd-boot compares its entry id, which keeps ".conf" (so "a-1.conf"
    # sorts above "a.conf" there). The boot counter is left out.
    r = -version_compare(a.id, b.id)
    if r:
        return r
    # Names equal but for the counters: more tries left first, then fewer done (BLS note).
    if a.tries_left is None or b.tries_left is None:
        return 0
    return _sign(b.tries_left - a.tries_left) or _sign(a.tries_done - b.tries_done)


def glob_match(pattern: str, name: str) -> bool:
    """loader.conf(5)'s glob: `?`, `*`, `[...]` with ranges (no negation, no classes),
    case-insensitive."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        end = pattern.find("]", i + 2) if c == "[" else -1
        if c == "[" and end < 0:
            return False  # systemd-boot's efi_fnmatch: a set never closed matches nothing
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif end > 0:
            body, k, members = pattern[i + 1 : end], 0, []
            while k < len(body):
                if body[k + 1 : k + 2] == "-" and k + 2 < len(body):
                    members.append(f"{re.escape(body[k])}-{re.escape(body[k + 2])}")
                    k += 3
                else:
                    members.append(re.escape(body[k]))
                    k += 1
            out.append("[" + "".join(members) + "]")
            i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.fullmatch("".join(out), name, re.IGNORECASE | re.DOTALL) is not None


def loader_conf_default(text: str | None) -> str | None:
    """The `default` pattern of a loader.conf (the last one given), quotes removed."""
    pattern = None
    for raw in (text or "").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition(" ")
        if key == "default":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            pattern = value
    return pattern


@dataclass(frozen=True)
class Menu:
    """A systemd-boot menu: the entries in display order and the one booted by default."""

    entries: tuple[Entry, ...]
    default: Entry | None


def systemd_boot_menu(files: Iterable[tuple[str, str]], loader_conf: str | None = None) -> Menu:
    """The menu of (file name, text) pairs of loader/entries and a loader.conf text.

    Only `*.conf` names count, and not hidden ones (a leading `.`: systemd-boot and
    bootctl skip them). The default: the first entry in menu order whose id matches
    loader.conf's `default` glob; without one, or when none matches, the first.
    """
    entries = [
        parse_entry(n, t) for n, t in files if n.lower().endswith(".conf") and not n.startswith(".")
    ]
    ordered = tuple(sorted(entries, key=cmp_to_key(compare_entries)))
    pattern = loader_conf_default(loader_conf)
    if pattern is not None and pattern.startswith("@"):
        raise NotImplementedError(f"loader.conf default {pattern} needs EFI variables")
    chosen = None
    if pattern:
        chosen = next((e for e in ordered if glob_match(pattern, e.id)), None)
    if chosen is None and ordered:
        chosen = ordered[0]
    return Menu(ordered, chosen)


# ---------------------------------------------------------------------------------------
# Boot counting (BLS "Boot counting"; systemd's Automatic Boot Assessment)
# ---------------------------------------------------------------------------------------


def with_counter(entry: Entry, left: int | None, done: int = 0) -> str:
    """The entry's file name carrying `+LEFT[-DONE]` (None: no counter, a blessed entry)."""
    suffix = ".conf" if entry.file.endswith(".conf") else ".efi"
    stem = entry.id[: -len(suffix)]
    if left is None:
        return entry.id
    return f"{stem}+{left}" + (f"-{done}" if done else "") + suffix


def counted_try(entry: Entry) -> str | None:
    """The name the boot loader gives an entry on trial before it boots it (one try less,
    one more done); None when it renames nothing (no counter, or no try left)."""
    left = entry.tries_left
    if left is None or left == 0:
        return None
    return with_counter(entry, left - 1, entry.tries_done + 1)


def spent(entry: Entry) -> str:
    """The name of an entry on trial once every try it has left failed."""
    assert entry.tries_left is not None
    return with_counter(entry, 0, entry.tries_done + entry.tries_left)


def after_rename(menu: Menu, entry: Entry, new_file: str) -> Menu:
    """The menu once `entry`'s file is renamed (by the boot loader, or by a blessing),
    for a loader.conf without `default` (the first entry boots)."""
    entries = [replace(e, file=new_file) if e is entry else e for e in menu.entries]
    ordered = tuple(sorted(entries, key=cmp_to_key(compare_entries)))
    return Menu(ordered, ordered[0] if ordered else None)


def esp_lookup(esp: Path, path: str) -> Path | None:
    """What an ESP path names, compared case-insensitively as FAT (and firmware) does."""
    node = esp
    for part in (p for p in path.split("/") if p):
        if not node.is_dir():
            return None
        names = {n.casefold(): n for n in (c.name for c in node.iterdir())}
        name = names.get(part.casefold())
        if name is None:
            return None
        node = node / name
    return node


def read_esp(esp: Path, entries_dir: str = "loader/entries") -> Menu:
    """The menu systemd-boot shows for a directory holding the ESP's files."""
    linux = esp_lookup(esp, "EFI/Linux")
    if linux is not None and linux.is_dir():
        type2 = [p.name for p in linux.iterdir() if p.is_file() and p.suffix.lower() == ".efi"]
        if type2:
            raise NotImplementedError(f"Type #2 entries are not modelled: {sorted(type2)}")
    directory = esp_lookup(esp, entries_dir)
    if directory is None or not directory.is_dir():
        return Menu((), None)
    files = [(p.name, p.read_text()) for p in sorted(directory.iterdir()) if p.is_file()]
    conf = esp_lookup(esp, "loader/loader.conf")
    return systemd_boot_menu(files, conf.read_text() if conf is not None else None)


# ---------------------------------------------------------------------------------------
# What an entry boots
# ---------------------------------------------------------------------------------------

_KARG = re.compile(r"composefs=\??([0-9a-f]{64}|[0-9a-f]{128})")
_KARG_DIGEST = re.compile(
    r"composefs\.digest=\??v1-(?:sha256-12:([0-9a-f]{64})|sha512-12:([0-9a-f]{128}))"
)


def composefs_digest(cmdline: Iterable[str]) -> str | None:
    """The image a command line names (`composefs.digest=[?]v1-ALG-12:HEX`, else
    `composefs=[?]HEX`: composefs-rs's order); the first of several."""
    words = list(cmdline)
    for word in words:
        m = _KARG_DIGEST.fullmatch(word)
        if m:
            return m.group(1) or m.group(2)
    for word in words:
        m = _KARG.fullmatch(word)
        if m:
            return m.group(1)
    return None


def pe_section(image: bytes, name: bytes) -> bytes | None:
    """A section of a PE image (a UKI's `.cmdline`), read from the COFF section table."""
    (pe_at,) = struct.unpack_from("<I", image, 0x3C)
    if image[:2] != b"MZ" or image[pe_at : pe_at + 4] != b"PE\0\0":
        raise ValueError("not a PE image")
    (nsections,) = struct.unpack_from("<H", image, pe_at + 6)
    (opt_size,) = struct.unpack_from("<H", image, pe_at + 20)
    table = pe_at + 24 + opt_size
    for i in range(nsections):
        sname, vsize, _va, raw_size, raw_at = struct.unpack_from("<8sIIII", image, table + 40 * i)
        if sname.rstrip(b"\0") == name:
            return image[raw_at : raw_at + min(vsize, raw_size)]
    return None


def entry_digest(entry: Entry, esp: Path | None = None) -> str | None:
    """The composefs image an entry boots: its `options`, or the `.cmdline` of its UKI."""
    if entry.efi is not None and esp is not None:
        uki = esp_lookup(esp, entry.efi)
        if uki is None:
            return None
        cmdline = pe_section(uki.read_bytes(), b".cmdline")
        return composefs_digest((cmdline or b"").decode().rstrip("\0").split())
    return composefs_digest(entry.options)
