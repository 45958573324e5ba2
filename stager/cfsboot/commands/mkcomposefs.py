"""`cfsboot mkcomposefs`: build a composefs EROFS image, like C `mkcomposefs` 1.0.8."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from pathlib import Path

from cfsboot.errors import die

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.composefs.tree import Inode


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "mkcomposefs",
        help="build a composefs image from a directory or a dumpfile",
        description="Build a composefs EROFS image, byte-identical to C mkcomposefs 1.0.8.",
    )
    p.add_argument("--min-version", type=_version, metavar="N", help="minimal format version")
    p.add_argument("--max-version", type=_version, metavar="N", help="maximal format version")
    p.add_argument(
        "--digest-store", type=Path, metavar="DIR", help="store file contents in this directory"
    )
    p.add_argument("--print-digest", action="store_true", help="print the image's digest")
    p.add_argument(
        "--print-digest-only",
        action="store_true",
        help="print the image's digest, do not write the image",
    )
    p.add_argument("--from-file", action="store_true", help="SOURCE is a dumpfile ('-': stdin)")
    p.add_argument("--use-epoch", action="store_true", help="make all mtimes zero")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("image", metavar="IMAGE", nargs="?", help="output file ('-': stdout)")
    p.set_defaults(func=run)


def _version(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid version {text!r}") from None


def versions(min_version: int | None, max_version: int | None) -> tuple[int, int]:
    """mkcomposefs's defaults: 0..1, but once either is given the other defaults to 0."""
    if min_version is None and max_version is None:
        return 0, 1
    lo = min_version or 0
    hi = max_version or 0
    return lo, max(lo, hi)


def run(args: argparse.Namespace) -> int:
    # Imported here so that `cfsboot --help` stays fast.
    from cfsboot.composefs.erofs.writer import build_image

    if not args.source:
        die("empty source path")
    if args.print_digest_only and args.image is not None:
        die("cannot give IMAGE with --print-digest-only")
    if not args.print_digest_only and args.image is None:
        die("no IMAGE given", hint="give an output path, '-' for stdout, or --print-digest-only")
    if args.image == "-" and sys.stdout.isatty():
        die("stdout is a terminal; refusing to write an image to it")
    lo, hi = versions(args.min_version, args.max_version)
    if hi > 1:
        die(f"unsupported format version {hi} (this writer knows 0 and 1)")
    # A short-lived process that builds one big acyclic tree: the cyclic garbage collector
    # would only rescan it over and over (about 20% of the run time on 100k entries).
    gc.disable()

    root, link_paths = _load(args)
    try:
        image = build_image(root, min_version=lo, max_version=hi, link_paths=link_paths)
    except ValueError as e:
        die(f"cannot build image: {e}")

    if not args.print_digest_only:
        if args.image == "-":
            sys.stdout.buffer.write(image)
            sys.stdout.buffer.flush()
        else:
            from cfsboot.linux.fsutil import write_file_atomic

            write_file_atomic(args.image, image)
    if args.print_digest or args.print_digest_only:
        from cfsboot.composefs.fsverity import digest_bytes

        sys.stdout.write(digest_bytes(image).hex() + "\n")
    # Done, and the image is durable: end the process here. Letting Python free the tree
    # and the image object by object would add a tenth to the run on a 100k-entry tree.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _load(args: argparse.Namespace) -> tuple[Inode, list[bytes]]:
    """The tree, and the paths of the dumpfile's '@' lines (where C places hardlinks)."""
    if args.from_file:
        from cfsboot.composefs.dumpfile import parse_links

        if args.source == "-":
            data = sys.stdin.buffer.read()
        else:
            try:
                data = Path(args.source).read_bytes()
            except OSError as e:
                die(f"cannot read {args.source}: {e.strerror}")
        return parse_links(data)
    from cfsboot.composefs.srctree import tree_from_directory

    src = Path(args.source)
    if not src.is_dir():
        die(f"{src} is not a directory", hint="use --from-file for a dumpfile")
    root: Inode = tree_from_directory(src, digest_store=args.digest_store, use_epoch=args.use_epoch)
    return root, []
