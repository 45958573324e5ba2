"""`cfsboot container lint|compute-digest|ukify`, run inside an image build (`bootc container`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cfsboot.errors import die
from setuproot.contract import HashAlg, KargStyle


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("container", help="check and seal a bootable image while it is built")
    csub = p.add_subparsers(dest="container_command", metavar="SUBCOMMAND", parser_class=type(p))
    csub.required = True

    def root(q: argparse.ArgumentParser, *aliases: str) -> None:
        q.add_argument(
            "--root",
            *aliases,
            dest="root",
            type=Path,
            default=Path("/"),
            help="the image's root directory (default /; in a build, a bind mount of the"
            " finished stage is exact: RUN --mount=type=bind,from=STAGE,target=/target)",
        )

    def hash_(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--hash",
            choices=[a.value for a in HashAlg],
            default="sha512",
            help="fs-verity algorithm of the repository the image will live in (default sha512)",
        )

    q = csub.add_parser("lint", help="check that the image can boot with cfsboot")
    root(q, "--rootfs")  # bootc's name
    q.add_argument("--json", action="store_true", help="the findings as a JSON list")
    q.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="CHECK",
        help="leave a check out (repeatable)",
    )
    # bootc's other lint flags
    q.add_argument("--fatal-warnings", action="store_true", help="exit 1 on warnings too")
    q.add_argument("--list", action="store_true", help="print the checks' names and exit")
    q.add_argument(
        "--no-truncate",
        action="store_true",
        help="accepted for bootc, changes nothing: every finding is printed",
    )
    q.set_defaults(func=cmd_lint)

    q = csub.add_parser(
        "compute-digest", help="print the composefs= digest `cfsboot image import` will compute"
    )
    root(q)
    hash_(q)
    q.set_defaults(func=cmd_compute_digest)

    q = csub.add_parser(
        "ukify", help="build a UKI sealing the image's kernel, initramfs and composefs= digest"
    )
    root(q)
    hash_(q)
    q.add_argument(
        "--output",
        type=Path,
        help="where to write the UKI (default /boot/EFI/Linux/ID-VERSION-KVER.efi)",
    )
    q.add_argument(
        "--karg",
        action="append",
        default=[],
        metavar="ARG",
        help="a kernel argument after the image's kargs.d ones (repeatable)",
    )
    q.add_argument(
        "--karg-style",
        choices=[s.value for s in KargStyle],
        default=KargStyle.COMPOSEFS.value,
        help="composefs=HEX (bootc's, the default) or composefs.digest=v1-ALG-12:HEX",
    )
    q.set_defaults(func=cmd_ukify)


def cmd_lint(args: argparse.Namespace) -> int:
    from cfsboot.image.lint import CHECKS, Level, lint

    if args.list:
        print("\n".join(CHECKS))
        return 0
    unknown = sorted(set(args.skip) - set(CHECKS))
    if unknown:
        die(f"no lint check {unknown[0]!r}", hint=f"checks: {', '.join(CHECKS)}")
    if not args.root.is_dir():
        die(f"{args.root} is not a directory")
    findings = lint(args.root, skip=tuple(args.skip))
    if args.json:
        print(json.dumps([f.to_json() for f in findings], indent=2))
    else:
        for f in findings:
            print(f.line())
    fatal = (Level.ERROR, Level.WARNING) if args.fatal_warnings else (Level.ERROR,)
    return 1 if any(f.level in fatal for f in findings) else 0


def cmd_compute_digest(args: argparse.Namespace) -> int:
    from cfsboot.image.rootdigest import compute_digest

    if not args.root.is_dir():
        die(f"{args.root} is not a directory")
    print(compute_digest(args.root, alg=HashAlg(args.hash)).digest)
    return 0


def cmd_ukify(args: argparse.Namespace) -> int:
    from cfsboot.boot.ukify import build_uki, default_output, uki_inputs
    from cfsboot.image.rootdigest import compute_digest

    if not args.root.is_dir():
        die(f"{args.root} is not a directory")
    digest = compute_digest(args.root, alg=HashAlg(args.hash)).digest
    inputs = uki_inputs(args.root, digest, args.karg, style=KargStyle(args.karg_style))
    output = args.output or default_output(args.root, inputs.kver)
    print(build_uki(inputs, output, digest))
    return 0
