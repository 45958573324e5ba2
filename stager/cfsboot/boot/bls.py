"""Boot Loader Specification Type #1 entries (`loader/entries/*.conf`) and systemd-boot's order.

Entry files are `key value` lines; `#` starts a comment line. Keys cfsboot
does not know are kept, in order, and written back after the known ones, so
rewriting an entry (rollback, sort-key changes) never drops a field. The order
of the known keys follows bootc's serialiser.

Names and sort keys follow bootc's composefs backend so that its tools and ours
read each other's ESP: `bootc_<os-id>-<version>-<1|0>.conf` (GRUB's BLS code
sorts file names descending, so the primary entry ends in 1) and
`sort-key bootc-<os-id>-<0|1>` (systemd-boot sorts sort keys ascending).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

from cfsboot.boot.counting import split_name
from cfsboot.image.versions import cmp3, compare_versions
from setuproot.contract import KargError, parse_cmdline

# Paths on the ESP (or /boot), relative to its root.
ENTRIES_DIR = "loader/entries"
STAGED_ENTRIES_DIR = "loader/entries.staged"
LOADER_CONF = "loader/loader.conf"
# What bootc writes when the ESP has no loader.conf yet (it never rewrites an existing one).
LOADER_CONF_DEFAULT = "timeout 5\n"
ENTRY_SUFFIX = ".conf"
# Entry files cfsboot/bootc own start with this; anything else belongs to someone else.
ENTRY_PREFIX = "bootc_"
# Directories holding a deployment's vmlinuz and initrd, and UKI file names, start with this.
BOOT_DIR_PREFIX = "bootc_composefs-"
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd"


class BLSError(ValueError):
    """An entry that cannot be written as a BLS file."""


# ---------------------------------------------------------------------------
# The entry file
# ---------------------------------------------------------------------------

_KNOWN = ("title", "version", "machine-id", "sort-key", "linux", "initrd", "efi", "uki", "options")
_KEY_RE = re.compile(r"[^\s#][^\s]*")


@dataclass(frozen=True)
class BLSEntry:
    """One Type #1 entry. `options` keeps each `options` line; the kernel gets them joined."""

    title: str | None = None
    version: str | None = None
    machine_id: str | None = None
    sort_key: str | None = None
    linux: str | None = None
    initrd: tuple[str, ...] = ()
    efi: str | None = None
    uki: str | None = None
    options: tuple[str, ...] = ()
    # Keys cfsboot does not interpret (devicetree, architecture, ...), in file order.
    extra: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> BLSEntry:
        """Parse an entry file; a repeated single-valued key: the last wins (as in systemd-boot)."""
        single: dict[str, str] = {}
        initrd: list[str] = []
        options: list[str] = []
        extra: list[tuple[str, str]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(maxsplit=1)
            key, value = parts[0], parts[1] if len(parts) > 1 else ""
            if key == "initrd":
                initrd.append(value)
            elif key == "options":
                options.append(value)
            elif key in _KNOWN:
                single[key] = value
            else:
                extra.append((key, value))
        return cls(
            title=single.get("title"),
            version=single.get("version"),
            machine_id=single.get("machine-id"),
            sort_key=single.get("sort-key"),
            linux=single.get("linux"),
            initrd=tuple(initrd),
            efi=single.get("efi"),
            uki=single.get("uki"),
            options=tuple(options),
            extra=tuple(extra),
        )

    def lines(self) -> list[tuple[str, str]]:
        """(key, value) pairs in the order they are written."""
        out: list[tuple[str, str]] = []

        def put(key: str, value: str | None) -> None:
            if value is not None:
                out.append((key, value))

        put("title", self.title)
        put("version", self.version)
        put("linux", self.linux)
        for path in self.initrd:
            put("initrd", path)
        put("efi", self.efi)
        put("uki", self.uki)
        for opts in self.options:
            put("options", opts)
        put("machine-id", self.machine_id)
        put("sort-key", self.sort_key)
        out.extend(self.extra)
        return out

    def serialise(self) -> str:
        """The entry file's text; refuses values that would change meaning when read back."""
        text: list[str] = []
        for key, value in self.lines():
            if not _KEY_RE.fullmatch(key):
                raise BLSError(f"invalid BLS key {key!r}")
            if "\n" in value or "\r" in value or value != value.strip():
                raise BLSError(f"invalid value for BLS key {key!r}: {value!r}")
            text.append(f"{key} {value}" if value else key)
        return "\n".join(text) + "\n"

    @property
    def cmdline(self) -> str:
        """The kernel command line systemd-boot builds from the `options` lines."""
        return " ".join(o for o in self.options if o)

    def with_cmdline(self, cmdline: str) -> BLSEntry:
        return replace(self, options=(cmdline,) if cmdline else ())

    def digests(self) -> tuple[str, ...]:
        """Every deployment (composefs digest) this entry names, in the order setup-root
        tries them (`composefs.digest=` ones first); () if not a composefs entry.

        BLS entries name them in `options` (composefs-rs seals one digest per hash
        algorithm, so bootc's entries may carry several); UKI entries in the UKI file
        name, since the command line is sealed inside the UKI.
        """
        try:
            kargs = parse_cmdline(self.cmdline)
        except KargError:
            return ()
        if kargs:
            return tuple(dict.fromkeys(k.digest for k in kargs))
        for path in (self.uki, self.efi):
            if path:
                name = path.rsplit("/", 1)[-1]
                m = re.fullmatch(re.escape(BOOT_DIR_PREFIX) + r"([0-9a-fA-F]+)\.efi", name)
                if m:
                    return (m.group(1).lower(),)
        return ()

    def deployment(self, has_image: Callable[[str], bool] | None = None) -> str | None:
        """The deployment this entry boots (`booted_digest` of its `digests`); None if not a
        composefs entry. `has_image`: whether the repository has an image (None: unknown)."""
        return booted_digest(self.digests(), has_image)


def booted_digest(
    digests: Sequence[str], has_image: Callable[[str], bool] | None = None
) -> str | None:
    """Which of an entry's digests setup-root boots: the first whose image the repository
    has (setuproot.main.choose_karg), else the first; the first where the repository is
    not known."""
    if has_image is not None and len(digests) > 1:
        for d in digests:
            if has_image(d):
                return d
    return digests[0] if digests else None


# ---------------------------------------------------------------------------
# Entry files and systemd-boot's menu order
# ---------------------------------------------------------------------------


def is_entry_name(name: str) -> bool:
    """Whether systemd-boot reads `loader/entries/NAME` as an entry (src/boot/boot.c).

    Not a hidden name (a leading `.`: temp files of an interrupted write, ours or
    another tool's), ending in `.conf` in any case, and not `auto-*` (the ids of the
    entries systemd-boot makes up itself). `bootctl list` skips hidden names and
    non-`.conf` names the same way. Callers skip directories.
    """
    return (
        not name.startswith(".")
        and name.lower().endswith(ENTRY_SUFFIX)
        and not name.startswith("auto-")
    )


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_lower(text: str) -> str:
    """systemd-boot's case folding (strtolower16): A-Z only, every other character as it is."""
    return text.translate(_ASCII_LOWER)


@dataclass(frozen=True)
class EntryFile:
    """An entry under its file name, which systemd-boot uses as the entry's id and tie-breaker."""

    name: str
    entry: BLSEntry

    @property
    def id(self) -> str:
        """systemd-boot's id: the name without boot counter, case-folded.

        `Foo+3-1.conf` -> `foo.conf`. The menu's last tie-breaker and what loader.conf's
        `default` is matched against.
        """
        return ascii_lower(split_name(self.name)[0])

    @property
    def tries_left(self) -> int | None:
        """Boot-counting tries left, or None when the file name carries no counter."""
        tries = split_name(self.name)[1]
        return None if tries is None else tries.left

    @property
    def tries_done(self) -> int:
        tries = split_name(self.name)[1]
        return 0 if tries is None else tries.done

    @property
    def ours(self) -> bool:
        return self.name.startswith(ENTRY_PREFIX) and self.name.lower().endswith(ENTRY_SUFFIX)


def _opt_cmp(a: str | None, b: str | None) -> int:
    # An unset string sorts before any set one (systemd's strcmp8 with NULL).
    return cmp3((a is not None, a or ""), (b is not None, b or ""))


def compare_entries(a: EntryFile, b: EntryFile) -> int:
    """systemd-boot's menu order: negative when `a` is shown above `b`."""
    r = cmp3(a.tries_left == 0, b.tries_left == 0)  # entries out of tries go last
    if r:
        return r
    ka, kb = a.entry.sort_key or None, b.entry.sort_key or None
    r = cmp3(ka is None, kb is None)  # entries with a sort key come first
    if r:
        return r
    if ka is not None and kb is not None:
        r = cmp3(ka, kb) or _opt_cmp(a.entry.machine_id, b.entry.machine_id)
        r = r or -compare_versions(a.entry.version, b.entry.version)  # newest version first
        if r:
            return r
    r = -compare_versions(a.id, b.id)
    if r or a.tries_left is None or b.tries_left is None:
        return r
    return -cmp3(a.tries_left, b.tries_left) or cmp3(a.tries_done, b.tries_done)


def sort_entries(entries: Iterable[EntryFile]) -> list[EntryFile]:
    """Entries in systemd-boot's menu order (the default one first)."""
    return sorted(entries, key=functools.cmp_to_key(compare_entries))


# loader.conf `default @saved`: boot the entry booted last (an EFI variable).
SAVED = "@saved"


def default_entry(entries: Iterable[EntryFile], pattern: str | None = None) -> EntryFile | None:
    """The entry systemd-boot boots: the first in menu order whose id matches loader.conf's
    `default` (see `loader_default` and `glob_match`), else the first in menu order.

    systemd-boot lets EFI variables override loader.conf: LoaderEntryOneShot and
    LoaderEntryDefault (`bootctl set-oneshot`, `bootctl set-default`), and with `@saved`
    LoaderEntryLastBooted. cfsboot never sets them and does not read them (it must
    answer the same for a disk image that carries none), so it decides as systemd-boot
    does when none is set: `@saved` then means the first entry in menu order.
    """
    ordered = sort_entries(entries)
    if pattern and ascii_lower(pattern) != SAVED:
        folded = ascii_lower(pattern)
        for e in ordered:
            if glob_match(folded, e.id):
                return e
    return ordered[0] if ordered else None


def loader_default(text: str) -> str | None:
    """loader.conf's `default` as systemd-boot reads it (config_defaults_load_from_file).

    Lines split at LF or CR; blanks and tabs around a line dropped; `#` lines skipped;
    the key ends at the first blank or tab, a key without value is skipped; a value in
    matching quotes (`"..."` or `'...'`) loses them. The last `default` wins, except
    that a value starting with `@` other than `@saved` (any case) is ignored. Returns
    the value case-folded, as systemd-boot matches it; None without one.
    """
    found: str | None = None
    for raw in text.replace("\r", "\n").split("\n"):
        line = raw.strip(" \t")
        if not line or line.startswith("#"):
            continue
        cut = min((i for i in (line.find(" "), line.find("\t")) if i >= 0), default=-1)
        if cut < 0:
            continue
        key, value = line[:cut], line[cut:].lstrip(" \t")
        if value[:1] in ("'", '"') and line.endswith(value[0]):
            value = value[1:-1]
        if key != "default" or (value.startswith("@") and ascii_lower(value) != SAVED):
            continue
        found = ascii_lower(value)
    return found


def glob_match(pattern: str, text: str) -> bool:
    """systemd-boot's glob (efi_fnmatch in src/boot/efi-string.c), case-sensitive: fold first.

    `*` any run of characters, `?` one character, `\\c` the character c; `[...]` one of
    a set: members, `a-z` ranges (`-` first or last is a member, a range cannot chain:
    `[a-c-f]` is a-c, `-`, `f`), `\\c` escapes inside, `]` first is a member. No
    negation (`[!a]` holds `!` and `a`) and no classes. A `[` without its `]`, or a
    trailing `\\`, matches nothing.
    """
    # Segments between stars are matched leftmost, without backtracking, as systemd-boot does.
    first = True
    p = h = 0
    while True:
        ok, star_p, star_h = _glob_prefix(pattern, p, text, h)
        if first:
            if not ok:
                return False
            if star_p is None:
                return True
            first = False
        if star_p is not None and star_h is not None:
            p, h = star_p, star_h
        elif ok or h >= len(text):
            return ok
        else:
            h += 1  # one more character taken by the star


def _glob_prefix(pat: str, p: int, text: str, h: int) -> tuple[bool, int | None, int | None]:
    """Match `pat[p:]` at `text[h:]` up to the next `*`.

    (True, after the stars, where the text goes on) at a star; (whether the text ended
    too, None, None) at the pattern's end; (False, None, None) on a mismatch.
    """
    n = len(pat)
    while True:
        if p >= n:
            return h >= len(text), None, None
        c = pat[p]
        if c == "*":
            while p < n and pat[p] == "*":
                p += 1
            return True, p, h
        if h >= len(text):
            return False, None, None
        if c == "\\":
            p += 1
            if p >= n or pat[p] != text[h]:
                return False, None, None
        elif c == "[":
            end = _glob_set(pat, p, text[h])
            if end is None:
                return False, None, None
            p = end
        elif c != "?" and c != text[h]:
            return False, None, None
        p += 1
        h += 1


def _glob_set(pat: str, p: int, ch: str) -> int | None:
    """The index of the `]` closing the set opened at `pat[p]` if `ch` is in it, else None."""
    n, first, can_range, hit = len(pat), True, True, False
    while True:
        p += 1
        if p >= n:
            return None
        c = pat[p]
        if c == "\\":
            p += 1
            if p >= n:
                return None
            hit = hit or pat[p] == ch
            can_range = True
        elif c == "]" and not first:
            return p if hit else None
        elif c == "-" and can_range and not first and pat[p + 1 : p + 2] != "]":
            low = pat[p - 1]
            p += 1
            if p < n and pat[p] == "\\":
                p += 1
            if p >= n:
                return None
            hit = hit or low <= ch <= pat[p]
            can_range = False
        else:
            hit = hit or c == ch
            can_range = True
        first = False


# ---------------------------------------------------------------------------
# bootc's naming scheme
# ---------------------------------------------------------------------------

# Characters vfat refuses in names, plus path separators and controls.
_UNSAFE_NAME = re.compile(r'[\x00-\x1f"*/:<>?\\|]')


# Longest os-id and version parts of an entry's file name (vfat names end at 255).
NAME_PART_MAX = 64


def menu_text(value: str) -> str:
    """`value` as one line of menu text: each run of white space and control characters
    one blank, none at the ends. Titles and versions come from the image's os-release:
    they must not add a line to an entry (or leave one that reads back otherwise)."""
    return " ".join("".join(c if c.isprintable() else " " for c in value).split())


def safe_file_name(part: str) -> str:
    """`part` of a file name on the ESP: vfat's forbidden characters, `/` and controls as
    `_`, no leading dot (no `..`), at most NAME_PART_MAX characters."""
    return _UNSAFE_NAME.sub("_", menu_text(part)).lstrip(".")[:NAME_PART_MAX] or "_"


def entry_file_name(os_id: str, version: str, *, primary: bool) -> str:
    """bootc's `bootc_<os-id with - as _>-<version>-<1 primary|0 secondary>.conf`."""
    os_part = _UNSAFE_NAME.sub("_", os_id.replace("-", "_"))[:NAME_PART_MAX]
    version_part = _UNSAFE_NAME.sub("_", version)[:NAME_PART_MAX]
    return f"{ENTRY_PREFIX}{os_part}-{version_part}-{1 if primary else 0}.conf"


def entry_sort_key(os_id: str, *, primary: bool) -> str:
    """bootc's `bootc-<os-id>-<0 primary|1 secondary>` (ascending: primary is the default)."""
    return f"bootc-{os_id}-{0 if primary else 1}"


def boot_dir_name(boot_id: str) -> str:
    """Directory (on the ESP under EFI/Linux, or in /boot for GRUB) of one kernel+initrd pair."""
    return f"{BOOT_DIR_PREFIX}{boot_id}"


def parse_entries(files: Sequence[tuple[str, str]]) -> list[EntryFile]:
    """(file name, text) pairs -> EntryFile objects of the names systemd-boot reads
    (`is_entry_name`), others skipped."""
    return [EntryFile(n, BLSEntry.parse(t)) for n, t in files if is_entry_name(n)]
