"""`cfsboot usr-overlay`: a transient writable overlay on /usr (bootc's `usr-overlay`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cfsboot.errors import die

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "usr-overlay",
        aliases=["usroverlay"],
        help="a transient writable overlay on /usr, to debug; it goes at the next boot",
    )
    p.add_argument(
        "--read-only",
        action="store_true",
        help="mount it read-only (`mount -o remount,rw /usr` makes it writable later)",
    )
    p.add_argument(
        "--root",
        type=Path,
        default=Path("/"),
        help="the root whose /usr gets it (default /, a running cfsboot system; another"
        " root, for tests and chroots, is not checked)",
    )
    p.set_defaults(func=cmd_usr_overlay)


def cmd_usr_overlay(args: argparse.Namespace) -> int:
    from cfsboot.deploy.sysroot import running_deployment
    from cfsboot.deploy.usroverlay import mount_usr_overlay

    root: Path = args.root
    if os.path.realpath(root) == "/" and running_deployment() is None:
        die(
            "/ is not a composefs root that cfsboot booted: its /usr is not the image's",
            hint="usr-overlay is for a running cfsboot system (--root DIR names another root)",
        )
    sys.stderr.write(f"{mount_usr_overlay(root / 'usr', read_only=args.read_only)}\n")
    return 0
