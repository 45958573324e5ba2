"""Scenario 11: soft reboot from v1 to v2 (the same kernel), timed against a full reboot.

v1 and v2 of the test OS boot the same kernel with the same kernel arguments;
their initramfs differ (each carries its os-release), which does not stop a
soft reboot: the initramfs does not run again, and setup-root's mount of v2
is done beforehand on the running system (cfsboot.deploy.softreboot).

- soft: one QEMU run. v1 runs `cfsboot switch --soft-reboot=required` against
  the local registry; systemd soft-reboots into /run/nextroot and the check unit,
  started again by the new userspace, finds v2 booted (guest/scenarios/soft-reboot).
- full: the same with `--apply`; the reboot ends the QEMU run (-no-reboot), the
  next run boots v2 through firmware, systemd-boot, kernel and initramfs.

Both are timed on the host from the console line that says v2 is staged to the
line the scenario prints once v2 runs: for the full reboot, the end of the
first run plus the second run up to that line (QEMU's start standing in for the
firmware's). Both figures and their ratio are printed and written to
RESULTS/softreboot/times.json; no assertion depends on them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import osimage
import qemu
import registry
from installed import boot, booted_ok, new_overlay, secure_disk

pytestmark = pytest.mark.vm

STAGED = "; it boots next"  # cfsboot switch's line once v2 is staged
PHASE2 = "soft-reboot scenario: booted into v2"
REBOOT = "reboot: Restarting system"  # the kernel's line at the end of the full reboot
SCENARIO = ("soft-reboot",)


@pytest.fixture(scope="module")
def results_root() -> Path:
    from conftest import SESSION_STAMP

    path: Path = qemu.results_root() / SESSION_STAMP / "softreboot"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_11_soft_reboot_into_v2(
    test_os: dict[str, osimage.OsImage],
    registry_v2: str,
    local_registry: registry.Registry,
    results_root: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    work = tmp_path_factory.mktemp("softreboot")
    _, secure = secure_disk(test_os["v1"], work, results_root)
    d = {name: img.image_id for name, img in test_os.items()}
    expect: dict[str, Any] = {"ref": local_registry.guest_ref("v2"), "v1": d["v1"], "v2": d["v2"]}
    watch = (STAGED, PHASE2, REBOOT)

    soft_disk = new_overlay(secure, work / "soft.qcow2")
    soft = booted_ok(soft_disk, results_root / "11-soft", SCENARIO, {**expect, "mode": "soft"},
                     network=True, watch=watch, timeout=900)  # fmt: skip
    assert STAGED in soft.markers and PHASE2 in soft.markers
    assert REBOOT not in soft.markers, "the kernel restarted: that was no soft reboot"
    soft_s = soft.markers[PHASE2] - soft.markers[STAGED]

    full_disk = new_overlay(secure, work / "full.qcow2")
    first = boot(full_disk, results_root / "11-full-a", SCENARIO, {**expect, "mode": "full"},
                 network=True, watch=watch, timeout=900)  # fmt: skip
    assert first.exit_code == 0, f"QEMU exit {first.exit_code} ({first.serial_log})"
    assert STAGED in first.markers and REBOOT in first.markers, first.serial_log
    second = booted_ok(full_disk, results_root / "11-full-b", SCENARIO, {**expect, "mode": "full"},
                       network=True, watch=watch, timeout=900)  # fmt: skip
    full_s = (first.wall_seconds - first.markers[STAGED]) + second.markers[PHASE2]

    times = {"soft_seconds": round(soft_s, 1), "full_seconds": round(full_s, 1),
             "full_over_soft": round(full_s / soft_s, 2)}  # fmt: skip
    (results_root / "times.json").write_text(json.dumps(times, indent=2) + "\n")
    print(f"\nscenario 11: soft reboot {soft_s:.1f} s, full reboot {full_s:.1f} s"
          f" ({full_s / soft_s:.1f}x), staged line to v2's check under TCG")  # fmt: skip
