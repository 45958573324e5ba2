"""Kernel arguments: the image's `usr/lib/bootc/kargs.d/*.toml`, install-time ones, composefs=.

bootc's kargs.d format: each `*.toml` file holds `kargs = ["a=1", "b"]` and
optionally `match-architectures = ["x86_64", ...]` (Rust's architecture
names); any other key is an error. Files apply in lexical order of their names.
"""

from __future__ import annotations

import platform
import tomllib
from collections.abc import Iterable, Sequence
from pathlib import Path

from cfsboot.errors import die
from setuproot.contract import KARG, KARG_DIGEST, ComposefsKarg

KARGS_D = "usr/lib/bootc/kargs.d"

# Python's platform.machine() spelling -> Rust's std::env::consts::ARCH, which kargs.d uses.
_RUST_ARCH = {
    "x86_64": "x86_64",
    "amd64": "x86_64",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "ppc64le": "powerpc64",
    "ppc64": "powerpc64",
    "s390x": "s390x",
    "riscv64": "riscv64",
    "loongarch64": "loongarch64",
    "i386": "x86",
    "i686": "x86",
    "armv7l": "arm",
}


def rust_arch(machine: str | None = None) -> str:
    """The architecture name kargs.d files match against (`x86_64`, `aarch64`, ...)."""
    m = machine or platform.machine()
    return _RUST_ARCH.get(m, m)


def split_kargs(cmdline: str) -> list[str]:
    """Split a command line into arguments on whitespace outside double quotes, keeping the quotes.

    Unlike setuproot.contract.split_cmdline (which gives the values the kernel
    sees) this keeps `foo="a b"` intact, so it can be written back.
    """
    args: list[str] = []
    cur: list[str] = []
    quoted = False
    for ch in cmdline:
        if ch == '"':
            quoted = not quoted
        if ch.isspace() and not quoted:
            if cur:
                args.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        args.append("".join(cur))
    return args


def karg_key(arg: str) -> str:
    return arg.split("=", 1)[0]


def parse_kargs_toml(text: str, *, name: str, arch: str) -> list[str]:
    """The arguments one kargs.d file contributes on `arch` (empty if it does not match)."""
    where = f"{KARGS_D}/{name}"
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        die(f"{where}: invalid TOML: {e}")
    unknown = sorted(set(doc) - {"kargs", "match-architectures"})
    if unknown:
        die(f"{where}: unknown key {unknown[0]!r}; expected 'kargs' and 'match-architectures'")
    kargs = doc.get("kargs")
    if not isinstance(kargs, list) or not all(isinstance(k, str) for k in kargs):
        die(f"{where}: 'kargs' must be a list of strings")
    arches = doc.get("match-architectures")
    if arches is not None:
        if not isinstance(arches, list) or not all(isinstance(a, str) for a in arches):
            die(f"{where}: 'match-architectures' must be a list of strings")
        if arch not in arches:
            return []
    # An element may hold several arguments ("quiet splash"); keep each as its own.
    return [arg for k in kargs for arg in split_kargs(k)]


def load_kargs_d(root: Path, *, arch: str | None = None) -> list[str]:
    """All arguments from `root/usr/lib/bootc/kargs.d/*.toml`, files in lexical order."""
    directory = root / KARGS_D
    if not directory.is_dir():
        return []
    target = arch or rust_arch()
    out: list[str] = []
    for path in sorted(directory.iterdir(), key=lambda p: p.name):
        if path.suffix != ".toml" or path.is_symlink() or not path.is_file():
            continue
        out.extend(parse_kargs_toml(path.read_text(encoding="utf-8"), name=path.name, arch=target))
    return out


def is_composefs_karg(arg: str) -> bool:
    return karg_key(arg) in (KARG, KARG_DIGEST)


def set_composefs_karg(args: Sequence[str], karg: ComposefsKarg) -> list[str]:
    """`args` with every composefs karg replaced by `karg` (in the first one's place, or last)."""
    out: list[str] = []
    placed = False
    for arg in args:
        if is_composefs_karg(arg):
            if not placed:
                out.append(karg.to_karg())
                placed = True
        else:
            out.append(arg)
    if not placed:
        out.append(karg.to_karg())
    return out


def dedupe(args: Iterable[str]) -> list[str]:
    """Drop exact repeats of an argument, keeping the first (twice means nothing more)."""
    seen: set[str] = set()
    out: list[str] = []
    for arg in args:
        if arg not in seen:
            seen.add(arg)
            out.append(arg)
    return out


def install_kargs(
    *, install: Sequence[str], composefs: ComposefsKarg, kargs_d: Sequence[str]
) -> list[str]:
    """The first deployment's arguments in bootc's order: install ones (`rw`, `--karg`),
    the composefs karg, then the image's kargs.d. A composefs karg given anywhere else is replaced.
    """
    base = [a for a in install if not is_composefs_karg(a)]
    rest = [a for a in kargs_d if not is_composefs_karg(a)]
    return dedupe([*base, composefs.to_karg(), *rest])


def upgrade_kargs(
    current: Sequence[str],
    *,
    old_kargs_d: Sequence[str],
    new_kargs_d: Sequence[str],
    composefs: ComposefsKarg,
) -> list[str]:
    """A new deployment's arguments from the booted entry's, as bootc computes them on upgrade.

    Drop what only the old image's kargs.d had, add what only the new one has,
    swap the composefs karg. Arguments the admin added by hand stay.
    """
    removed = set(old_kargs_d) - set(new_kargs_d)
    added = [a for a in new_kargs_d if a not in set(old_kargs_d)]
    kept = [a for a in current if a not in removed]
    return dedupe(set_composefs_karg([*kept, *(a for a in added if a not in kept)], composefs))
