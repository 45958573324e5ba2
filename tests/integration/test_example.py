"""examples/debian/Containerfile, built with buildah as the README says (vfs, chroot).

FROM the trixie base made from the cached mmdebstrap rootfs (`make base-image`),
with the package of this tree; the build runs `cfsboot container lint` itself.
Then the image's digest as `cfsboot image import` computes it from the pushed OCI
layout equals `cfsboot container compute-digest` of the image's root directory.
Needs the Debian mirror (the Containerfile runs apt-get update).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfsboot.image.importer import import_image
from cfsboot.image.lint import lint
from cfsboot.image.rootdigest import compute_digest
from cfstest.gates import missing_capability
from setuproot.contract import HashAlg

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("can_mount")]

REPO_ROOT = Path(__file__).resolve().parents[2]
TAG = "localhost/cfsboot-example-test"
ENV = {**os.environ, "STORAGE_DRIVER": "vfs", "BUILDAH_ISOLATION": "chroot"}


def run(*argv: str) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, env=ENV, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)}: {proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def example(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """(the built image's OCI layout reference, a mount of its root)."""
    for tool in ("buildah", "podman"):
        if shutil.which(tool) is None:
            missing_capability(f"{tool} not found (make setup installs it)")
    run("make", "-s", "-C", str(REPO_ROOT), f"PY={sys.executable}", "base-image")
    context = tmp_path_factory.mktemp("context")
    shutil.copy(deb, context)
    run(
        "buildah", "bud", "--quiet",
        "--file", str(REPO_ROOT / "examples/debian/Containerfile"),
        "--tag", TAG,
        str(context),
    )  # fmt: skip
    layout = tmp_path_factory.mktemp("layout") / "oci"
    run("buildah", "push", "--quiet", TAG, f"oci:{layout}:latest")
    container = run("buildah", "from", "--quiet", TAG).strip()
    try:
        mount = Path(run("buildah", "mount", container).strip())
        yield f"oci:{layout}:latest", mount
    finally:
        run("buildah", "rm", container)
        run("buildah", "rmi", TAG)


def test_the_example_is_a_bootable_image(example: tuple[str, Path]) -> None:
    _, root = example
    kvers = [p.name for p in (root / "usr/lib/modules").iterdir() if (p / "vmlinuz").is_file()]
    assert len(kvers) == 1
    assert (root / "usr/lib/modules" / kvers[0] / "initramfs.img").is_file()
    assert list((root / "boot").iterdir()) == []
    assert [f.line() for f in lint(root, skip=("var",))] == []
    assert (root / "usr/lib/bootc/kargs.d/10-console.toml").read_text() == (
        'kargs = ["console=ttyS0,115200"]\n'
    )


def test_compute_digest_equals_import_digest(example: tuple[str, Path]) -> None:
    ref, root = example
    imported = import_image(ref, None, algorithm=HashAlg.SHA512)
    computed = compute_digest(root, alg=HashAlg.SHA512)
    assert computed.digest == imported.image_digest
    assert computed.boot.to_json() == imported.boot.to_json()
