"""`cfsboot bless|health-check|assess-boot`: boot assessment, run by cfsboot's units at boot."""

from __future__ import annotations

import argparse
import sys

from cfsboot.commands.common import opened, sysroot_options

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]


def register(sub: Subparsers) -> None:
    q = sub.add_parser(
        "bless",
        help="end the booted deployment's boot trial (after boot-complete.target)",
    )
    sysroot_options(q)
    q.add_argument(
        "--deployment",
        metavar="ID",
        help="end this deployment's trial instead of the booted one's (e.g. on a disk image)",
    )
    q.set_defaults(func=cmd_bless)

    q = sub.add_parser(
        "health-check",
        help="run the health checks in /usr/lib/cfsboot/health.d and /etc/cfsboot/health.d",
    )
    q.set_defaults(func=cmd_health_check)

    q = sub.add_parser(
        "assess-boot",
        help="after boot-complete.target: record a failed boot and reboot a deployment on trial",
    )
    sysroot_options(q)
    q.add_argument("--no-reboot", action="store_true", help="only record and report")
    q.set_defaults(func=cmd_assess_boot)


def cmd_bless(args: argparse.Namespace) -> int:
    from cfsboot.deploy.assessment import bless

    with opened(args) as (sysroot, bl):
        sys.stderr.write(f"{bless(sysroot, bl, deployment=args.deployment)}\n")
    return 0


def cmd_health_check(args: argparse.Namespace) -> int:
    from cfsboot.deploy import health

    checks = health.find_checks()
    results = health.run_checks(checks)
    health.write_results(results)
    for r in results:
        sys.stderr.write(f"health check {r.describe()}\n" if not r.ok else "")
    failed = [r for r in results if not r.ok]
    sys.stderr.write(f"{len(results) - len(failed)} of {len(results)} health checks passed\n")
    return 1 if failed else 0


def cmd_assess_boot(args: argparse.Namespace) -> int:
    from cfsboot.deploy import assessment

    reached = assessment.boot_complete_reached()
    failures = [] if reached else assessment.failed_requirements()
    with opened(args) as (sysroot, bl):
        cfg = assessment.running_config()
        reboot, message = assessment.assess(sysroot, bl, cfg, reached=reached, failures=failures)
    sys.stderr.write(f"cfsboot: {message}\n")
    if reboot and not args.no_reboot:
        assessment.reboot()
        return 0
    return 0 if reached else 1
