"""The whole lifecycle in QEMU: install, boot with fs-verity enforced, switch, rollback, tamper.

One disk is installed from the host with `cfsboot install to-disk` (an
insecure repository: this host has no fs-verity), then a provisioning boot
runs `cfsboot fsverity enable-repo` in the guest. Every scenario boots a
fresh qcow2 overlay of that secure disk; the multi-boot ones keep theirs
between boots. Each guest reports its own verdict (guest/scenarios/*), and
expected digests reach it through the fw_cfg item opt/cfsboot/expect.

Scenarios 1-4 are marked `vmcore` (CI runs them on every submission).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import osimage
import qemu
import registry
from installed import boot, booted_ok, install, new_overlay, secure_disk

pytestmark = pytest.mark.vm

# A file of the test OS nothing reads at boot: scenario 4 tampers with its object.
TAMPER_PATH = "/usr/share/common-licenses/Apache-2.0"
FINALIZE_MARKER = "finalizing the staged deployment"


@dataclass(frozen=True)
class Installed:
    disk: Path  # raw disk made by install to-disk
    secure: Path  # qcow2 overlay of it after the provisioning boot (fs-verity enforced)
    digests: dict[str, str]  # variant -> composefs digest


@pytest.fixture(scope="module")
def installed(
    test_os: dict[str, osimage.OsImage],
    tmp_path_factory: pytest.TempPathFactory,
    results_dir_root: Path,
) -> Iterator[Installed]:
    work = tmp_path_factory.mktemp("installed")
    disk, secure = secure_disk(test_os["v1"], work, results_dir_root)
    digests = {name: img.image_id for name, img in test_os.items()}
    yield Installed(disk, secure, digests)
    for p in work.iterdir():
        p.unlink()


@pytest.fixture(scope="module")
def results_dir_root(request: pytest.FixtureRequest) -> Path:
    from conftest import SESSION_STAMP

    path: Path = qemu.results_root() / SESSION_STAMP / "lifecycle"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def lifecycle_disk(installed: Installed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One overlay that scenarios 2 and 3 boot in turn (what one boot changes, the next sees)."""
    return new_overlay(installed.secure, tmp_path_factory.mktemp("life") / "life.qcow2")


# -- scenarios 1-4 ---------------------------------------------------------------------


@pytest.mark.vmcore
def test_1_composefs_root_with_fs_verity_enforced(
    installed: Installed, results_dir_root: Path, tmp_path: Path
) -> None:
    disk = new_overlay(installed.secure, tmp_path / "s1.qcow2")
    result = booted_ok(
        disk,
        results_dir_root / "1-secure-root",
        ("secure-root",),
        {"booted": installed.digests["v1"]},
    )
    assert "ro" in result.report.data["secure-root"]["root_options"].split(",")


@pytest.mark.vmcore
def test_2_switch_to_v2_from_a_registry(
    installed: Installed,
    lifecycle_disk: Path,
    registry_v2: str,
    local_registry: registry.Registry,
    results_dir_root: Path,
) -> None:
    d = installed.digests
    expect = {
        "ref": local_registry.guest_ref("v2"),
        "target": d["v2"],
        "v1": d["v1"],
        "v2": d["v2"],
    }
    # Finalize runs at the shutdown that ends this boot.
    result = booted_ok(
        lifecycle_disk, results_dir_root / "2a-switch", ("switch-v2",), expect, network=True,
        watch=(FINALIZE_MARKER,),
    )  # fmt: skip
    assert FINALIZE_MARKER in result.markers, "finalize did not run at shutdown"
    # The check also runs `upgrade --check` against the registry (still serving v2).
    booted_ok(
        lifecycle_disk, results_dir_root / "2b-booted-v2", ("booted-v2",), expect, network=True
    )


@pytest.mark.vmcore
def test_3_rollback(installed: Installed, lifecycle_disk: Path, results_dir_root: Path) -> None:
    d = installed.digests
    expect = {"v1": d["v1"], "v2": d["v2"]}
    booted_ok(lifecycle_disk, results_dir_root / "3a-rollback", ("rollback",), expect)
    booted_ok(lifecycle_disk, results_dir_root / "3b-booted-v1", ("booted-v1",), expect)


def _flatten(qcow2: Path, raw: Path) -> None:
    subprocess.run(["qemu-img", "convert", "-O", "raw", qcow2, raw], check=True)


def _root_offset(raw: Path) -> int:
    from cfsboot.boot.disk import read_layout, root_type

    return read_layout(raw).by_type(root_type()).start


