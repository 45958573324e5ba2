"""Boot counting and automatic rollback in QEMU: nobody types a command after the switch.

8. systemd-boot: v1 (installed) switches to `v2bad`, whose health check
   always fails and whose boot-assessment.toml gives it 2 tries. systemd-boot
   counts each boot down in the entry's file name; cfsboot-assess-boot.service
   reboots the failed boot by itself; once the tries are spent systemd-boot
   passes the entry over and v1 boots, and `cfsboot status --json` says why.
9. The same through Debian's GRUB (grubenv counter of cfsboot's menu), with the
   install's `--boot-tries 2` on v1 (blessed by cfsboot-bless-boot.service on its
   first boot) and `--boot-tries 1` on the switch, which overrides the image's 2.

QEMU runs with -no-reboot: every reboot the guest does by itself ends the run, and
the next boot of the same disk is the boot loader's next try.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import images
import osimage
import qemu
import registry
from installed import EXPECT, booted_ok, install

pytestmark = pytest.mark.vm

# What cfsboot-assess-boot.service prints when it reboots a failed boot (the status a
# good boot prints says "failed its boot assessment" too, so that is not the marker).
FAILED = "; rebooting: "
REBOOT = "reboot: Restarting system"  # the kernel's line, shown even with `quiet`


def _boot_on_trial(disk: Path, results: Path, expect: dict[str, Any]) -> qemu.BootResult:
    """One boot running the `bootcount` scenario, which powers off only on the good one."""
    config = images.disk_config(disk, None, ("bootcount",), poweroff=False, timeout=480)
    fw = (*config.fw_cfg, (EXPECT, json.dumps(expect, separators=(",", ":"))))
    result = qemu.boot(dataclasses.replace(config, fw_cfg=fw), results, watch=(FAILED, REBOOT))
    print(f"\n{results.name}: {result.wall_seconds:.0f} s, markers {sorted(result.markers)}")
    return result


def _until_fallback(
    disk: Path, results: Path, expect: dict[str, Any], tries: int
) -> tuple[int, float]:
    """Boot until the good deployment is back: (boots of the bad one, seconds in all)."""
    failed_boots = 0
    seconds = 0.0
    for n in range(1, tries + 2):
        result = _boot_on_trial(disk, results / f"try-{n}", expect)
        seconds += result.wall_seconds
        booted = result.report.data.get("bootcount", {}).get("booted")
        if FAILED in result.markers:
            assert booted in (None, expect["bad"]), f"boot {n} failed on {booted}"
            assert REBOOT in result.markers, f"boot {n} failed but the guest did not reboot"
            assert result.exit_code == 0, f"boot {n}: QEMU exit {result.exit_code}"
            failed_boots += 1
            continue
        qemu.check_passed(result, ("bootcount",))
        assert booted == expect["good"]
        assert result.report.data["bootcount"]["tries_used"] == str(tries)
        print(f"why: {result.report.data['bootcount'].get('why', '').replace('_', ' ')}")
        return failed_boots, seconds
    raise AssertionError(f"the good deployment did not come back within {tries + 1} boots")


def _v2bad() -> osimage.OsImage:
    """Not one of the variants every session builds: built (or found cached) here."""
    from conftest import CACHE

    return osimage.ensure_images(("v2bad",), CACHE)["v2bad"]


@pytest.fixture(scope="module")
def registry_v2bad(local_registry: registry.Registry, test_os: dict[str, osimage.OsImage]) -> str:
    v2bad = _v2bad()
    local_registry.push(v2bad.layout, "v2bad")
    return local_registry.guest_ref("v2bad")


@pytest.fixture(scope="module")
def results_root() -> Path:
    from conftest import SESSION_STAMP

    path: Path = qemu.results_root() / SESSION_STAMP / "bootcount"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.vmcore
def test_8_failing_health_check_rolls_back_by_itself(
    test_os: dict[str, osimage.OsImage],
    registry_v2bad: str,
    results_root: Path,
    tmp_path: Path,
) -> None:
    # fs-verity is not what this is about: the installed (insecure) disk, no provisioning boot.
    disk = tmp_path / "s8.raw"
    install(test_os["v1"], disk)
    good = test_os["v1"].image_id
    bad = _v2bad().image_id
    expect = {"ref": registry_v2bad, "target": bad, "good": good, "bad": bad, "tries": 2}
    booted_ok(disk, results_root / "8a-switch", ("switch-v2",), expect, network=True)
    failed_boots, seconds = _until_fallback(disk, results_root / "8b", expect, tries=2)
    print(f"\nscenario 8: {failed_boots} failed boots, then v1, in {seconds:.0f} s of QEMU")
    assert failed_boots == 2


def test_9_the_same_through_grub(
    test_os: dict[str, osimage.OsImage],
    registry_v2bad: str,
    results_root: Path,
    tmp_path: Path,
) -> None:
    disk = tmp_path / "grub.raw"
    install(test_os["v1"], disk, "--bootloader", "grub", "--boot-tries", "2")
    good = test_os["v1"].image_id
    bad = _v2bad().image_id
    expect = {"ref": registry_v2bad, "good": good, "bad": bad, "tries": 1}
    booted_ok(disk, results_root / "9a-bless-switch", ("grub-bless-switch",), expect,
              network=True)  # fmt: skip
    failed_boots, seconds = _until_fallback(disk, results_root / "9b", expect, tries=1)
    print(f"\nscenario 9: {failed_boots} failed boot, then v1, in {seconds:.0f} s of QEMU")
    assert failed_boots == 1
