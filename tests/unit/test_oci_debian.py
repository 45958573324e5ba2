"""A real image: the Debian trixie minbase chroot that `make setup` builds, packed and imported."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cfsboot.composefs import dumpfile
from cfsboot.composefs.srctree import tree_from_directory
from cfsboot.image.importer import import_image
from cfsboot.image.transform import transform_for_boot, transform_for_oci
from cfstest.gates import missing_capability
from cfstest.ocibuild import Compression, build_layout
from cfstest.ocirepo import count_objects, make_repo
from setuproot.contract import HashAlg

ROOTFS = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot")) / "reftools"


@pytest.fixture(scope="module")
def debian_image(tmp_path_factory: pytest.TempPathFactory) -> str:
    if not (ROOTFS / "usr" / "bin").is_dir():
        missing_capability(f"Debian rootfs {ROOTFS} not found (run `make setup`)")
    path = tmp_path_factory.mktemp("debian") / "img"
    build_layout(path, [ROOTFS], compression=Compression.ZSTD)
    return f"oci:{path}"


@pytest.mark.slow
def test_debian_rootfs(debian_image: str, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", HashAlg.SHA256)
    result = import_image(debian_image, repo, tag="debian")
    assert result.tree is not None
    # The tar path gives exactly the tree that reading the directory itself gives
    # (C mkcomposefs's view, through srctree), once both are normalised the same way.
    direct = tree_from_directory(ROOTFS, alg=HashAlg.SHA256, hardlinks=True)
    transform_for_oci(direct)
    transform_for_boot(direct)
    assert dumpfile.dumps(result.tree) == dumpfile.dumps(direct)
    # Every external file is an object in the repository.
    assert count_objects(repo) >= result.objects_written > 1000
    # compute-id (no repository) gives the same digest.
    again = import_image(debian_image, None, algorithm=HashAlg.SHA256)
    assert again.image_digest == result.image_digest
    assert repo.tags() == {"debian": result.image_digest}
