"""Fixtures for the VM tests (`make vm-test`: pytest -m vm vm-tests)."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import images
import osimage
import qemu
import registry
import testos
from cfstest import gates

SESSION_STAMP = time.strftime("%Y%m%d-%H%M%S")


@pytest.fixture(scope="session")
def vm_tools() -> None:
    gates.require_tools(
        {
            "qemu-system-x86_64": "qemu-system-x86",
            "qemu-img": "qemu-utils",
            "mmdebstrap": "mmdebstrap",
            "mkfs.ext4": "e2fsprogs",
            "mkfs.vfat": "dosfstools",
            "mcopy": "mtools",
            "sfdisk": "fdisk",
        }
    )
    if not gates.can_mount():
        gates.missing_capability(
            "VM tests build images with chroot and mounts, and cannot mount here (run as root)"
        )


CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))


@pytest.fixture(scope="session")
def base_rootfs(vm_tools: None) -> Path:
    return testos.ensure_base_rootfs(CACHE)


@pytest.fixture(scope="session")
def test_os(base_rootfs: Path) -> dict[str, osimage.OsImage]:
    """The default variants of the test OS as OCI layouts (osimage.py), from the same sources."""
    return osimage.ensure_images(osimage.DEFAULT_VARIANTS, CACHE)


@pytest.fixture(scope="session")
def local_registry(
    vm_tools: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[registry.Registry]:
    """docker-registry on 127.0.0.1:5000 (10.0.2.2:5000 for guests), empty at the start."""
    gates.require_tools({"docker-registry": "docker-registry", "skopeo": "skopeo"})
    with registry.running(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="session")
def registry_v2(local_registry: registry.Registry, test_os: dict[str, osimage.OsImage]) -> str:
    """The v2 test OS pushed as docker://127.0.0.1:5000/cfsboot/testos:v2; its digest."""
    return local_registry.push(test_os["v2"].layout, "v2")


@pytest.fixture(scope="session")
def ext4_guest(
    base_rootfs: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[images.Ext4Guest]:
    workdir = tmp_path_factory.mktemp("ext4-guest")
    yield images.build_ext4_guest(workdir, base_rootfs)
    # Disk images are big (pytest keeps 3 sessions of tmp dirs); the logs stay in results.
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def results_dir(request: pytest.FixtureRequest) -> Path:
    """Per-test directory that keeps the serial log, verdict file and QEMU argv."""
    path: Path = qemu.results_root() / SESSION_STAMP / str(request.node.name)
    path.mkdir(parents=True, exist_ok=True)
    return path
