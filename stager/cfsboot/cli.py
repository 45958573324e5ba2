"""The `cfsboot` command line: argparse with one-line errors and no tracebacks."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from cfsboot import __version__
from cfsboot.errors import CfsbootError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn

# Every run pays for what this module imports (`--help` and `status` are what people and
# monitoring run most): logging, traceback and shlex are imported where they are used.

# Modules under cfsboot.commands that add subcommands, in --help order.
COMMAND_MODULES = (
    "fsverity",
    "repo",
    "mkcomposefs",
    "composefs_info",
    "image",
    "install",
    "deploy",
    "container",
    "fsck",
    "assessment",
    "updates",
    "usroverlay",
)

# Which module defines each subcommand: a run imports only the module it needs
# (the parser with every module is built for --help and for unknown commands).
COMMANDS = {
    "fsverity": "fsverity",
    "repo": "repo",
    "mkcomposefs": "mkcomposefs",
    "composefs-info": "composefs_info",
    "image": "image",
    "container": "container",
    "fsck": "fsck",
    "install": "install",
    **{c: "deploy" for c in ("switch", "upgrade", "finalize-staged", "rollback", "status", "gc")},
    **{c: "assessment" for c in ("bless", "health-check", "assess-boot")},
    **{c: "updates" for c in ("diff", "pin", "unpin")},
    "update": "deploy",  # bootc's alias of upgrade
    "usr-overlay": "usroverlay",
    "usroverlay": "usroverlay",  # bootc's alias
}

# An unexpected exception (a bug): sysexits.h's EX_SOFTWARE, distinct from user errors (1, 2).
INTERNAL_ERROR = 70


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        sys.exit(2)


class _Unbuilt:
    """A command's parser as the top-level listing gets it: whatever is added to it is dropped."""

    def __getattr__(self, name: str) -> Callable[..., _Unbuilt]:
        return self._ignore

    def _ignore(self, *args: object, **kwargs: object) -> _Unbuilt:
        return self


class _Listing:
    """The subparsers action as command modules see it for the top-level parser alone.

    `cfsboot --help`, `--version`, no command or an unknown one need each command's name,
    aliases and help line, not its arguments: building every command's parser costs more
    than the rest of such a run.
    """

    def __init__(self, sub: argparse._SubParsersAction[ArgumentParser]) -> None:
        self._sub = sub

    def add_parser(self, name: str, **kwargs: Any) -> _Unbuilt:
        self._sub.add_parser(name, help=kwargs.get("help"), aliases=kwargs.get("aliases", ()))
        return _Unbuilt()


def build_parser(only: str | None = None, *, listing: bool = False) -> ArgumentParser:
    """The whole parser, or (`only`: a subcommand name) one with just that module's commands.

    `listing`: every command by name and help line, without their own arguments (for the
    top-level --help and errors; parsing a command's arguments needs the whole parser).
    """
    parser = ArgumentParser(
        prog="cfsboot",
        description="Boot Linux from OCI container images through composefs.",
    )
    parser.add_argument("--version", action="version", version=f"cfsboot {__version__}")
    parser.add_argument(
        "--debug", action="store_true", help="show debug logs and tracebacks (CFSBOOT_DEBUG=1)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    sub.required = True
    modules = [COMMANDS[only]] if only in COMMANDS else COMMAND_MODULES
    for name in modules:
        module = importlib.import_module(f"cfsboot.commands.{name}")
        module.register(_Listing(sub) if listing else sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in argv if not a.startswith("-")), None)
    if first in COMMANDS and argv[:1] not in (["--help"], ["-h"]):
        args = build_parser(first).parse_args(argv)
    else:
        # No known command in argv: this exits (help, version, or an error naming the choices).
        args = build_parser(listing=True).parse_args(argv)
    debug = args.debug or os.environ.get("CFSBOOT_DEBUG") == "1"
    import logging

    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
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
