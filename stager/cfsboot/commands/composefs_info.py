"""`cfsboot composefs-info`: inspect composefs images, with C `composefs-info` 1.0.8's output."""

from __future__ import annotations

import argparse
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

from cfsboot.errors import die

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.composefs.tree import Inode

COMMANDS = ("ls", "objects", "missing-objects", "dump", "measure-file")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "composefs-info",
        help="list, dump or check the objects of composefs images",
        description="Inspect composefs images; the output is that of C composefs-info 1.0.8.",
    )
    p.add_argument("--basedir", type=Path, metavar="DIR", help="object store for missing-objects")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="NAME",
        help="only look at this top-level entry (repeatable)",
    )
    p.add_argument("command", choices=COMMANDS, metavar="{" + ",".join(COMMANDS) + "}")
    p.add_argument("paths", nargs="+", metavar="IMAGE", help="images (files for measure-file)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    out = sys.stdout.buffer
    if args.command == "measure-file":
        for path in args.paths:
            out.write(measure_file(path).hex().encode() + b"\n")
        out.flush()
        return 0

    from cfsboot.composefs.dumpfile import dumps

    if args.basedir is not None and not args.basedir.is_dir():
        die(f"can't open basedir {str(args.basedir)!r}: not a directory")
    names = {os.fsencode(n) for n in args.filter}
    if any(b"/" in n for n in names):
        die("--filter takes a single file name, not a path")
    objects: set[bytes] = set()
    for path in args.paths:
        root = load_image(path, names or None)
        if args.command == "dump":
            out.write(dumps(root))
        elif args.command == "ls":
            out.write(b"".join(ls_lines(root)))
        else:
            objects.update(_payloads(root))
    if args.command in ("objects", "missing-objects"):
        wanted = sorted(objects)
        if args.command == "missing-objects":
            wanted = [o for o in wanted if not _has_object(args.basedir, o)]
        out.write(b"".join(o + b"\n" for o in wanted))
    out.flush()
    return 0


def load_image(path: str, toplevel: set[bytes] | None = None) -> Inode:
    """Read an image file; `toplevel` keeps only those names in the root (C's --filter)."""
    from cfsboot.composefs.erofs.reader import ImageFormatError, read_image

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        die(f"failed to open {path!r}: {e.strerror}")
    try:
        root = read_image(data)
    except ImageFormatError as e:
        die(f"failed to load {path!r}: {e}")
    if toplevel is not None:
        assert root.children is not None
        root.children = {k: v for k, v in root.children.items() if k in toplevel}
    return root


def measure_file(path: str) -> bytes:
    """The sha256 fs-verity digest: measured by the kernel if enabled, computed otherwise."""
    from cfsboot.composefs.fsverity import digest_file
    from setuproot.contract import HashAlg
    from setuproot.verity import NoVerity, VerityUnsupported, measure_verity

    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        die(f"failed to open {path!r}: {e.strerror}")
    try:
        try:
            alg, digest = measure_verity(fd)
        except (NoVerity, VerityUnsupported):
            try:
                return digest_file(fd, HashAlg.SHA256)
            except OSError as e:  # a directory opens, and fails to read
                die(f"failed to measure {path!r}: {e.strerror}")
        if alg != HashAlg.SHA256:
            die(f"failed to measure {path!r}: it has {alg} fs-verity, not sha256")
        return digest
    finally:
        os.close(fd)


def _escape_ls(value: bytes) -> bytes:
    """composefs-info's escaping for `ls` paths: like the dumpfile's, but spaces stay."""
    from cfsboot.composefs.dumpescape import escape

    return b" ".join(escape(part) for part in value.split(b" "))


def ls_lines(root: Inode) -> Iterator[bytes]:
    """The lines of `composefs-info ls`, depth first in name order.

    A node met again under another name is a hardlink in C's loaded tree, with no mode of
    its own: its line is just the path.
    """
    from cfsboot.composefs.dumpescape import escape

    seen: set[int] = set()
    stack = [(b"", iter(sorted(root.children or {})), root)]
    while stack:
        parent_path, names, node = stack[-1]
        name = next(names, None)
        if name is None:
            stack.pop()
            continue
        assert node.children is not None
        child = node.children[name]
        path = parent_path + b"/" + name
        line = _escape_ls(path)
        if id(child) not in seen:
            seen.add(id(child))
            ftype = stat.S_IFMT(child.mode)
            if ftype == stat.S_IFDIR:
                line += b"/\t"
                stack.append((path, iter(sorted(child.children or {})), child))
            elif ftype == stat.S_IFLNK:
                line += b"\t-> " + escape(child.payload or b"")
            elif ftype == stat.S_IFREG and child.payload is not None:
                line += b"\t@ " + escape(child.payload)
        yield line + b"\n"


def _payloads(root: Inode) -> Iterator[bytes]:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        for child in (node.children or {}).values():
            if id(child) in seen:
                continue
            seen.add(id(child))
            if child.is_reg() and child.payload is not None:
                yield child.payload
            if child.children is not None:
                stack.append(child)


def _has_object(basedir: Path | None, payload: bytes) -> bool:
    if basedir is None:
        return False
    try:
        os.stat(os.path.join(os.fsencode(basedir), payload.lstrip(b"/")))
    except OSError:
        return False
    return True
