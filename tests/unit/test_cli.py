"""`cfsboot`'s wrapper: expected failures are one line and an exit code; --debug shows more."""

from __future__ import annotations

import argparse

import pytest

from cfsboot import cli
from cfsboot.commands import fsverity
from cfsboot.errors import die


def _failing(exc: BaseException) -> object:
    def digest(args: argparse.Namespace) -> int:
        raise exc

    return digest


@pytest.mark.parametrize(
    ("exc", "rc", "line"),
    [
        (OSError(2, "No such file or directory", "/x"), 1, "No such file or directory: /x"),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
)
def test_expected_failures_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    exc: BaseException,
    rc: int,
    line: str,
) -> None:
    monkeypatch.setattr(fsverity, "digest", _failing(exc))
    assert cli.main(["fsverity", "digest", "f"]) == rc
    assert capsys.readouterr().err == f"cfsboot: {line}\n"


def test_die_sets_the_exit_code(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def digest(args: argparse.Namespace) -> int:
        die("what went wrong", hint="what to do", exit_code=4)

    monkeypatch.setattr(fsverity, "digest", digest)
    assert cli.main(["fsverity", "digest", "f"]) == 4
    assert capsys.readouterr().err == "cfsboot: what went wrong; what to do\n"


def test_debug_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fsverity, "digest", _failing(OSError(5, "I/O error")))
    with pytest.raises(OSError):
        cli.main(["--debug", "fsverity", "digest", "f"])
    monkeypatch.setenv("CFSBOOT_DEBUG", "1")
    with pytest.raises(OSError):
        cli.main(["fsverity", "digest", "f"])


def test_an_unexpected_exception_is_one_line_naming_the_input(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(fsverity, "digest", _failing(ValueError("bad thing\nsecond line")))
    assert cli.main(["fsverity", "digest", "my file"]) == cli.INTERNAL_ERROR == 70
    assert capsys.readouterr().err == (
        "cfsboot: internal error in `cfsboot fsverity digest 'my file'`: ValueError: bad thing"
        " (--debug or CFSBOOT_DEBUG=1 shows the traceback; please report it)\n"
    )
    monkeypatch.setattr(fsverity, "digest", _failing(RecursionError("too deep")))
    assert cli.main(["--debug", "fsverity", "digest", "f"]) == 70
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):\n")
    assert "RecursionError: too deep\n" in err
    assert err.endswith(
        "cfsboot: internal error in `cfsboot --debug fsverity digest f`: RecursionError: too"
        " deep (--debug or CFSBOOT_DEBUG=1 shows the traceback; please report it)\n"
    )


def test_argument_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("cfsboot: argument COMMAND: invalid choice: 'no-such-command'")
    assert err.endswith(" (see --help)\n") and err.count("\n") == 1


def test_every_subcommand_is_mapped_to_its_module() -> None:
    """The lazy parser (cli.COMMANDS) knows every subcommand the full parser has."""
    import argparse

    from cfsboot import cli

    full = cli.build_parser()
    action = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    assert set(action.choices) == set(cli.COMMANDS)
    for name, module in cli.COMMANDS.items():
        only = cli.build_parser(name)
        sub = next(a for a in only._actions if isinstance(a, argparse._SubParsersAction))
        assert name in sub.choices, (name, module)


def test_the_listing_parser_shows_what_the_full_one_shows() -> None:
    """`cfsboot --help` and its errors come from the listing parser: same text, same choices."""
    import argparse

    from cfsboot import cli

    full, listing = cli.build_parser(), cli.build_parser(listing=True)
    assert listing.format_help() == full.format_help()
    assert listing.format_usage() == full.format_usage()
    choices = [
        next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices
        for p in (full, listing)
    ]
    assert list(choices[1]) == list(choices[0])
