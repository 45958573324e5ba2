"""Shared fixtures: reference C tools and capability probes."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))
IN_CI = os.environ.get("CI") == "true"


def missing_capability(reason: str) -> None:
    """Skip where a capability is truly absent; in CI the machine has it, so fail loudly."""
    if IN_CI:
        pytest.fail(f"{reason} (CI must have it: is `make setup` complete?)")
    pytest.skip(reason)


class RefTools:
    """The reference C composefs tools (mkcomposefs, composefs-info 1.0.8)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.mkcomposefs = bindir / "mkcomposefs"
        self.composefs_info = bindir / "composefs-info"
        self.fsverity = bindir / "fsverity"

    def run(self, tool: str, *args: str | os.PathLike[str], input: bytes | None = None) -> bytes:
        proc = subprocess.run(
            [str(self.bindir / tool), *map(str, args)],
            input=input,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(map(str, args))} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')}"
            )
        return proc.stdout


@pytest.fixture(scope="session")
def reftools() -> RefTools:
    bindir = Path(os.environ.get("CFSBOOT_REFTOOLS", CACHE / "reftools-bin"))
    if not (bindir / "mkcomposefs").exists():
        missing_capability(f"reference C tools not found in {bindir} (run `make setup`)")
    return RefTools(bindir)


@pytest.fixture(scope="session")
def composefs_assets() -> Path:
    path = Path(os.environ.get("CFSBOOT_COMPOSEFS_ASSETS", CACHE / "composefs-assets"))
    if not (path / "special.dump").exists():
        missing_capability(f"C composefs test assets not found in {path} (run `make setup`)")
    return path


def _probe(argv: list[str]) -> bool:
    if shutil.which(argv[0]) is None:
        return False
    try:
        return subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture(scope="session")
def can_mount() -> None:
    """Skip (or fail in CI) unless we can mount tmpfs in a private mount namespace."""
    probe = ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "t", "/mnt"]
    if not _probe(probe):
        missing_capability("cannot mount in a private mount namespace (needs root and unshare)")
