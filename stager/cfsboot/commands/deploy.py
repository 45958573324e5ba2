"""`cfsboot switch|upgrade|finalize-staged|rollback|status|gc`: the deployment lifecycle."""

from __future__ import annotations

import argparse
import json
import sys

from cfsboot.commands.common import (
    boot_tries_option,
    count,
    karg_options,
    karg_style,
    opened,
    refuse_unmanaged,
    sysroot_options,
    warn_boot_override,
)
from cfsboot.errors import die

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.boot.bootloader import Bootloader
    from cfsboot.deploy.sysroot import Sysroot

    Subparsers = argparse._SubParsersAction[argparse.ArgumentParser]

# The deployment modules are imported by the commands that use them: every
# `cfsboot` run builds this parser, and most runs need none of them.
# cfsboot.oci.reference.SWITCH_TRANSPORTS: bootc's --transport names.
TRANSPORTS = (
    "registry",
    "oci",
    "oci-archive",
    "docker-archive",
    "containers-storage",
    "docker-daemon",
    "dir",
)
STATUS_FORMATS = ("human", "humanreadable", "yaml", "json")  # humanreadable: bootc's name
# upgrade's exit code when the registry cannot be reached (sysexits.h EX_TEMPFAIL; the
# update timer's unit counts it a success): cfsboot.oci.network says why.
OFFLINE = 75


def register(sub: Subparsers) -> None:
    _register_switch_upgrade(sub)
    _register_lifecycle(sub)


def _register_switch_upgrade(sub: Subparsers) -> None:
    for name, help_text in (
        ("switch", "stage another image to boot next"),
        ("upgrade", "stage the newest version of the booted image"),
    ):
        q = sub.add_parser(name, help=help_text, aliases=["update"] if name == "upgrade" else [])
        if name == "switch":
            q.add_argument(
                "imgref",
                nargs="?",
                metavar="IMGREF",
                help="TRANSPORT:DETAILS (oci:DIR[:TAG], docker://NAME, ...); a bare NAME[:TAG] is"
                " a registry image, as in bootc",
            )
            q.add_argument(
                "--transport",
                choices=TRANSPORTS,
                help="bootc's: IMGREF is then the image without a transport (registry: NAME[:TAG])",
            )
            q.add_argument(
                "--retain",
                action="store_true",
                help="accepted for bootc, changes nothing: bootc drops an ostree ref of the"
                " booted deployment without it, and cfsboot deployments have none (the booted"
                " one stays as the rollback until gc)",
            )
        sysroot_options(q)
        karg_options(q)
        q.add_argument(
            "--apply", action="store_true", help="reboot when a deployment is staged to boot"
        )
        soft_reboot_option(q)
        what = q.add_mutually_exclusive_group()
        what.add_argument(
            "--download-only",
            action="store_true",
            help="stage it, but do not finalize it at shutdown",
        )
        what.add_argument(
            "--from-downloaded",
            action="store_true",
            help="let the download-only staged deployment boot next (fetches nothing)",
        )
        if name == "upgrade":
            what.add_argument(
                "--check",
                action="store_true",
                help="only say whether there is an update and what it changes (exit 0: there"
                " is one, 77: none; fetches its new layers, stages nothing)",
            )
            q.add_argument(
                "--tag",
                help="another tag of the image followed (bootc's): it is followed from then on",
            )
        q.add_argument("--arch", help="from a multi-arch image (default: this machine's)")
        boot_tries_option(q, "default: boot-assessment.toml, else 3")
        q.add_argument("--quiet", "-q", action="store_true")
        q.set_defaults(func=cmd_switch if name == "switch" else cmd_upgrade)


