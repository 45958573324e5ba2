"""Boot time to multi-user.target in QEMU (TCG): the plain ext4 root baseline.

The composefs-root side (same OS, same VM settings, interleaved runs, the
ratio and setup-root's own time from the journal) is added once `cfsboot`
can install a disk; for now only the ext4 baseline is measured.

Times come from the guest (systemd's monotonic timestamps, reported by the
`boottime` check scenario over the verdict port) and from the host's wall
clock (QEMU start to the check unit starting, and to QEMU exiting).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

VM_TESTS = Path(__file__).resolve().parent.parent / "vm-tests"
CHECK_STARTED = "cfsboot-check: BEGIN boottime"


def _vm_modules() -> tuple[ModuleType, ModuleType]:
    """The harness lives in vm-tests/ (not a package); import it by path."""
    if str(VM_TESTS) not in sys.path:
        sys.path.insert(0, str(VM_TESTS))
    return importlib.import_module("images"), importlib.import_module("qemu")


@dataclass(frozen=True)
class Sample:
    kernel_s: float  # kernel start -> initrd's systemd
    initrd_s: float  # initrd's systemd -> switch root
    multi_user_s: float  # kernel start -> multi-user.target active (guest clock)
    wall_to_check_s: float  # QEMU start -> check unit running (host clock)
    wall_total_s: float  # QEMU start -> QEMU exit after poweroff


def _sample(data: dict[str, str], markers: dict[str, float], wall: float) -> Sample:
    initrd = int(data["initrd_us"])
    userspace = int(data["userspace_us"])
    return Sample(
        kernel_s=initrd / 1e6,
        initrd_s=(userspace - initrd) / 1e6,
        multi_user_s=int(data["multi_user_us"]) / 1e6,
        wall_to_check_s=markers.get(CHECK_STARTED, float("nan")),
        wall_total_s=wall,
    )


def _missing_tools() -> str | None:
    for tool in ("qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if os.geteuid() != 0:
        return "needs root (chroot and mounts while building the guest)"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 runs instead of 5")
    parser.add_argument("--runs", type=int, help="number of boots (default 5, --quick 2)")
    parser.add_argument("--keep", type=Path, help="keep images and serial logs in this directory")
    args = parser.parse_args(argv)
    runs = args.runs or (2 if args.quick else 5)
    print("boot benchmark: ONLY the plain ext4 baseline is measured;")
    print("  the composefs root (and the ratio) needs `cfsboot install`, added later.")
    reason = _missing_tools()
    if reason:
        print(f"boot benchmark skipped: {reason}")
        return 0
    images, qemu = _vm_modules()
    # TCG boots slow down in proportion to other load on the host's 2 cores.
    load_before = os.getloadavg()[0]
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="cfsboot-bench-boot.", dir="/var/tmp"))
    try:
        started = time.monotonic()
        guest = images.build_ext4_guest(workdir / "guest")
        print(
            f"guest built in {time.monotonic() - started:.1f} s "
            f"(dracut {guest.timings['dracut']:.1f} s, mkfs.ext4 {guest.timings['mkfs']:.1f} s)"
        )
        samples: list[Sample] = []
        for i in range(runs):
            config = images.direct_config(guest, workdir / "overlay.qcow2", ("boottime",))
            result = qemu.boot(config, workdir / f"run{i}", watch=[CHECK_STARTED])
            qemu.check_passed(result, ["boottime"])
            sample = _sample(result.report.data["boottime"], result.markers, result.wall_seconds)
            samples.append(sample)
            print(
                f"  run {i + 1}/{runs}: multi-user {sample.multi_user_s:.1f} s "
                f"(kernel {sample.kernel_s:.1f} + initrd {sample.initrd_s:.1f} s), "
                f"wall to check {sample.wall_to_check_s:.1f} s, total {sample.wall_total_s:.1f} s",
                flush=True,
            )
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    load = f"host load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"ext4 root, direct kernel boot, TCG -smp 2, medians of {runs} runs ({load}):")
    for label, field in [
        ("kernel start -> multi-user.target (guest)", "multi_user_s"),
        ("  of which kernel before initrd", "kernel_s"),
        ("  of which initrd", "initrd_s"),
        ("QEMU start -> check unit (wall)", "wall_to_check_s"),
        ("QEMU start -> poweroff done (wall)", "wall_total_s"),
    ]:
        values = [getattr(s, field) for s in samples]
        spread = f"(min {min(values):.1f}, max {max(values):.1f})"
        print(f"  {label:44} {statistics.median(values):6.1f} s  {spread}")
    print("composefs root: not measured yet (ratio goal <= 1.05)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
