"""An image's kernel arguments: `usr/lib/bootc/kargs.d/*.toml`, bootc's format.

Each `*.toml` file holds `kargs = ["a=1", "b"]` and optionally
`match-architectures = ["x86_64", ...]` (Rust's architecture names); any other
key is an error. Files apply in lexical order of their names.
"""

from __future__ import annotations

import os
from pathlib import Path

from cfsboot.errors import die
from cfsboot.image.rootpath import resolve, resolve_file

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


def karg_problem(arg: str) -> str | None:
    """Why `arg` cannot be one kernel argument of a boot entry; None if it can.

    A control character would end the BLS `options` line or the GRUB `linux` command
    (a line, a statement of the image's making); an odd number of double quotes
    leaves a quote open, so the kernel (and setup-root) would read the arguments after
    it, the composefs karg among them, as part of this one's value.
    """
    if not arg:
        return "an empty argument"
    bad = next((c for c in arg if c != " " and (c.isspace() or not c.isprintable())), None)
    if bad is not None:
        return f"a control or white space character ({bad!r})"
    if arg.count('"') % 2:
        return "an unbalanced double quote"
    return None


def parse_kargs_toml(text: str, *, name: str, arch: str) -> list[str]:
    """The arguments one kargs.d file contributes on `arch` (empty if it does not match)."""
    import tomllib  # status reads kargs (split_kargs), never kargs.d files

    where = f"{KARGS_D}/{name}"
    try:
        doc = tomllib.loads(text)
    except RecursionError:
        die(f"{where}: invalid TOML: nested too deeply")
    except ValueError as e:  # TOMLDecodeError, or an integer of 4300+ digits
        die(f"{where}: invalid TOML: {str(e).splitlines()[0]}")
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
    out = [arg for k in kargs for arg in split_kargs(k)]
    for arg in out:
        problem = karg_problem(arg)
        if problem is not None:
            die(f"{where}: kernel argument {arg!r} has {problem}")
    return out


def kargs_d_files(root: Path) -> list[tuple[str, Path]]:
    """(name, path) of the kargs.d files of the image at root, in lexical order.

    What the import reads from an image's tree (cfsboot.image.bootscan): names ending
    in `.toml` that are regular files once links are resolved inside the image.
    """
    directory = resolve(root, KARGS_D)
    if directory is None or not directory.is_dir():
        return []
    out = []
    for name in sorted(os.listdir(directory)):
        path = resolve_file(root, f"{KARGS_D}/{name}") if name.endswith(".toml") else None
        if path is not None:
            out.append((name, path))
    return out


def read_kargs_toml(name: str, path: Path) -> str:
    """The text of one kargs.d file; one clear line when it is not UTF-8."""
    try:
        return path.read_bytes().decode()
    except UnicodeDecodeError as e:
        die(f"{KARGS_D}/{name}: not UTF-8 text (byte {e.start})")


def load_kargs_d(root: Path, *, arch: str | None = None) -> list[str]:
    """All arguments from `root/usr/lib/bootc/kargs.d/*.toml`, files in lexical order."""
    files = kargs_d_files(root)
    if not files:
        return []
    from cfsboot.linux.arch import rust_arch  # not for splitting (status imports this module)

    target = arch or rust_arch()
    out: list[str] = []
    for name, path in files:
        out.extend(parse_kargs_toml(read_kargs_toml(name, path), name=name, arch=target))
    return out
