"""`cfsboot diff|pin|unpin`: what an update changes, and deployments kept whatever else goes."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import TYPE_CHECKING

from cfsboot.commands.common import opened, sysroot_options

if TYPE_CHECKING:
    from cfsboot.boot.bootloader import Bootloader
    from cfsboot.deploy.diff import Side
    from cfsboot.deploy.sysroot import Sysroot

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

_DEPLOYMENT_RE = re.compile(r"[0-9a-fA-F]{4,128}|booted|staged|rollback")


def register(sub: Subparsers) -> None:
    q = sub.add_parser(
        "diff",
        help="files, Debian packages, kernel and kernel arguments that differ between two"
        " deployments, or a deployment and an image (stages nothing)",
    )
    sysroot_options(q)
    q.add_argument(
        "ids",
        nargs="+",
        metavar="[FROM] TO",
        help="FROM: a deployment (booted, staged, rollback, or an ID or its prefix; default"
        " booted); TO: a deployment or an image reference (imported, not staged)",
    )
    q.add_argument("--json", action="store_true", help="as JSON")
    q.add_argument("--arch", help="of a multi-arch image TO (default: this machine's)")
    q.set_defaults(func=cmd_diff)

    for name, help_text in (
        ("pin", "keep a deployment in the boot menu and from gc"),
        ("unpin", "let gc and new deployments drop a pinned deployment again"),
    ):
        q = sub.add_parser(name, help=help_text)
        sysroot_options(q)
        q.add_argument("id", metavar="ID", help="booted, staged, rollback, or an ID or its prefix")
        q.set_defaults(func=cmd_pin if name == "pin" else cmd_unpin)


def _deployment_side(sysroot: Sysroot, bl: Bootloader, ident: str) -> Side:
    from cfsboot.deploy.diff import deployment_side
    from cfsboot.deploy.pins import resolve

    depl = resolve(sysroot, bl, ident)
    label = f"{ident} ({depl[:12]}…)" if not depl.startswith(ident.lower()) else depl[:12] + "…"
    origin = sysroot.origin(depl) if sysroot.deploy_dir(depl).is_dir() else None
    if origin is not None:
        label += f" {origin.image}"
    return deployment_side(sysroot, bl, depl, f"deployment {label}")


def cmd_diff(args: argparse.Namespace) -> int:
    from cfsboot.deploy.diff import diff, image_side
    from cfsboot.deploy.updates import import_untagged
    from cfsboot.errors import die
    from cfsboot.oci.reference import canonical, switch_reference

    if len(args.ids) > 2:
        die("diff takes at most two arguments: [FROM] TO")
    old_id, new_id = args.ids if len(args.ids) == 2 else ("booted", args.ids[0])
    if not _DEPLOYMENT_RE.fullmatch(old_id):
        die(f"FROM must be a deployment, not {old_id!r}", hint="an image goes in TO")
    # Importing an image writes the repository: take its lock then, not otherwise.
    is_image = not _DEPLOYMENT_RE.fullmatch(new_id)
    with opened(args, write=is_image) as (sysroot, bl):
        old = _deployment_side(sysroot, bl, old_id)
        if is_image:
            ref = canonical(switch_reference(new_id))
            quiet = args.json or not sys.stderr.isatty()
            digest, _, _ = import_untagged(sysroot, ref, arch=args.arch, quiet=quiet)
            new = image_side(sysroot, bl, digest, ref, old)
        else:
            new = _deployment_side(sysroot, bl, new_id)
        changes = diff(sysroot, old, new)
    if args.json:
        print(json.dumps(changes.to_json(), indent=2))
    else:
        sys.stdout.write(changes.human())
    return 0


def cmd_pin(args: argparse.Namespace) -> int:
    from cfsboot.deploy.pins import pin

    with opened(args) as (sysroot, bl):
        sys.stderr.write(f"{pin(sysroot, bl, args.id)}\n")
    return 0


def cmd_unpin(args: argparse.Namespace) -> int:
    from cfsboot.deploy.pins import unpin

    with opened(args) as (sysroot, bl):
        sys.stderr.write(f"{unpin(sysroot, bl, args.id)}\n")
    return 0
