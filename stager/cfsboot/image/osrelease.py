"""os-release(5) parsing, and the boot entry title and version chosen from it as bootc does.

The file is a list of shell-style `KEY=VALUE` assignments: values may be
single-quoted (literal), double-quoted (backslash escapes `"`, `\\`, `$` and
backquote) or bare (backslash escapes any character).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cfsboot.linux.lazylog import getLogger

log = getLogger(__name__)  # imports logging when it logs (lazylog)

# Where an image keeps its os-release, in the order bootc looks (usr first: /etc is often a link).
OS_RELEASE_PATHS = ("usr/lib/os-release", "etc/os-release")

# bootc's ID when the image has none (the os-release default "linux" would collide less
# usefully with other operating systems' entries).
DEFAULT_OS_ID = "bootc"

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_DQUOTE_ESCAPABLE = '"\\$`'


class _Unterminated(ValueError):
    pass


def unquote(value: str) -> str:
    """Undo shell quoting of one os-release value (`"a b"'c'd\\ e` -> `a bcd e`)."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        ch = value[i]
        if ch == "'":
            end = value.find("'", i + 1)
            if end < 0:
                raise _Unterminated("unterminated single quote")
            out.append(value[i + 1 : end])
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise _Unterminated("unterminated double quote")
                ch = value[i]
                if ch == '"':
                    i += 1
                    break
                if ch == "\\" and i + 1 < n and value[i + 1] in _DQUOTE_ESCAPABLE:
                    out.append(value[i + 1])
                    i += 2
                else:
                    out.append(ch)
                    i += 1
        elif ch == "\\":
            # A trailing lone backslash would continue the line in a shell; drop it.
            if i + 1 < n:
                out.append(value[i + 1])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def parse_os_release(text: str) -> dict[str, str]:
    """KEY -> unquoted value; bad lines are skipped with a warning (images are not ours to fix)."""
    fields: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not _KEY.fullmatch(key):
            log.warning("os-release line %d ignored: not KEY=VALUE: %r", lineno, raw)
            continue
        try:
            fields[key] = unquote(value.strip())
        except _Unterminated as e:
            log.warning("os-release line %d ignored: %s: %r", lineno, e, raw)
    return fields


@dataclass(frozen=True)
class OsRelease:
    """The fields of one os-release file."""

    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> OsRelease:
        return cls(parse_os_release(text))

    @classmethod
    def from_root(cls, root: Path) -> OsRelease:
        """Read an image root's os-release; an image without one gives empty fields."""
        for rel in OS_RELEASE_PATHS:
            path = root / rel
            # Do not follow a link: it may be absolute and point into the host.
            if path.is_file() and not path.is_symlink():
                return cls.parse(path.read_text(encoding="utf-8", errors="replace"))
        return cls()

    def get(self, *keys: str) -> str | None:
        """The first of `keys` that is set to a non-empty value."""
        for key in keys:
            value = self.fields.get(key)
            if value:
                return value
        return None

    @property
    def os_id(self) -> str:
        return self.get("ID") or DEFAULT_OS_ID

    def title(self, fallback: str) -> str:
        """A Type 1 entry `title`: PRETTY_NAME, NAME, ID, else `fallback` (bootc: the digest)."""
        return self.get("PRETTY_NAME", "NAME", "ID") or fallback

    def version(self, fallback: str) -> str:
        """A Type 1 entry `version`: VERSION_ID, VERSION, else `fallback`."""
        return self.get("VERSION_ID", "VERSION") or fallback

    def boot_label(self) -> str | None:
        """A UKI's menu label (Boot Loader Specification, Type #2): name, then version if any."""
        name = self.get("PRETTY_NAME", "NAME", "ID")
        if name is None:
            return None
        version = self.get("VERSION_ID", "VERSION")
        return f"{name} {version}" if version else name
