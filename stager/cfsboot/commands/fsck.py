"""`cfsboot fsck [--repair] [--json] [--sysroot DIR | --repo DIR]`: check; repair what is safe."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cfsboot.commands.common import sysroot_options
from cfsboot.errors import CfsbootError, die
from setuproot.contract import DEFAULT_SYSROOT

DESCRIPTION = """\
Check the composefs repository (every object's content against its name, fs-verity
in a secure repository, images, links, tags, import records, leftovers), the
deployments (origin, image, /etc, var, the staged marker) and the ESP (the boot
loader, entries, their kernels, initrds and UKIs, the default entry). One line per
problem.
Exit code: 0 no problems, 1 problems, 2 something could not be checked.
"""

NOT_CHECKED = 2  # cfsboot.deploy.fsck.report.ExitCode.NOT_CHECKED


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fsck",
        help="check the repository, the deployments and the ESP; repair what is safe",
        description=DESCRIPTION,
    )
    sysroot_options(p)
    p.add_argument(
        "--repo",
        type=Path,
        metavar="DIR",
        help="check this repository alone (no deployments, no ESP)",
    )
    p.add_argument(
        "--repair",
        action="store_true",
        help="fix what is safe (leftovers, dangling entries, fs-verity, damaged objects fetched"
        " again from their image's origin); never the booted deployment",
    )
    p.add_argument("--json", action="store_true", help="the report as JSON, for scripts")
    p.set_defaults(func=cmd_fsck)


def cmd_fsck(args: argparse.Namespace) -> int:
    from cfsboot.deploy.fsck.report import human, to_json
    from cfsboot.deploy.fsck.run import fsck_repository, fsck_sysroot

    if args.repo is not None and (
        args.sysroot != DEFAULT_SYSROOT or args.esp is not None or args.run_dir is not None
    ):
        die("--repo checks a repository alone: it takes no --sysroot, --esp or --run-dir",
            exit_code=NOT_CHECKED)  # fmt: skip
    try:
        if args.repo is not None:
            report = fsck_repository(args.repo, do_repair=args.repair)
        else:
            report = fsck_sysroot(
                Path(args.sysroot), esp=args.esp, run_dir=args.run_dir, do_repair=args.repair
            )
    except CfsbootError as e:
        raise CfsbootError(e.message, hint=e.hint, exit_code=NOT_CHECKED) from None
    if args.json:
        sys.stdout.write(json.dumps(to_json(report), indent=2) + "\n")
    else:
        sys.stdout.write(human(report))
    return int(report.exit_code)
