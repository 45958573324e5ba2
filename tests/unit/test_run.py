"""The one helper for external commands: minimal environment, no stdin, one-line failures."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from cfsboot.errors import CfsbootError
from cfsboot.linux.run import run


def test_output_and_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="cfsboot.linux.run"):
        proc = run(["sh", "-c", "echo out; echo err >&2", "arg with space"], capture=True)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"out\n", b"err\n")
    assert caplog.messages == ["+ sh -c 'echo out; echo err >&2' 'arg with space'"]


def test_failure_is_one_line_with_the_last_stderr_line() -> None:
    with pytest.raises(CfsbootError) as exc:
        run(["sh", "-c", "echo first >&2; echo 'the reason' >&2; exit 3", "x"])
    assert str(exc.value) == (
        """"sh -c 'echo first >&2; echo '"'"'the reason'"'"' >&2; exit 3' …" failed with"""
        " exit code 3: the reason"
    )
    with pytest.raises(CfsbootError, match=r'^"false" failed with exit code 1: \(no output\)$'):
        run(["false"])
    assert run(["false"], check=False).returncode == 1


def test_stdin_is_never_inherited_and_input_is_given() -> None:
    # With the test runner's stdin, `cat` could block or read it; it must see EOF at once.
    assert run(["cat"], capture=True).stdout == b""
    assert run(["cat"], capture=True, input=b"given").stdout == b"given"


def test_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_SECRET", "x")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    out = run(["env"], capture=True, env={"EXTRA": "1"}).stdout.decode().splitlines()
    names = {line.split("=", 1)[0] for line in out}
    assert "SOME_SECRET" not in names and "LANG" not in names
    assert {"PATH", "LC_ALL", "EXTRA"} <= names
    assert "LC_ALL=C.UTF-8" in out


def test_missing_tool_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(CfsbootError) as exc:
        run(["skopeo", "copy"])
    assert str(exc.value) == "skopeo not found; apt-get install skopeo"
    with pytest.raises(CfsbootError) as exc:
        run(["no-such-tool-anywhere"])
    assert str(exc.value) == "no-such-tool-anywhere not found"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"echo no interpreter line\n", "Exec format error"),
        (b"#!/nonexistent/interpreter\n", "No such file or directory"),
    ],
)
def test_a_file_that_cannot_be_run_is_one_line(tmp_path: Path, content: bytes, reason: str) -> None:
    """An OSError from exec (a health check written without #!) was a traceback."""
    script = tmp_path / "check"
    script.write_bytes(content)
    script.chmod(0o755)
    with pytest.raises(CfsbootError) as exc:
        run([script], check=False)
    assert str(exc.value) == f'"{script}" could not be run: {reason}'
