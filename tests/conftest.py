"""Shared fixtures: the reference C tools and capability probes (through cfstest.gates)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cfstest.gates import FAT_TOOLS, missing_capability, require_mount, require_tools
from cfstest.reftools import RefTools

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))


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


@pytest.fixture(scope="session")
def can_mount() -> None:
    """Skip (or fail in CI) unless we can mount tmpfs in a private mount namespace."""
    require_mount()


@pytest.fixture(scope="session")
def fat_tools() -> None:
    """mkfs.vfat, fsck.vfat (dosfstools) and mtools, which FAT images are made and read with."""
    require_tools(FAT_TOOLS)


@pytest.fixture(scope="session")
def deb() -> Path:
    """`make deb` of this tree: build/deb/cfsboot_VERSION_all.deb."""
    require_tools({"dpkg-buildpackage": "dpkg-dev", "dh": "debhelper", "lintian": "lintian"})
    proc = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), "deb"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    debs = sorted((REPO_ROOT / "build" / "deb").glob("cfsboot_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]
