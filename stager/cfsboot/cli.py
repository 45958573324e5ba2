"""The `cfsboot` command line: argparse with one-line errors and no tracebacks."""

from __future__ import annotations

import argparse
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


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        sys.exit(2)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse's formatter asks shutil for the width, and add_argument makes one: importing
        # shutil (and bz2, lzma) costs every run more than the rest of the parser.
        # (argparse's formatter classes all take width; typeshed's protocol names prog only)
        return self.formatter_class(prog=self.prog, width=terminal_columns() - 2)  # type: ignore[call-arg]


def terminal_columns() -> int:
    """shutil.get_terminal_size().columns (COLUMNS, else stdout's terminal, else 80)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):
            columns = 0
        columns = columns or 80
    return columns


class _Listed:
    """A command as the listing parser holds it: its parser is built if it ever parses."""

    def __init__(self, *, prog: str) -> None:
        self.name = prog.rsplit(" ", 1)[-1]

    def parse_known_args(
        self, args: list[str], namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parser = build_parser(self.name)
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        command: ArgumentParser = sub.choices[self.name]
        return command.parse_known_args(args, namespace)


def build_parser(only: str | None = None, *, listing: bool = False) -> ArgumentParser:
    """The whole parser, or (`only`: a subcommand name) one with just that command.

    `listing`: every command by name and help line (SUBCOMMANDS), without their own
    arguments and without importing their modules (for the top-level --help and errors;
    parsing a command's arguments needs its module's parser).
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
    if listing:
        # A command's own parser (an ArgumentParser each, with its help option) is not
        # made: the listing answers --help, --version and errors without parsing one.
        sub._parser_class = _Listed  # type: ignore[assignment]
        for name, _, help_text, aliases in SUBCOMMANDS:
            sub.add_parser(name, help=help_text, aliases=aliases)
        return parser
    import importlib  # not for the listing (--help)

    if only in COMMANDS:
        module = importlib.import_module(f"cfsboot.commands.{COMMANDS[only]}")
        module.register(_Only(sub, only))
        return parser
    for name in COMMAND_MODULES:
        importlib.import_module(f"cfsboot.commands.{name}").register(sub)
    return parser


class _Only:
    """The subparsers action as a command module sees it when one of its commands is to
    parse: the parsers of its other commands are not built (status is run most)."""

    def __init__(self, sub: argparse._SubParsersAction[ArgumentParser], name: str) -> None:
        self._sub, self._name = sub, name

    def add_parser(self, name: str, **kwargs: Any) -> Any:
        if self._name == name or self._name in kwargs.get("aliases", ()):
            return self._sub.add_parser(name, **kwargs)
        return _Unbuilt()


class _Unbuilt:
    """Another command's parser, unbuilt: whatever is added to it is dropped."""

    def __getattr__(self, name: str) -> Callable[..., _Unbuilt]:
        return self._ignore

    def _ignore(self, *args: object, **kwargs: object) -> _Unbuilt:
        return self


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