def _register_lifecycle(sub: Subparsers) -> None:
    q = sub.add_parser("finalize-staged", help="make the staged deployment the default (shutdown)")
    sysroot_options(q)
    q.set_defaults(func=cmd_finalize)

    q = sub.add_parser("rollback", help="make the previous deployment the default")
    sysroot_options(q)
    q.add_argument("--apply", action="store_true", help="reboot when done")
    soft_reboot_option(q)
    q.set_defaults(func=cmd_rollback)

    q = sub.add_parser("status", help="show the deployments")
    sysroot_options(q)
    fmt = q.add_mutually_exclusive_group()
    fmt.add_argument(
        "--format",
        choices=STATUS_FORMATS,
        help="bootc's BootcHost as YAML or JSON, or for people (default: human on a"
        " terminal, else YAML)",
    )
    fmt.add_argument("--json", action="store_true", help="--format json")
    fmt.add_argument("--yaml", action="store_true", help="--format yaml")
    q.add_argument(
        "--format-version",
        type=int,
        metavar="N",
        help="the document's version: 0 and 1 both mean bootc's v1, the only one",
    )
    q.add_argument("--booted", action="store_true", help="only the booted deployment")
    q.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="human output adds soft-reboot, fs-verity and download-only rows",
    )
    q.set_defaults(func=cmd_status)

    q = sub.add_parser("gc", help="remove deployments and data nothing needs")
    sysroot_options(q)
    q.add_argument("--dry-run", action="store_true", help="only say what would go")
    q.add_argument("--keep", type=count, default=0, help="keep this many more older deployments")
    q.set_defaults(func=cmd_gc)


def soft_reboot_option(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--soft-reboot",
        choices=("required", "auto"),
        metavar="MODE",
        help="reboot userspace only (systemd's soft reboot into /run/nextroot) when the next"
        " deployment runs the booted kernel with the same kernel arguments; implies --apply."
        " required: fail when it cannot, auto: reboot fully then",
    )


def _soft_reboot(
    args: argparse.Namespace, sysroot: Sysroot, bl: Bootloader, *, staged: bool
) -> None:
    """--soft-reboot, under the repository lock: when something is to boot next."""
    from cfsboot.deploy.softreboot import SoftRebootMode, soft_reboot

    if staged:
        marker = sysroot.staged()
        if marker is None or marker.finalization_locked:
            return
    mode = SoftRebootMode(args.soft_reboot)

    def say(line: str) -> None:
        sys.stderr.write(f"{line}\n")
        sys.stderr.flush()

    soft_reboot(sysroot, bl, mode, staged=staged, say=say)


def _check_running(args: argparse.Namespace, sysroot: Sysroot) -> None:
    """--apply and --soft-reboot restart the running system: refused, before anything is
    staged, on a root given with --sysroot that is not the one running (they would
    reboot the machine the command runs on, not the disk)."""
    if sysroot.live:
        return
    for flag, given in (("--soft-reboot", args.soft_reboot is not None), ("--apply", args.apply)):
        if given:
            die(
                f"{flag} restarts the running system, and {sysroot.path} is not its physical root",
                hint=f"leave out {flag}: the deployment boots when that root's machine boots next",
            )


def _reboot(apply: bool) -> None:
    if apply:
        from cfsboot.linux.run import run

        run(["systemctl", "reboot"])


def _reboot_if_staged(apply: bool, sysroot: Sysroot) -> None:
    """--apply of switch and upgrade: reboot when something is staged to boot next."""
    marker = sysroot.staged()
    _reboot(apply and marker is not None and not marker.finalization_locked)


# -- switch / upgrade --------------------------------------------------------------------


def _stage(
    args: argparse.Namespace, sysroot: Sysroot, bl: Bootloader, imgref: str, *, switching: bool
) -> int:
    from cfsboot.deploy.stage import stage
    from cfsboot.deploy.target import import_target

    target = import_target(
        sysroot, imgref, quiet=args.quiet or not sys.stderr.isatty(), arch=args.arch
    )
    result = stage(
        sysroot,
        bl,
        target,
        extra_kargs=args.karg,
        karg_delete=args.karg_delete,
        download_only=args.download_only,
        boot_tries=args.boot_tries,
        retry_failed=args.command == "switch",
        switching=switching,
        karg_style=karg_style(args),
    )
    sys.stderr.write(f"{result.message}\n")
    from cfsboot.deploy.updatecache import forget_staged

    forget_staged(sysroot, target.manifest_digest)  # what `upgrade --check` found is here
    if not result.staged:
        _warn_unused_entry_flags(args)
    print(result.digest)
    warn_boot_override(sysroot, bl)
    return 0


def _warn_unused_entry_flags(args: argparse.Namespace) -> None:
    """The new entry's flags, when no new entry was written: say they did nothing."""
    given = [
        flag
        for flag, value in (
            ("--karg", args.karg),
            ("--karg-delete", args.karg_delete),
            ("--karg-style", karg_style(args)),
            ("--boot-tries", args.boot_tries),
        )
        if value not in (None, [])
    ]
    if given:
        from cfsboot.linux.lazylog import getLogger

        getLogger(__name__).warning(
            "%s: nothing new was staged, so no boot entry changed (%s to a new deployment only)",
            ", ".join(given),
            "it applies" if len(given) == 1 else "they apply",
        )


