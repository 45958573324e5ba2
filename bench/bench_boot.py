"""Boot time to multi-user.target in QEMU (TCG): composefs root vs the same OS on plain ext4.

Both guests are the v1 test OS (vm-tests/osimage.py) booted the same way:
OVMF + systemd-boot, a BLS entry, the image's own kernel and initramfs, the
same kernel arguments (kargs.d), `-smp 2`, quiet console.

- composefs: `cfsboot install to-disk`, then one provisioning boot that runs
  `cfsboot fsverity enable-repo`, so every measured boot verifies the image's
  digest and mounts the overlay with verity=require;
- ext4: the image's tree unpacked onto an ext4 root (the initramfs's
  setup-root unit is skipped: no composefs= argument).

Runs are interleaved (composefs, ext4, composefs, ...) so both sides see the
same machine load. Times come from the guest (systemd's monotonic
timestamps, the `boottime` scenario) and setup-root's own run from the
journal (its unit's Starting -> Finished). Reported: medians and the ratio
composefs / ext4 of kernel start -> multi-user.target (goal <= 1.0).
Takes well over 10 minutes (a provisioning boot, then 5 boots per side under TCG), so
`make bench` runs it only when named (`make bench BENCH=boot`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

VM_TESTS = Path(__file__).resolve().parent.parent / "vm-tests"
sys.path.insert(0, str(VM_TESTS.parent / "bench"))

from figures import figure  # noqa: E402

CHECKS = ("boottime",)


def _vm(name: str) -> ModuleType:
    """The harness lives in vm-tests/ (not a package; it uses tests/cfstest): import it by path."""
    for path in (VM_TESTS.parent / "tests", VM_TESTS):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    return importlib.import_module(name)


def _missing_tools() -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4", "mcopy"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if os.geteuid() != 0:
        return "needs root (chroot and mounts while building the guests)"
    return None


def _times(data: dict[str, str]) -> dict[str, float]:
    out = {
        "multi_user": int(data["multi_user_us"]) / 1e6,
        "kernel": int(data["initrd_us"]) / 1e6,
        "initrd": (int(data["userspace_us"]) - int(data["initrd_us"])) / 1e6,
    }
    if "setup_root_start_s" in data:
        out["setup_root"] = float(data["setup_root_end_s"]) - float(data["setup_root_start_s"])
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs per side instead of 5")
    parser.add_argument("--runs", type=int, help="boots per side (default 5, --quick 2)")
    parser.add_argument("--keep", type=Path, help="keep disks and serial logs in this directory")
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    reason = _missing_tools()
    if reason:
        print(f"boot benchmark skipped: {reason}")
        return 0
    images, qemu, osimage, installed = (_vm(m) for m in ("images", "qemu", "osimage", "installed"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="cfsboot-bench-boot.", dir="/var/tmp"))
    load_before = os.getloadavg()[0]
    samples: dict[str, list[dict[str, float]]] = {"composefs": [], "ext4": []}
    try:
        v1 = osimage.ensure_images(("v1",))["v1"]
        started = time.monotonic()
        _raw, secure = installed.secure_disk(v1, work, work / "results")
        print(f"composefs disk installed and provisioned in {time.monotonic() - started:.0f} s")
        started = time.monotonic()
        guest = osimage.ext4_guest(v1, work / "ext4")
        uefi = images.build_uefi_guest(guest, work / "ext4", ())
        print(f"ext4 disk built in {time.monotonic() - started:.0f} s")
        for i in range(runs):
            for side in ("composefs", "ext4"):
                if side == "composefs":
                    disk = installed.new_overlay(secure, work / "cfs.qcow2")
                    config = images.disk_config(disk, None, CHECKS)
                else:
                    config = images.uefi_config(uefi, work / "ext4.qcow2")
                    config = dataclasses.replace(config, fw_cfg=images.fw_cfg_checks(CHECKS))
                result = qemu.boot(config, work / "results" / f"{side}-{i}")
                qemu.check_passed(result, CHECKS)
                t = _times(result.report.data["boottime"])
                samples[side].append(t)
                extra = f", setup-root {t['setup_root']:.2f} s" if "setup_root" in t else ""
                print(
                    f"  run {i + 1}/{runs} {side:9}: multi-user {t['multi_user']:.1f} s "
                    f"(initrd {t['initrd']:.1f} s{extra}), wall {result.wall_seconds:.0f} s",
                    flush=True,
                )
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    _report(samples, runs, load_before)
    return 0


def _report(samples: dict[str, list[dict[str, float]]], runs: int, load_before: float) -> None:
    def med(side: str, key: str) -> float:
        return statistics.median(s[key] for s in samples[side])

    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"UEFI + systemd-boot, TCG -smp 2, medians of {runs} interleaved runs ({load}):")
    for key, label in (
        ("multi_user", "kernel start -> multi-user.target"),
        ("initrd", "  of which in the initrd"),
    ):
        c, e = med("composefs", key), med("ext4", key)
        print(f"  {label:36} composefs {c:6.2f} s   ext4 {e:6.2f} s   ratio {c / e:.3f}")
    setup = med("composefs", "setup_root")
    print(f"  {'setup-root (its unit, from the journal)':36} {setup:.2f} s")
    c, e = med("composefs", "multi_user"), med("ext4", "multi_user")
    figure("boot to multi-user.target (composefs root vs ext4)", c, e, "<= 1.0", unit="s")


if __name__ == "__main__":
    sys.exit(main())
