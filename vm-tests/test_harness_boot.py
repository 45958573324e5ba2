"""The harness proves itself: real boots of the base test OS, verdicts from the guest."""

from __future__ import annotations

from pathlib import Path

import pytest

import images
import qemu

pytestmark = pytest.mark.vm

CHECKS = ("smoke", "boottime")


def _report(result: qemu.BootResult, label: str) -> None:
    times = result.report.data.get("boottime", {})
    multi_user = int(times.get("multi_user_us", "0")) / 1e6
    print(
        f"\n{label}: QEMU wall {result.wall_seconds:.1f} s, "
        f"multi-user.target at {multi_user:.1f} s after kernel start, log {result.serial_log}"
    )


def test_direct_kernel_boot_ext4(
    ext4_guest: images.Ext4Guest, results_dir: Path, tmp_path: Path
) -> None:
    config = images.direct_config(ext4_guest, tmp_path / "root.qcow2", CHECKS, timeout=300)
    result = qemu.boot(config, results_dir)
    config.disks[0].path.unlink()
    qemu.check_passed(result, CHECKS)
    smoke = result.report.data["smoke"]
    assert smoke["root_fstype"] == "ext4"
    assert smoke["root_source"] == "/dev/vda"
    assert smoke["verity_digest"].startswith("sha256:")
    assert result.report.done
    _report(result, "direct")


def test_uefi_systemd_boot_ext4(
    ext4_guest: images.Ext4Guest, results_dir: Path, tmp_path: Path
) -> None:
    uefi = images.build_uefi_guest(ext4_guest, tmp_path, CHECKS)
    config = images.uefi_config(uefi, tmp_path / "disk.qcow2", timeout=300)
    result = qemu.boot(config, results_dir)
    config.disks[0].path.unlink()
    uefi.disk.unlink()
    qemu.check_passed(result, CHECKS)
    assert result.report.data["smoke"]["root_source"] == "/dev/vda2"
    times = result.report.data["boottime"]
    assert times["efi"] == "1"
    assert times["loader_info"].startswith("systemd-boot 257")
    _report(result, "uefi")


def test_failing_scenario_is_reported(
    ext4_guest: images.Ext4Guest, results_dir: Path, tmp_path: Path
) -> None:
    """A scenario that does not exist yields FAIL with a reason, and check_passed raises."""
    config = images.direct_config(ext4_guest, tmp_path / "root.qcow2", ("no-such-scenario",))
    result = qemu.boot(config, results_dir)
    assert result.exit_code == 0
    verdict = result.report.verdict("no-such-scenario")
    assert verdict is not None and not verdict.passed
    assert verdict.reason == "no such scenario /usr/lib/cfsboot-check/scenarios/no-such-scenario"
    with pytest.raises(qemu.VmError, match="FAIL no-such-scenario: no such scenario"):
        qemu.check_passed(result, ("no-such-scenario",))