def _check_boot_flags(args: argparse.Namespace) -> None:
    """--soft-reboot and --apply need something to boot: bootc refuses them with --check
    and --download-only too (cfsboot's switch has --download-only as well)."""
    if args.download_only:
        other = "--download-only"
    elif getattr(args, "check", False):
        other = "--check"
    else:
        return
    for flag, given in (("--soft-reboot", args.soft_reboot is not None), ("--apply", args.apply)):
        if given:
            die(f"{flag} and {other} do not go together: the latter boots nothing")


def cmd_switch(args: argparse.Namespace) -> int:
    from cfsboot.boot.kargs import check_karg_deletes
    from cfsboot.oci.reference import canonical, switch_reference

    check_karg_deletes(args.karg_delete)
    _check_boot_flags(args)
    if args.from_downloaded:
        if args.imgref is not None:
            die("switch --from-downloaded takes no IMGREF: it fetches nothing")
        return cmd_upgrade(args)
    if args.imgref is None:
        die("switch needs an IMGREF (or --from-downloaded)", hint="see cfsboot switch --help")
    imgref = canonical(switch_reference(args.imgref, args.transport))
    with opened(args) as (sysroot, bl):
        refuse_unmanaged("switch", sysroot)
        _check_running(args, sysroot)
        following = _following(sysroot, bl)
        if following is not None and following[1] == imgref:
            # bootc: the same reference is no change (nothing is fetched); what it
            # names now is `upgrade`'s to fetch.
            sys.stderr.write(
                f"image specification is unchanged: {imgref} is what deployment"
                f" {following[0][:12]}… follows; `cfsboot upgrade` fetches a newer version of it\n"
            )
            _warn_unused_entry_flags(args)
            rc = 0
        else:
            rc = _stage(args, sysroot, bl, imgref, switching=True)
        if args.soft_reboot is not None:
            _soft_reboot(args, sysroot, bl, staged=True)
            return rc
    _reboot_if_staged(args.apply, sysroot)
    return rc


def _following(sysroot: Sysroot, bl: Bootloader) -> tuple[str, str] | None:
    """The deployment upgrade starts from (staged, else booted) and the reference it follows."""
    from cfsboot.deploy.target import current_deployment

    staged = sysroot.staged()
    # A marker whose staged menu or state is gone (a crash) stages nothing: not followed.
    if staged is not None and not (bl.has_staged() and sysroot.deploy_dir(staged.depl_id).is_dir()):
        staged = None
    for depl in (staged.depl_id if staged else None, current_deployment(sysroot, bl)):
        if depl is None:
            continue
        origin = sysroot.origin(depl)
        if origin is not None:
            return depl, origin.image
    return None


def _followed(sysroot: Sysroot, bl: Bootloader) -> tuple[str, str]:
    following = _following(sysroot, bl)
    if following is None:
        die("the booted deployment has no origin (image reference) to upgrade from",
            hint="use cfsboot switch IMGREF")  # fmt: skip
    return following


def _check(
    args: argparse.Namespace, sysroot: Sysroot, bl: Bootloader, depl: str, imgref: str
) -> int:
    """upgrade --check: 0 an update, 77 none (cfsboot.deploy.updates), its changes on stdout."""
    from cfsboot.deploy import updates

    quiet = args.quiet or not sys.stderr.isatty()
    result = updates.check(sysroot, bl, depl, imgref, arch=args.arch, quiet=quiet)
    found = result.found
    if result.failed is not None:
        digest, tries = result.failed
        print(
            f"no update: {imgref} names deployment {digest[:12]}…, which failed its boot"
            f" assessment ({tries} tries): upgrade does not stage it again; `cfsboot switch`"
            " to it retries it"
        )
        return updates.NO_UPDATE
    if result.diff is None:
        short = found.config_digest[:19] + "…"
        print(f"no update: {imgref} still names the deployed image (config {short})")
        return updates.NO_UPDATE
    version = f" (version {found.version})" if found.version else ""
    print(f"update available: {imgref}{version}")
    print(f"  config {found.config_digest}")
    if found.current_config_digest is None:
        print(f"  (deployment {depl[:12]}… has no config on record to compare with)")
    sys.stdout.write(result.diff.human(files=False))
    return 0


