"""The `cfsboot` command line: argparse with one-line errors and no tracebacks."""

from __future__ import annotations

import os
import sys

from cfsboot import __version__
from cfsboot.errors import CfsbootError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence
    from typing import Any

# Every run pays for what this module imports (`--help` and `status` are what people and
# monitoring run most): logging, traceback and shlex are imported where they are used, and
# argparse with the parsers (cfsboot.cliparse) once a run parses: a `status --json` that
# prints a kept output (cfsboot.linux.outputcache) does not.

# Every subcommand in --help order: name, its module under cfsboot.commands, help line,
# aliases. `cfsboot --help`, `--version`, no command or an unknown one are answered from
# this table alone: importing every command module and building its parser costs more
# than the rest of such a run. tests/unit/test_cli.py pins it to what the modules register.
SUBCOMMANDS: tuple[tuple[str, str, str, tuple[str, ...]], ...] = (
    ("fsverity", "fsverity", "fs-verity digests: compute, measure, enable", ()),
    ("repo", "repo", "manage a composefs repository", ()),
    ("mkcomposefs", "mkcomposefs", "build a composefs image from a directory or a dumpfile", ()),
    (
        "composefs-info",
        "composefs_info",
        "list, dump or check the objects of composefs images",
        (),
    ),
    ("image", "image", "import OCI images and compute their boot image digest", ()),
    ("install", "install", "install a new system from an image", ()),
    ("switch", "deploy", "stage another image to boot next", ()),
    ("upgrade", "deploy", "stage the newest version of the booted image", ("update",)),
    ("finalize-staged", "deploy", "make the staged deployment the default (shutdown)", ()),
    ("rollback", "deploy", "make the previous deployment the default", ()),
    ("status", "deploy", "show the deployments", ()),
    ("gc", "deploy", "remove deployments and data nothing needs", ()),
    ("container", "container", "check and seal a bootable image while it is built", ()),
    (
        "fsck",
        "fsck",
        "check the repository, the deployments and the ESP; repair what is safe",
        (),
    ),
    (
        "bless",
        "assessment",
        "end the booted deployment's boot trial (after boot-complete.target)",
        (),
    ),
    (
        "health-check",
        "assessment",
        "run the health checks in /usr/lib/cfsboot/health.d and /etc/cfsboot/health.d",
        (),
    ),
    (
        "assess-boot",
        "assessment",
        "after boot-complete.target: record a failed boot and reboot a deployment on trial",
        (),
    ),
    (
        "diff",
        "updates",
        "files, Debian packages, kernel and kernel arguments that differ between two"
        " deployments, or a deployment and an image (stages nothing)",
        (),
    ),
    ("pin", "updates", "keep a deployment in the boot menu and from gc", ()),
    ("unpin", "updates", "let gc and new deployments drop a pinned deployment again", ()),
    (
        "usr-overlay",
        "usroverlay",
        "a transient writable overlay on /usr, to debug; it goes at the next boot",
        ("usroverlay",),
    ),
)
# Modules under cfsboot.commands that add subcommands, in --help order.
COMMAND_MODULES = tuple(dict.fromkeys(module for _, module, _, _ in SUBCOMMANDS))
# Which module defines each subcommand (aliases too): a run imports only the module it needs.
COMMANDS = {n: module for name, module, _, aliases in SUBCOMMANDS for n in (name, *aliases)}

# An unexpected exception (a bug): sysexits.h's EX_SOFTWARE, distinct from user errors (1, 2).
INTERNAL_ERROR = 70
# What cfsboot.cliparse defines, reached from here as before it moved there.
_PARSING = frozenset({"ArgumentParser", "build_parser", "terminal_columns"})


