"""setup-root refuses to boot, with one line that says why, and leaves the sysroot as it was.

On a real sysroot (cfstest.setuprootboot): secure mode without fs-verity, missing
images and deployments, bad kernel arguments and configs, a wrong or missing fs-verity
digest (the kernel's answer replaced in the setup-root process: this host has no
fs-verity), a read-only physical root, an image that is not EROFS.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cfstest.setuprootboot import Boot, Sysroot, boot, make_sysroot, one_line

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("can_mount")]


@pytest.fixture(scope="module")
def sysroot_template(tmp_path_factory: pytest.TempPathFactory) -> Sysroot:
    """Two deployments made by the stager (install, switch, finalize; sha512, insecure: no
    fs-verity here)."""
    return make_sysroot(tmp_path_factory.mktemp("sysroot"), "stager")


@pytest.fixture
def sysroot(sysroot_template: Sysroot, tmp_path: Path) -> Sysroot:
    """A fresh copy of the physical root for each test."""
    return sysroot_template.copy(tmp_path / "physical.ext4")


def _refused(b: Boot, tmp_path: Path, code: int) -> str:
    assert b.rc == code, b.stderr
    # Nothing was touched: /sysroot is still the physical root, with nothing on top.
    assert [(t, e["fstype"]) for t, e in b.mounts.items()] == [(str(tmp_path / "mnt"), "ext4")]
    return one_line(b.stderr)


def test_secure_karg_refused_without_fs_verity(sysroot: Sysroot, tmp_path: Path) -> None:
    a = sysroot.digests["a"]
    line = _refused(boot(sysroot, tmp_path, f"composefs={a}"), tmp_path, 5)
    assert "has no fs-verity support" in line
    assert line.endswith(f"boot with composefs=?{a} to skip the check")


def test_missing_image_refused(sysroot: Sysroot, tmp_path: Path) -> None:
    missing = "0" * sysroot.algorithm.hex_len
    line = _refused(boot(sysroot, tmp_path, f"composefs=?{missing}"), tmp_path, 4)
    assert line == (
        f"cfsboot-setup-root: composefs image {missing} not found:"
        f" {tmp_path}/mnt/composefs/images/{missing} does not exist"
    )


def test_bad_karg_refused(sysroot: Sysroot, tmp_path: Path) -> None:
    line = _refused(boot(sysroot, tmp_path, "rw composefs=?abc"), tmp_path, 2)
    assert line.startswith("cfsboot-setup-root: invalid kernel argument composefs=?abc:")


def test_bad_config_refused(sysroot: Sysroot, tmp_path: Path) -> None:
    b = boot(
        sysroot, tmp_path, f"composefs=?{sysroot.digests['a']}", config='[etc]\nmount = "copy"\n'
    )
    line = _refused(b, tmp_path, 3)
    assert line == (
        f"cfsboot-setup-root: {tmp_path / 'conf.toml'}: etc.mount must be one of"
        " overlay | bind | transient | none, not 'copy'"
    )


# The host kernel has no fs-verity, so the kernel's answer to FS_IOC_MEASURE_VERITY is
# replaced (in the setup-root process only) to show the other two verdicts on real mounts.
MEASURED = """
import sys
from setuproot import mount, verity
from setuproot.contract import HashAlg

answer = sys.argv.pop(1)

def measure(fd, *, path=None):
    if answer == "none":
        raise verity.NoVerity(61, "FS_IOC_MEASURE_VERITY: the file has no fs-verity", path)
    return HashAlg.SHA512, bytes(64)

mount.measure_verity = measure
from setuproot.main import main
sys.exit(main())
"""


@pytest.mark.parametrize(
    ("karg", "before", "measured", "code", "message"),
    [
        pytest.param(
            "composefs={a}",
            "",
            "zeros",
            6,
            "composefs image {m}/composefs/images/{a} has the wrong fs-verity digest:"
            " expected sha512:{a}, found sha512:{zeros}",
            id="wrong-digest",
        ),
        pytest.param(
            "composefs={a}",
            "",
            "none",
            5,
            "composefs image {m}/composefs/images/{a} has no fs-verity digest;"
            " boot with composefs=?{a} to allow it",
            id="no-verity",
        ),
        pytest.param(
            "composefs=?{a}",
            'rm -r "$M/state/deploy/{a}"',
            None,
            8,
            "deployment state {m}/state/deploy/{a} is missing (was {a12}... deployed?)",
            id="undeployed",
        ),
        pytest.param(
            "composefs=?{a}",
            'mount -o remount,ro "$M"',
            None,
            8,
            "cannot use {m}/state/deploy/{a}/etc: the filesystem is read-only"
            " (the physical root must be mounted rw: boot with `rw`)",
            id="read-only-physical-root",
        ),
        pytest.param(
            "composefs=?{a}",
            'rm "$M/composefs/images/{a}"; head -c 8192 /dev/zero > "$M/composefs/images/{a}"',
            None,
            1,
            "cannot mount composefs image {m}/composefs/images/{a}: not a valid EROFS image",
            id="not-erofs",
        ),
    ],
)
def test_refused_with_its_message(
    sysroot: Sysroot,
    tmp_path: Path,
    karg: str,
    before: str,
    measured: str | None,
    code: int,
    message: str,
) -> None:
    a = sysroot.digests["a"]
    fmt = {"a": a, "a12": a[:12], "m": str(tmp_path / "mnt"), "zeros": "00" * 64}
    program: tuple[str, ...] = (sys.executable, "-m", "setuproot")
    if measured is not None:
        program = (sys.executable, "-c", MEASURED, measured)
    b = boot(sysroot, tmp_path, karg.format(**fmt), before=before.format(**fmt), program=program)
    line = _refused(b, tmp_path, code)
    assert line.startswith(f"cfsboot-setup-root: {message.format(**fmt)}")
