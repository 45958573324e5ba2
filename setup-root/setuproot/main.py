"""Command line of setup-root: `cfsboot-setup-root [--sysroot DIR] [--cmdline STR] ...`.

Under the initrd unit stderr goes to the journal and the console, so every
failure is exactly one line there (no traceback) and a distinct exit code;
CFSBOOT_DEBUG=1 shows the traceback as well.
"""

from __future__ import annotations

import os
import sys

from setuproot.config import ConfigError, load_config, resolve_etc
from setuproot.contract import (
    DEFAULT_SYSROOT,
    IMAGES_DIR,
    OSTREE_PREPARE_ROOT_CONFIG,
    REPO_DIR,
    SETUP_ROOT_CONFIG,
    ComposefsKarg,
    KargError,
    deploy_dir,
    image_path,
    parse_cmdline,
)
from setuproot.mount import ExitCode, SetupError, Tweaks, execute
from setuproot.plan import make_plan
from setuproot.record import record

PROG = "cfsboot-setup-root"


USAGE = f"""usage: {PROG} [--sysroot DIR] [--cmdline STRING] [--config FILE] [--dry-run]

Mount the composefs image named by the composefs= kernel argument as the new
root at DIR, for systemd to switch into.

  --sysroot DIR      the physical root (default {DEFAULT_SYSROOT})
  --cmdline STRING   use this kernel command line instead of /proc/cmdline
  --config FILE      config file (default {SETUP_ROOT_CONFIG},
                     else {OSTREE_PREPARE_ROOT_CONFIG})
  --dry-run          print the mount plan and exit
"""


@record
class Args:
    sysroot: str = DEFAULT_SYSROOT
    cmdline: str | None = None
    config: str | None = None
    dry_run: bool = False
    help: bool = False
    # For the host tests: take the old-kernel paths on a new kernel.
    force_loop: bool = False
    force_lowerdir_string: bool = False


_VALUED = {"--sysroot": "sysroot", "--cmdline": "cmdline", "--config": "config"}
_FLAGS = {
    "--dry-run": "dry_run",
    "--help": "help",
    "-h": "help",
    "--force-loop": "force_loop",
    "--force-lowerdir-string": "force_lowerdir_string",
}


def parse_args(argv: list[str]) -> Args:
    """The few options there are; argparse would cost a tenth of our start-up time."""
    values: dict[str, str | bool] = {}
    it = iter(argv)
    for arg in it:
        name, eq, inline = arg.partition("=")
        if name in _VALUED:
            value = inline if eq else next(it, None)
            if value is None:
                raise SetupError(f"option {name} needs a value (see --help)", ExitCode.USAGE)
            values[_VALUED[name]] = value
        elif arg in _FLAGS:
            values[_FLAGS[arg]] = True
        else:
            raise SetupError(f"unrecognized argument: {arg} (see --help)", ExitCode.USAGE)
    return Args(**values)  # type: ignore[arg-type]


def choose_karg(sysroot: str, kargs: list[ComposefsKarg]) -> ComposefsKarg:
    """The first karg whose image the repository has (a UKI may carry several digests)."""
    if not kargs:
        raise SetupError(
            "no composefs= or composefs.digest= kernel argument: nothing to mount",
            ExitCode.USAGE,
        )
    for k in kargs:
        if os.path.lexists(os.path.join(sysroot, image_path(k.digest))):
            return k
    if len(kargs) > 1 and os.path.isdir(os.path.join(sysroot, REPO_DIR, IMAGES_DIR)):
        names = ", ".join(f"{k.digest[:12]}…" for k in kargs)
        raise SetupError(
            f"none of the {len(kargs)} composefs images the kernel command line names"
            f" ({names}) is in {os.path.join(sysroot, REPO_DIR, IMAGES_DIR)}",
            ExitCode.IMAGE_MISSING,
        )
    # One karg (or no repository): mounting it says exactly what is missing.
    return kargs[0]


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.help:
        sys.stdout.write(USAGE)
        return ExitCode.OK
    if args.cmdline is None:
        try:
            with open("/proc/cmdline") as f:
                cmdline = f.read()
        except OSError as e:
            raise SetupError(f"cannot read /proc/cmdline: {e.strerror}", ExitCode.USAGE) from None
    else:
        cmdline = args.cmdline
    try:
        kargs = parse_cmdline(cmdline)
    except KargError as e:
        raise SetupError(str(e), ExitCode.USAGE) from None
    try:
        if args.config is None:
            config = load_config(SETUP_ROOT_CONFIG, fallback=OSTREE_PREPARE_ROOT_CONFIG)
        else:
            config = load_config(args.config, must_exist=True)
    except ConfigError as e:
        raise SetupError(str(e), ExitCode.CONFIG) from None
    sysroot = os.path.abspath(args.sysroot)
    karg = choose_karg(sysroot, kargs)
    # No /etc mode configured: the deployment's state says which (bootc writes bind).
    config = resolve_etc(config, os.path.join(sysroot, deploy_dir(karg.digest), "etc"))
    plan = make_plan(sysroot, karg, config)
    if args.dry_run:
        sys.stdout.write(plan.describe())
        return ExitCode.OK
    execute(plan, Tweaks(args.force_loop, args.force_lowerdir_string))
    return ExitCode.OK


def _debug() -> None:
    if os.environ.get("CFSBOOT_DEBUG") == "1":
        import traceback  # only here: it costs start-up time

        traceback.print_exc()


def main(argv: list[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except SetupError as e:
        _debug()
        print(f"{PROG}: {e}", file=sys.stderr, flush=True)
        return e.code
    except Exception as e:  # a bug: still one line on the console, and a way to see more
        _debug()
        print(f"{PROG}: internal error: {e!r} (CFSBOOT_DEBUG=1 shows more)", file=sys.stderr)
        return ExitCode.MOUNT_FAILED
