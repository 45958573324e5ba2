"""The cfsboot CLI of a source tree, run in a subprocess: exit codes, stdout and stderr as
users see them.

One helper for the tests, the VM tests and the benchmarks: `sys.executable -m cfsboot.cli`
with the source tree's `stager/` and `setup-root/` first on PYTHONPATH, stdin closed
unless input is given.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from cfstest import REPO_ROOT

Arg = str | os.PathLike[str]


def argv(*args: Arg) -> list[str]:
    """The command line that runs `cfsboot ARGS…` with this interpreter."""
    return [sys.executable, "-m", "cfsboot.cli", *(os.fspath(a) for a in args)]


def environ(extra: Mapping[str, str] | None = None, *, src: Path = REPO_ROOT) -> dict[str, str]:
    """This process's environment with the stager of `src` (this tree by default) first."""
    path = os.pathsep.join([str(src / "stager"), str(src / "setup-root")])
    return {**os.environ, "PYTHONPATH": path, **(extra or {})}


# The environment every run starts from; tests may set entries in it (monkeypatch.setitem).
ENV: dict[str, str] = environ()


def _env(extra: Mapping[str, str] | None, src: Path) -> dict[str, str]:
    base = ENV if src == REPO_ROOT else environ(src=src)
    return {**base, **(extra or {})}


def _failed(args: tuple[Arg, ...], proc: subprocess.CompletedProcess[str]) -> AssertionError:
    command = " ".join(os.fspath(a) for a in args)
    return AssertionError(f"cfsboot {command}: exit code {proc.returncode}: {proc.stderr}")


def run(
    *args: Arg,
    check: bool = True,
    env: Mapping[str, str] | None = None,
    src: Path = REPO_ROOT,
) -> subprocess.CompletedProcess[str]:
    """`cfsboot ARGS…` with text output; with `check`, a non-zero exit is an AssertionError."""
    proc = subprocess.run(
        argv(*args),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=_env(env, src),
        check=False,
    )
    if check and proc.returncode != 0:
        raise _failed(args, proc)
    return proc


def run_bytes(
    *args: Arg,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    src: Path = REPO_ROOT,
) -> subprocess.CompletedProcess[bytes]:
    """`cfsboot ARGS…` with bytes in and out (images on stdout); the caller checks the exit."""
    return subprocess.run(
        argv(*args),
        input=input,
        stdin=subprocess.DEVNULL if input is None else None,
        capture_output=True,
        env=_env(env, src),
        check=False,
    )


def one_line_error(
    proc: subprocess.CompletedProcess[str] | subprocess.CompletedProcess[bytes],
    *,
    code: int = 1,
    contains: str = "",
) -> str:
    """Assert a user error as cfsboot reports one: exit `code`, one stderr line, no traceback.

    Returns that line (without its newline).
    """
    err = proc.stderr if isinstance(proc.stderr, str) else proc.stderr.decode(errors="replace")
    assert proc.returncode == code, f"exit code {proc.returncode}, expected {code}: {err}"
    assert err.endswith("\n") and err.count("\n") == 1, f"not one line on stderr: {err!r}"
    assert "Traceback" not in err, err
    assert contains in err, f"{contains!r} is not in {err!r}"
    return err[:-1]
