"""What several command modules share: sysroot options, opening a sysroot, argument types."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from setuproot.contract import DEFAULT_SYSROOT, HashAlg, KargStyle

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from cfsboot.boot.bootloader import Bootloader
    from cfsboot.deploy.sysroot import Sysroot


def sysroot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--sysroot",
        default=DEFAULT_SYSROOT,
        help=f"the physical root filesystem (default {DEFAULT_SYSROOT})",
    )
    p.add_argument(
        "--esp",
        help="the ESP: a directory, a disk image or device with a GPT, or FILE@OFFSET"
        " (default: found from the disk holding the physical root)",
    )
    p.add_argument(
        "--run-dir",
        type=Path,
        help="where the staged-deployment marker lives (default /run on the booted system)",
    )


@contextmanager
def opened(args: argparse.Namespace, *, write: bool = True) -> Iterator[tuple[Sysroot, Bootloader]]:
    from cfsboot.boot.bootloader import detect
    from cfsboot.boot.espfind import open_esp
    from cfsboot.deploy.sysroot import Sysroot

    sysroot = Sysroot(args.sysroot, run_dir=args.run_dir, read_once=not write)
    if unmanaged_boot(sysroot):
        from cfsboot.deploy.unmanaged import Unmanaged

        # Installed with --bootloader none: no ESP of cfsboot's to look for (--esp too).
        if not write:
            yield sysroot, Unmanaged(sysroot)
            return
        with sysroot.repo.lock():
            yield sysroot, Unmanaged(sysroot)
        return
    with open_esp(sysroot.path, args.esp) as esp:
        if not write:
            from cfsboot.boot.espview import ReadOnceEsp

            # A reader asks for the same boot entries many times (status: about eight).
            yield sysroot, sysroot.attach(detect(ReadOnceEsp(esp)))
            return
        bl = sysroot.attach(detect(esp))
        with sysroot.repo.lock():
            done = bl.recover()
            if done:
                import logging

                for line in done:
                    logging.getLogger(__name__).info("ESP: %s", line)
            yield sysroot, bl


def unmanaged_boot(sysroot: Sysroot) -> bool:
    """Installed with --bootloader none (cfsboot.deploy.unmanaged)."""
    from cfsboot.deploy.unmanaged import is_unmanaged

    return is_unmanaged(sysroot)


def refuse_unmanaged(command: str, sysroot: Sysroot) -> None:
    """`command` writes boot entries: refused, before anything changes, where cfsboot
    manages no boot loader."""
    if unmanaged_boot(sysroot):
        from cfsboot.deploy.unmanaged import refusal

        refusal(command)


def warn_boot_override(sysroot: Sysroot, bl: Bootloader) -> None:
    """One warning line when an EFI variable of systemd-boot's (LoaderEntryOneShot,
    LoaderEntryDefault) makes it boot another entry than the default cfsboot just set:
    the staged menu's, when a deployment waits for finalize, else the live menu's.
    Nothing is said offline (the variables are the running firmware's) nor on GRUB."""
    marker = sysroot.staged()
    if marker is not None and marker.finalization_locked:
        # Not the live menu's default either, on purpose: --download-only set no default,
        # so there is nothing new to warn about (status still shows the override).
        return
    lv = sysroot.loader_vars(bl)
    if lv is None:
        return
    from cfsboot.boot.loadervars import next_boot

    line = next_boot(bl, lv, staged=sysroot.staged_next(bl) is not None).warning()
    if line is not None:
        from cfsboot.linux.lazylog import getLogger

        getLogger(__name__).warning("%s", line)


def hash_alg(text: str) -> HashAlg:
    """argparse type for an fs-verity hash algorithm name."""
    try:
        return HashAlg(text)
    except ValueError:
        names = " or ".join(HashAlg)
        raise argparse.ArgumentTypeError(f"unknown hash algorithm {text!r} ({names})") from None


def count(text: str) -> int:
    """A number of deployments: 0 or more (argparse's int takes -1)."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(
            f"expected a number of deployments (0 or more), not {text!r}"
        )
    return n


def karg_options(q: argparse.ArgumentParser) -> None:
    q.add_argument(
        "--karg",
        action="append",
        default=[],
        type=_karg,
        help="add a kernel argument (repeat)",
    )
    q.add_argument(
        "--karg-delete",
        action="append",
        default=[],
        metavar="KEY[=VALUE]",
        help="remove a kernel argument, from the image's kargs.d too: KEY removes every"
        " KEY and KEY=..., KEY=VALUE that one only (repeat; not with a UKI)",
    )
    q.add_argument(
        "--karg-style",
        choices=[s.value for s in KargStyle],
        help="how the entry names its image: composefs (composefs=HEX, bootc's) or digest"
        " (composefs.digest=v1-sha512-12:HEX, composefs-rs's); default: install composefs,"
        " switch/upgrade as the current entry does (not with a UKI)",
    )


def karg_style(args: argparse.Namespace) -> KargStyle | None:
    """--karg-style as given; None when not given."""
    return KargStyle(args.karg_style) if args.karg_style else None


def _karg(text: str) -> str:
    from cfsboot.image.kargsd import karg_problem

    problem = karg_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(f"{text!r} has {problem}")
    return text


def _boot_tries(text: str) -> int:
    from cfsboot.boot.counting import MAX_TRIES

    if not text.isdigit() or int(text) > MAX_TRIES:
        raise argparse.ArgumentTypeError(f"expected 0 (off) to {MAX_TRIES}, not {text!r}")
    return int(text)


def boot_tries_option(q: argparse.ArgumentParser, default: str) -> None:
    q.add_argument(
        "--boot-tries",
        type=_boot_tries,
        metavar="N",
        help=f"boots the new deployment gets to reach boot-complete.target before the"
        f" previous one boots again; 0: no boot counting ({default})",
    )
