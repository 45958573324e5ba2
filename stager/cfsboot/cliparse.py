"""The command line's parsers: argparse, with one-line errors, built lazily.

cfsboot.cli answers a run; this builds the parser it needs: only the command being
run (its module imported, the other commands' parsers left unbuilt), or the listing
of every command (SUBCOMMANDS) for --help, --version and errors.
"""

from __future__ import annotations

import argparse
import os
import sys

from cfsboot import __version__
from cfsboot.cli import COMMAND_MODULES, COMMANDS, SUBCOMMANDS

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, NoReturn


class ArgumentParser(argparse.ArgumentParser):
    """An argparse parser whose errors are one line, not a usage dump."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: {message} (see --help)\n")
        sys.exit(2)

    def _get_formatter(self) -> argparse.HelpFormatter:
        # argparse's formatter asks shutil for the width, and add_argument makes one: importing
        # shutil (and bz2, lzma) costs every run more than the rest of the parser.
        # (argparse's formatter classes all take width; typeshed's protocol names prog only)
        cls = self.formatter_class
        if cls is argparse.HelpFormatter:
            cls = HelpFormatter
        return cls(prog=self.prog, width=terminal_columns() - 2)  # type: ignore[call-arg]


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, wrapping help text without textwrap (whose import compiles
    its regular expressions: a twentieth of every --help). Words break at blanks only
    (textwrap also breaks after a word's hyphens); a word longer than a line is cut."""

    def _split_lines(self, text: str, width: int) -> list[str]:
        return wrap(self._whitespace_matcher.sub(" ", text).strip(), width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        text = self._whitespace_matcher.sub(" ", text).strip()
        return "\n".join(indent + line for line in wrap(text, width - len(indent)))


def wrap(text: str, width: int) -> list[str]:
    """`text` (single blanks between words) in lines of at most `width` characters."""
    width = max(width, 1)
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        if len(word) > width:  # longer than a line: cut, its head filling the line (textwrap)
            room = width - len(line) - 1 if line else width
            if room > 0:
                head, word = word[:room], word[room:]
                line = f"{line} {head}" if line else head
            lines.append(line)
            line = ""
            while len(word) > width:
                lines.append(word[:width])
                word = word[width:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line += " " + word
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines


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
