"""Boot counting: the tries a boot entry has left, in BLS file names and in GRUB's grubenv.

systemd-boot (Boot Loader Specification, "Boot counting"): an entry file named
`NAME+LEFT[-DONE].conf` is on trial. Each time the boot loader starts it, it
renames it first (`+3` -> `+2-1`); at `+0-N` the entry sorts after every other
one, so the previous deployment boots. `systemd-bless-boot good` renames a
blessed entry to `NAME.conf`: no counter, no trial.

Debian's GRUB has no boot counting: cfsboot's generated menu does it with an
environment block (`grubenv`, see `GrubEnv`). A counted entry names one
variable, `cfsboot_t_KEY`, that holds the tries done (unset counts as 0) or
`good`; the menu itself carries the limit. KEY is new for every trial, so a
deployment staged again starts from zero without anyone having to reset a
value, and a value left behind by an earlier trial means nothing.

grubenv is GRUB's fixed 1024-byte block: a header line, `name=value` lines,
`#` padding. GRUB's `save_env` rewrites the block in place through the disk
(it cannot allocate), so a power cut while GRUB writes it could tear the
block between sectors. cfsboot writes its variables first, right after the
header, and with values of one character (`0`..`9`, or `good` written only
by cfsboot), so that GRUB's increments change bytes of the first 512-byte
sector only: a sector write is atomic, so GRUB leaves the old or the new
value. cfsboot itself replaces the whole file (a temporary name and a
rename), never in place. A value that cannot be read counts as out of tries
(the menu falls back) and an unreadable block disables counting (the first
entry boots): neither leaves the machine without a deployment to boot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# At most this many tries: GRUB script has no arithmetic, so the menu spells out each
# step of the count, and one digit keeps GRUB's rewrite of a value in place.
MAX_TRIES = 9


@dataclass(frozen=True)
class Tries:
    """An entry on trial: tries left and done; `key` names its GRUB counter (None: a new one)."""

    left: int
    done: int = 0
    key: str | None = None

    @property
    def failed(self) -> bool:
        """Out of tries: the boot loader passes it over."""
        return self.left <= 0

    @property
    def limit(self) -> int:
        return self.left + self.done


def check_tries(n: int) -> int:
    if not 0 <= n <= MAX_TRIES:
        raise ValueError(f"boot tries must be 0 (off) to {MAX_TRIES}, not {n}")
    return n


# ---------------------------------------------------------------------------------------
# BLS file names
# ---------------------------------------------------------------------------------------

# systemd-boot's counter: ASCII digits (\d would take other scripts' digits too), each at
# most INT_MAX, after the last `+` of the name and right before the suffix.
_COUNTER_RE = re.compile(r"([0-9]+)(?:-([0-9]+))?")
_INT_MAX = 2**31 - 1


def split_name(name: str, suffix: str = ".conf") -> tuple[str, Tries | None]:
    """`foo+2-1.conf` -> (`foo.conf`, Tries(2, 1)); a name without counter -> (name, None).

    As systemd-boot reads it (src/boot/boot.c, boot_entry_parse_tries): the counter
    follows the name's last `+`, and what follows the counter must be `suffix`, compared
    case-insensitively (`x+3.CONF` counts, `x+3.conf.bak` and `x+3-y.conf` do not).
    The name keeps its own spelling of the suffix.
    """
    plus = name.rfind("+")
    if plus < 0:
        return name, None
    m = _COUNTER_RE.match(name, plus + 1)
    if m is None or name[m.end() :].lower() != suffix.lower():
        return name, None
    left, done = int(m.group(1)), int(m.group(2) or 0)
    if left > _INT_MAX or done > _INT_MAX:
        return name, None
    return name[:plus] + name[m.end() :], Tries(left, done)


def counted_name(name: str, tries: Tries | None, suffix: str = ".conf") -> str:
    """The file name of entry `name` (without counter) carrying `tries`, as systemd-boot writes it.

    `+LEFT` for a fresh trial, `+LEFT-DONE` once tries were done.
    """
    if tries is None:
        return name
    stem = name[: -len(suffix)] if name.lower().endswith(suffix.lower()) else name
    counter = f"+{tries.left}" + (f"-{tries.done}" if tries.done else "")
    return f"{stem}{counter}{name[len(stem) :]}"


# ---------------------------------------------------------------------------------------
# GRUB's environment block
# ---------------------------------------------------------------------------------------

ENV_SIZE = 1024
ENV_HEADER = "# GRUB Environment Block\n"
VAR_PREFIX = "cfsboot_t_"
GOOD = "good"
_KEY_RE = re.compile(r"[0-9a-z]{1,40}")


class GrubEnvError(ValueError):
    """A block that is not GRUB's environment block, or one that would not fit."""


def var_name(key: str) -> str:
    if not _KEY_RE.fullmatch(key):
        raise GrubEnvError(f"invalid boot counter key {key!r}")
    return VAR_PREFIX + key


@dataclass(frozen=True)
class GrubEnv:
    """grubenv: cfsboot's counters (key -> value) and every other line, kept as it was."""

    counters: tuple[tuple[str, str], ...] = ()
    other: tuple[str, ...] = ()  # raw `name=value` lines of other programs, in order

    @classmethod
    def parse(cls, data: bytes) -> GrubEnv:
        if len(data) != ENV_SIZE or not data.startswith(ENV_HEADER.encode()):
            raise GrubEnvError(f"not a GRUB environment block ({len(data)} bytes)")
        counters: list[tuple[str, str]] = []
        other: list[str] = []
        # GRUB escapes a backslash and a newline inside values with a backslash.
        body = data[len(ENV_HEADER) :].decode("utf-8", errors="surrogateescape")
        for line in _env_lines(body):
            if not line or line.startswith("#"):
                continue
            name, sep, value = line.partition("=")
            if not sep:
                continue  # GRUB skips what it cannot read, and so do we
            if name.startswith(VAR_PREFIX):
                counters.append((name[len(VAR_PREFIX) :], value))
            else:
                other.append(line)
        return cls(tuple(counters), tuple(other))

    def get(self, key: str) -> str | None:
        return dict(self.counters).get(key)

    def with_counters(self, counters: dict[str, str]) -> GrubEnv:
        return GrubEnv(tuple(counters.items()), self.other)

    def render(self) -> bytes:
        text = ENV_HEADER
        for key, value in self.counters:
            text += f"{var_name(key)}={value}\n"
        for line in self.other:
            text += line + "\n"
        data = text.encode("utf-8", errors="surrogateescape")
        if len(data) > ENV_SIZE:
            raise GrubEnvError(f"GRUB environment block too full ({len(data)} of {ENV_SIZE} bytes)")
        return data + b"#" * (ENV_SIZE - len(data))


def _env_lines(body: str) -> list[str]:
    """Split on newlines that are not escaped by a backslash (GRUB's envblk format)."""
    out: list[str] = []
    cur: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch == "\\" and i + 1 < len(body):
            cur.append(body[i : i + 2])
            i += 2
            continue
        if ch == "\n":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def grub_tries(value: str | None, limit: int, key: str) -> Tries | None:
    """An entry's state from its grubenv value: None once blessed, else tries left and done.

    Unset is 0 done; a value that is neither `good` nor a count below the limit is
    out of tries (what the menu does with it too).
    """
    if value == GOOD:
        return None
    if value in (None, ""):
        done = 0
    elif len(value) == 1 and value in "0123456789":  # str.isdigit() takes "²" too
        done = min(int(value), limit)
    else:
        done = limit
    return Tries(limit - done, done, key)