def _offline(imgref: str) -> bool:
    """Say so when the registry of `imgref` has no route (the timer's case): no skopeo timeout."""
    from cfsboot.oci.network import offline_reason
    from cfsboot.oci.reference import parse

    reason = offline_reason(parse(imgref))
    if reason is not None:
        sys.stderr.write(f"cfsboot: {reason}\n")
    return reason is not None


def cmd_upgrade(args: argparse.Namespace) -> int:
    from cfsboot.boot.kargs import check_karg_deletes
    from cfsboot.deploy.stage import unlock_staged
    from cfsboot.oci.reference import parse, with_tag

    if getattr(args, "tag", None) is not None and args.from_downloaded:
        die("--tag and --from-downloaded do not go together: the latter fetches nothing")
    check_karg_deletes(args.karg_delete)
    _check_boot_flags(args)
    with opened(args) as (sysroot, bl):
        if not getattr(args, "check", False):  # a check stages nothing
            refuse_unmanaged(args.command, sysroot)
        _check_running(args, sysroot)
        if args.from_downloaded:
            sys.stderr.write(f"{unlock_staged(sysroot, bl)}\n")
            warn_boot_override(sysroot, bl)
            rc = 0
        else:
            depl, imgref = _followed(sysroot, bl)
            if args.tag is not None:
                imgref = str(with_tag(parse(imgref), args.tag))
            if _offline(imgref):
                return OFFLINE
            if args.check:
                return _check(args, sysroot, bl, depl, imgref)
            rc = _stage(args, sysroot, bl, imgref, switching=False)
        if args.soft_reboot is not None:
            _soft_reboot(args, sysroot, bl, staged=True)
            return rc
    _reboot_if_staged(args.apply, sysroot)
    return rc


# -- finalize / rollback -----------------------------------------------------------------


def cmd_finalize(args: argparse.Namespace) -> int:
    from cfsboot.deploy.stage import finalize
    from cfsboot.deploy.sysroot import Sysroot

    sysroot = Sysroot(args.sysroot, run_dir=args.run_dir)
    staged = sysroot.staged()
    if staged is None:
        import logging

        logging.getLogger(__name__).info("no staged deployment")
        return 0
    sys.stderr.write(f"finalizing the staged deployment {staged.depl_id[:12]}…\n")
    sys.stderr.flush()
    with opened(args) as (sysroot, bl):
        msg = finalize(sysroot, bl)
        sys.stderr.write(f"{msg}\n")
        warn_boot_override(sysroot, bl)
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from cfsboot.deploy.stage import rollback

    with opened(args) as (sysroot, bl):
        refuse_unmanaged("rollback", sysroot)
        _check_running(args, sysroot)
        msg = rollback(sysroot, bl)
        sys.stderr.write(f"{msg}\n")
        warn_boot_override(sysroot, bl)
        if args.soft_reboot is not None:
            _soft_reboot(args, sysroot, bl, staged=False)
            return 0
    _reboot(args.apply)
    return 0


# -- status / gc -------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from cfsboot.deploy import status, statusformat
    from cfsboot.deploy.fsck.quick import warn_problems

    if args.format_version not in (None, 0, 1):
        die(
            f"unsupported format version {args.format_version}",
            hint="0 and 1 both mean bootc's v1, the only version there is",
        )
    with opened(args, write=False) as (sysroot, bl):
        warn_problems(sysroot, bl)  # a broken state is reported, not tripped on
        doc = status.host_status(sysroot, bl)
    if args.booted:
        doc = statusformat.only_booted(doc)
    fmt = args.format or ("json" if args.json else "yaml" if args.yaml else None)
    if fmt is None:
        fmt = "human" if sys.stdout.isatty() else "yaml"
    if fmt == "json":
        print(json.dumps(doc, indent=2))
    elif fmt == "yaml":
        print(statusformat.to_yaml(doc))
    else:
        sys.stdout.write(statusformat.human(doc, verbose=args.verbose))
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    from cfsboot.deploy import gc
    from cfsboot.deploy.fsck.quick import warn_problems

    with opened(args) as (sysroot, bl):
        warn_problems(sysroot, bl)
        report = gc.collect(sysroot, bl, keep=args.keep, dry_run=args.dry_run)
    print(report.summary(dry_run=args.dry_run))
    return 0
