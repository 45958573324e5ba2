"""`cfsboot repo init`: create a composefs repository."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cfsboot.commands.common import hash_alg
from setuproot.contract import HashAlg


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "repo",
        help="manage a composefs repository",
        description="Manage a composefs repository (objects, images, streams, tags).",
    )
    cmds = p.add_subparsers(dest="repo_command", metavar="COMMAND", parser_class=type(p))
    cmds.required = True

    i = cmds.add_parser(
        "init",
        help="create a repository",
        description="Create a composefs repository (meta.json, objects/, images/, streams/)."
        " An existing repository with the same algorithm is left as it is.",
    )
    i.add_argument("dir", type=Path, metavar="DIR")
    i.add_argument(
        "--hash",
        type=hash_alg,
        default=HashAlg.SHA512,
        metavar="ALG",
        help="fs-verity digest algorithm: sha512 (default) or sha256",
    )
    i.add_argument(
        "--insecure",
        action="store_true",
        help="do not enable fs-verity on meta.json (objects are then not verified at boot)",
    )
    i.set_defaults(func=init)


def init(args: argparse.Namespace) -> int:
    from cfsboot.composefs.repository import Repository

    repo = Repository.init(args.dir, algorithm=args.hash, insecure=args.insecure)
    mode = "insecure: without fs-verity" if repo.insecure else "secure: with fs-verity"
    sys.stdout.write(f"composefs repository {repo.path} ({repo.algorithm.repo_name}, {mode})\n")
    return 0
