"""The one helper through which cfsboot runs external commands."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from cfsboot.errors import die

log = logging.getLogger(__name__)

# Which Debian package provides a tool, for the "not found" hint.
PACKAGES = {
    "skopeo": "skopeo",
    "mkfs.ext4": "e2fsprogs",
    "mkfs.vfat": "dosfstools",
    "mkfs.btrfs": "btrfs-progs",
    "mkfs.xfs": "xfsprogs",
    "mcopy": "mtools",
    "mmd": "mtools",
    "sfdisk": "fdisk",
    "losetup": "mount",
    "dracut": "dracut",
    "qemu-system-x86_64": "qemu-system-x86",
    "mmdebstrap": "mmdebstrap",
    "zstd": "zstd",
    "ukify": "systemd-ukify",
    "fsverity": "fsverity",
}

_BASE_ENV = ("PATH", "TMPDIR", "HOME", "CFSBOOT_DEBUG")


def minimal_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _BASE_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    env["LC_ALL"] = "C.UTF-8"
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = False,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a command with a minimal environment and no inherited stdin.

    stderr is always captured so that a failure can be reported in one line:
    `"skopeo copy …" failed with exit code 1: <last stderr line>`. A command
    still running after `timeout` seconds is killed, and that is an error too.
    """
    args = [os.fspath(a) for a in argv]
    tool = args[0]
    if shutil.which(tool, path=minimal_env(env)["PATH"]) is None and not Path(tool).exists():
        pkg = PACKAGES.get(Path(tool).name)
        die(f"{tool} not found", hint=f"apt-get install {pkg}" if pkg else None)
    log.debug("+ %s", shlex.join(args))
    short = shlex.join(args[:3]) + (" …" if len(args) > 3 else "")
    try:
        proc = subprocess.run(
            args,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE,
            env=minimal_env(env),
            cwd=cwd,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        die(f'"{short}" did not finish within {timeout:g} s: killed')
    except OSError as e:  # there, but not runnable: no #! line, a missing interpreter, no x bit
        die(f'"{short}" could not be run: {e.strerror}')
    if check and proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        last = lines[-1] if lines else "(no output)"
        die(f'"{short}" failed with exit code {proc.returncode}: {last}')
    return proc
