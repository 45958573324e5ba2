#!/usr/bin/env python3
"""Install an image to a throw-away disk, boot it in QEMU, run a check script in it.

    .venv/bin/python vm-tests/boot_image.py IMGREF --check SCRIPT [--workdir DIR]

For image authors' CI: the exit status is the script's (0: the image works as
the script checks it), 125 when the guest gave no verdict (it did not boot, or
the check unit never ran), 124 when it did not power off in time. The image
must have the cfsboot package (which ships the guest side, cfsboot-check.service:
inert unless QEMU hands it a check). The script reaches the guest as the QEMU
fw_cfg item opt/cfsboot/check-script; it runs as root after multi-user.target,
its output goes to the guest console (printed here, prefixed `[script]`).

The disk is made by `cfsboot install to-disk` (installed.install_ref), booted
under OVMF with TCG (qemu.py): the path the VM tests use.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), *(str(HERE.parent / d) for d in ("stager", "setup-root", "tests"))]

import images  # noqa: E402
import installed  # noqa: E402
import qemu  # noqa: E402

SCRIPT = "script"  # the scenario name guest/cfsboot_check.py gives the fw_cfg script
SCRIPT_ITEM = "opt/cfsboot/check-script"
# A serial console to read the script's output on; no reboot loop on a panic; no ESP
# automount (its fsck costs half a minute under TCG).
DEFAULT_KARGS = ("console=ttyS0,115200", "panic=-1", images.NO_GPT_AUTO)
NO_VERDICT = 125
TIMED_OUT = 124


def script_output(serial_log: Path) -> list[str]:
    """The script's lines on the guest console."""
    try:
        text = serial_log.read_text(errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in text.splitlines():
        _, sep, rest = line.partition(f"[{SCRIPT}] ")
        if sep:
            out.append(rest)
    return out


def verdict_status(result: qemu.BootResult) -> tuple[int, str]:
    """(exit status, one line saying why) from one boot's verdicts."""
    verdict = result.report.verdict(SCRIPT)
    if verdict is None:
        if result.exit_code is None and result.stopped_on is None:
            return (
                TIMED_OUT,
                f"no verdict: the guest did not power off in {result.wall_seconds:.0f} s",
            )
        why = f" (console showed {result.stopped_on!r})" if result.stopped_on else ""
        return NO_VERDICT, f"no verdict from the guest{why}: see {result.serial_log}"
    if verdict.passed:
        return 0, "the check passed"
    m = re.match(r"exit code (-?\d+)", verdict.reason)
    code = int(m.group(1)) if m else 1
    return (code if 0 < code < 124 else 1), f"the check failed: {verdict.reason}"


def boot_image(
    ref: str,
    check: Path,
    workdir: Path,
    *,
    kargs: tuple[str, ...] = DEFAULT_KARGS,
    network: bool = False,
    timeout: float = 900,
) -> tuple[int, str, qemu.BootResult]:
    disk = workdir / "disk.raw"
    disk.unlink(missing_ok=True)
    seconds = installed.install_ref(ref, disk, *(a for k in kargs for a in ("--karg", k)))
    print(f"boot-image: installed {ref} to {disk} in {seconds:.0f} s", file=sys.stderr)
    config = images.disk_config(disk, None, (SCRIPT,), network=network, timeout=timeout)
    config = dataclasses.replace(config, fw_cfg_files=((SCRIPT_ITEM, check.resolve()),))
    result = qemu.boot(config, workdir / "boot")
    status, why = verdict_status(result)
    return status, why, result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("imgref", metavar="IMGREF", help="oci:DIR[:TAG], oci-archive:FILE, docker://…")
    p.add_argument("--check", type=Path, required=True, metavar="SCRIPT", help="program to run")
    p.add_argument("--workdir", type=Path, help="keep the disk and logs here (default: a temp dir)")
    p.add_argument("--karg", action="append", default=[], help="an extra kernel argument")
    p.add_argument("--network", action="store_true", help="a NIC on QEMU user networking")
    p.add_argument("--timeout", type=float, default=900, help="seconds before QEMU is killed")
    args = p.parse_args(argv)
    if not args.check.is_file():
        p.error(f"{args.check}: no such file")
    with tempfile.TemporaryDirectory(prefix="cfsboot-boot-image.", dir="/var/tmp") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        status, why, result = boot_image(
            args.imgref,
            args.check,
            workdir,
            kargs=(*DEFAULT_KARGS, *args.karg),
            network=args.network,
            timeout=args.timeout,
        )
        for line in script_output(result.serial_log):
            print(f"[{SCRIPT}] {line}")
        print(f"boot-image: {why} ({result.wall_seconds:.0f} s in QEMU)", file=sys.stderr)
        if status == NO_VERDICT:
            print(qemu.log_tail(result.serial_log, 30), file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