def __getattr__(name: str) -> Any:
    if name in _PARSING:
        from cfsboot import cliparse

        return getattr(cliparse, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: Sequence[str] | None = None) -> int:
    recorder = None
    if argv is None:  # a command line (a caller in this process passes argv: no caching)
        argv = sys.argv[1:]
        if printed_for_programs(argv):
            from cfsboot.linux import outputcache

            try:
                key = outputcache.make_key(["status", __version__, *argv])
                path = outputcache.cache_file(run_dir_option(argv), key)
            except OSError:  # no working directory: nothing is kept
                pass
            else:
                output = outputcache.lookup(path, key)
                if output is not None:
                    sys.stdout.flush()
                    sys.stdout.buffer.write(output)
                    sys.stdout.flush()
                    return 0
                recorder = outputcache.Recorder(path, key)
    argv = list(argv)
    from cfsboot.cliparse import build_parser

    first = next((a for a in argv if not a.startswith("-")), None)
    if first in COMMANDS and argv[:1] not in (["--help"], ["-h"]):
        args = build_parser(first).parse_args(argv)
    else:
        # No known command in argv: this exits (help, version, or an error naming the choices).
        args = build_parser(listing=True).parse_args(argv)
    debug = args.debug or os.environ.get("CFSBOOT_DEBUG") == "1"
    configure_logging(debug)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        if recorder is not None:
            return recorder.run(lambda: func(args))
        return func(args)
    except CfsbootError as e:
        if debug:
            raise
        sys.stderr.write(f"cfsboot: {e}\n")
        return e.exit_code
    except OSError as e:
        if debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        sys.stderr.write(f"cfsboot: {e.strerror or e}{where}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("cfsboot: interrupted\n")
        return 130
    except Exception as e:  # a bug: still one line, naming what it was given
        if debug:
            import traceback

            traceback.print_exc()
        sys.stderr.write(f"cfsboot: {internal_error(argv, e)}\n")
        return INTERNAL_ERROR


def printed_for_programs(argv: Sequence[str]) -> bool:
    """Is this `cfsboot status` printing JSON or YAML (what monitoring runs, every few
    seconds)? Such a run's output is kept while what it read stays as it was
    (cfsboot.linux.outputcache), so that the next one costs 2 ms instead of 45."""
    if os.environ.get("CFSBOOT_OUTPUT_CACHE") == "0" or os.environ.get("CFSBOOT_DEBUG") == "1":
        return False
    if next((a for a in argv if not a.startswith("-")), None) != "status":
        return False
    if getattr(sys.stdout, "buffer", None) is None:  # no stdout, or one replaced in-process
        return False
    if any(a in ("-h", "--help", "--debug") for a in argv):
        return False
    if any(a in ("--json", "--yaml", "--format=json", "--format=yaml") for a in argv):
        return True
    pairs = zip(argv[:-1], argv[1:], strict=True)
    return any(a == "--format" and b in ("json", "yaml") for a, b in pairs)


def run_dir_option(argv: Sequence[str]) -> str | None:
    """--run-dir's value in argv, if given whole (`--run-dir X`, `--run-dir=X`)."""
    for i, a in enumerate(argv):
        if a == "--run-dir" and i + 1 < len(argv):
            return os.path.abspath(argv[i + 1])
        if a.startswith("--run-dir="):
            return os.path.abspath(a.partition("=")[2])
    return None


LOG_FORMAT = "%(levelname)s: %(message)s"


def configure_logging(debug: bool) -> None:
    """Warnings (with --debug, everything) on stderr as `LEVEL: message`.

    Applied when logging is first imported: a run that logs nothing (status on a
    sound system) does not import it (cfsboot.linux.lazylog).
    """
    level = 10 if debug else 30  # logging.DEBUG, logging.WARNING
    from cfsboot.linux import lazylog

    lazylog.threshold = level
    if "logging" in sys.modules:
        import logging

        logging.basicConfig(level=level, format=LOG_FORMAT)
    else:
        sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _ConfigureLogging)]
        sys.meta_path.insert(0, _ConfigureLogging(level))


class _ConfigureLogging:
    """A meta path finder that configures logging as the module is first imported."""

    def __init__(self, level: int) -> None:
        self.level = level

    def find_spec(self, name: str, path: object = None, target: object = None) -> Any:
        if name != "logging":
            return None
        sys.meta_path.remove(self)
        import importlib.util

        spec = importlib.util.find_spec(name)  # the finders after this one
        if spec is None or spec.loader is None:
            return spec
        load, level = spec.loader.exec_module, self.level

        def exec_module(module: Any) -> None:
            load(module)
            module.basicConfig(level=level, format=LOG_FORMAT)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def internal_error(argv: Sequence[str], e: BaseException) -> str:
    """The one line an unexpected exception becomes: the command line, the exception, a hint."""
    import shlex

    shown = shlex.join(argv)
    if len(shown) > 200:
        shown = shown[:199] + "…"
    lines = str(e).splitlines()
    text = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
    if len(text) > 300:
        text = text[:299] + "…"
    return (
        f"internal error in `cfsboot {shown}`: {text}"
        " (--debug or CFSBOOT_DEBUG=1 shows the traceback; please report it)"
    )


if __name__ == "__main__":
    sys.exit(main())