def _debugfs(raw: Path, offset: int, request: str) -> str:
    proc = subprocess.run(
        ["debugfs", "-R", request, f"{raw}?offset={offset}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return proc.stdout


def _flip_byte(raw: Path, path_in_root: str, byte: int) -> None:
    """Flip one byte of a file's data on the raw disk, below every filesystem layer."""
    off = _root_offset(raw)
    block = int(_debugfs(raw, off, f"bmap {path_in_root} {byte // 4096}").split()[0])
    assert block > 0, f"{path_in_root} has no block {byte // 4096}"
    where = off + block * 4096 + byte % 4096
    with open(raw, "r+b") as f:
        f.seek(where)
        old = f.read(1)
        f.seek(where)
        f.write(bytes([old[0] ^ 0xFF]))
        f.flush()
        os.fsync(f.fileno())


def _object_of(raw: Path, image: str, path: str, tmp: Path) -> str:
    """The objects/XX/REST path (in the root fs) holding `path` of image `image`."""
    from cfsboot.composefs.erofs.reader import read_image
    from cfsboot.composefs.tree import lookup

    dumped = tmp / "image.erofs"
    _debugfs(raw, _root_offset(raw), f"dump /composefs/objects/{image[:2]}/{image[2:]} {dumped}")
    node = lookup(read_image(dumped.read_bytes()), path.encode())
    assert node is not None and node.payload is not None, f"{path} is not an external file"
    return f"/composefs/objects/{node.payload.decode()}"


@pytest.mark.vmcore
def test_4_tampered_object_gives_eio(
    installed: Installed, results_dir_root: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "tampered.raw"
    _flatten(installed.secure, raw)
    obj = _object_of(raw, installed.digests["v1"], TAMPER_PATH, tmp_path)
    _flip_byte(raw, obj, 100)
    # The guest also runs `cfsboot fsck` (every object read through fs-verity: 40 s under
    # TCG), which must find this object, and nothing else.
    expect = {"path": TAMPER_PATH, "object": obj.removeprefix("/composefs/")}
    booted_ok(raw, results_dir_root / "4a-tampered-object", ("tampered-read",), expect)


@pytest.mark.vmcore
def test_4_tampered_image_is_refused_at_boot(
    installed: Installed, results_dir_root: Path, tmp_path: Path
) -> None:
    raw = tmp_path / "tampered.raw"
    _flatten(installed.secure, raw)
    d = installed.digests["v1"]
    _flip_byte(raw, f"/composefs/objects/{d[:2]}/{d[2:]}", 1100)  # inside the EROFS superblock
    result = boot(raw, results_dir_root / "4b-tampered-image", ("secure-root",), {"booted": d},
                  timeout=300)  # fmt: skip
    log = result.serial_log.read_text(errors="replace")
    reasons = [ln for ln in log.splitlines() if "cfsboot-setup-root: " in ln]
    print("\n".join(reasons))
    assert result.stopped_on is not None, "the boot did not stop in emergency mode"
    assert reasons, "setup-root printed no reason on the console"
    assert "its contents fail fs-verity verification" in reasons[0]
    assert result.report.verdict("secure-root") is None, "the tampered image booted"


# -- scenarios 5-7 (make vm-test) ------------------------------------------------------


def test_5_uki_through_systemd_boot(
    installed: Installed,
    test_os: dict[str, osimage.OsImage],
    local_registry: registry.Registry,
    results_dir_root: Path,
    tmp_path: Path,
) -> None:
    local_registry.push(test_os["uki"].layout, "uki")
    disk = new_overlay(installed.secure, tmp_path / "s5.qcow2")
    expect = {"ref": local_registry.guest_ref("uki"), "uki": installed.digests["uki"]}
    booted_ok(disk, results_dir_root / "5a-switch-uki", ("switch-uki",), expect, network=True)
    booted_ok(disk, results_dir_root / "5b-booted-uki", ("booted-uki",), expect)


def test_6_grub(
    test_os: dict[str, osimage.OsImage], results_dir_root: Path, tmp_path: Path
) -> None:
    disk = tmp_path / "grub.raw"
    install(test_os["v1"], disk, "--bootloader", "grub")
    booted_ok(disk, results_dir_root / "6-grub", ("grub-root",), {"booted": test_os["v1"].image_id})


@pytest.mark.parametrize("delay", [0.0, 1.0, 2.5, 5.0])
def test_7_power_cut_during_finalize(
    installed: Installed,
    registry_v2: str,
    local_registry: registry.Registry,
    results_dir_root: Path,
    tmp_path: Path,
    delay: float,
) -> None:
    d = installed.digests
    disk = new_overlay(installed.secure, tmp_path / "s7.qcow2")
    expect = {
        "ref": local_registry.guest_ref("v2"),
        "target": d["v2"],
        "v1": d["v1"],
        "v2": d["v2"],
    }
    cut = boot(
        disk, results_dir_root / f"7a-cut-{delay}", ("switch-v2",), expect, network=True,
        cut_power=(FINALIZE_MARKER, delay),
    )  # fmt: skip
    verdict = cut.report.verdict("switch-v2")
    assert verdict is not None and verdict.passed
    assert cut.power_cut_at is not None, "finalize never started"
    after = booted_ok(disk, results_dir_root / f"7b-after-{delay}", ("booted-any",), expect)
    print(f"power cut {delay} s into finalize: {after.report.data['booted-any']['booted']} boots")
