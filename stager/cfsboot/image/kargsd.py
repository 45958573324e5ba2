"""An image's kernel arguments: `usr/lib/bootc/kargs.d/*.toml`, bootc's format.

Each `*.toml` file holds `kargs = ["a=1", "b"]` and optionally
`match-architectures = ["x86_64", ...]` (Rust's architecture names); any other
key is an error. Files apply in lexical order of their names.
"""

from __future__ import annotations

from pathlib import Path

from cfsboot.errors import die
from cfsboot.linux.arch import rust_arch

KARGS_D = "usr/lib/bootc/kargs.d"


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


def parse_kargs_toml(text: str, *, name: str, arch: str) -> list[str]:
    """The arguments one kargs.d file contributes on `arch` (empty if it does not match)."""
    import tomllib  # status reads kargs (split_kargs), never kargs.d files

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
