"""10. Automatic updates: cfsboot-fetch-apply-updates.service (what the timer starts),
started by hand in the v1 guest, stages v2 from the local registry and reboots into it
with no further command; v2 boots on trial and is blessed.

Boot 1 (`auto-update`) ends its scenario as soon as the service is started and keeps
the guest up (no poweroff): the service's reboot ends the QEMU run (-no-reboot), and
the console shows it staging. Boot 2 (`auto-updated`) checks v2 and its blessing.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import images
import osimage
import qemu
import registry
from installed import EXPECT, booted_ok, install

pytestmark = pytest.mark.vm

STAGED = "staged docker://"  # cfsboot's line once the update is staged (on the console)
REBOOT = "reboot: Restarting system"  # the kernel's line


def test_10_update_timer_applies_v2_unattended(
    test_os: dict[str, osimage.OsImage],
    registry_v2: str,
    local_registry: registry.Registry,
    results_dir: Path,
    tmp_path: Path,
) -> None:
    disk = tmp_path / "s10.raw"
    install(test_os["v1"], disk)
    expect = {
        "ref": local_registry.guest_ref("v2"),
        "v1": test_os["v1"].image_id,
        "v2": test_os["v2"].image_id,
    }
    config = images.disk_config(
        disk, None, ("auto-update",), poweroff=False, network=True, timeout=900
    )
    fw = (*config.fw_cfg, (EXPECT, json.dumps(expect, separators=(",", ":"))))
    first = qemu.boot(
        dataclasses.replace(config, fw_cfg=fw), results_dir / "10a-timer", watch=(STAGED, REBOOT)
    )
    print(f"\n10a: {first.wall_seconds:.0f} s, markers {sorted(first.markers)}")
    qemu.check_passed(first, ("auto-update",))
    assert STAGED in first.markers, "the update service staged nothing"
    assert REBOOT in first.markers, "the update service did not reboot the guest"
    second = booted_ok(disk, results_dir / "10b-v2", ("auto-updated",), expect, network=True)
    print(f"10b: {second.wall_seconds:.0f} s, bless {second.report.data}")
