"""vm-tests/boot_image.py without QEMU: the check script's way in and its verdict out."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
VM_TESTS = REPO / "vm-tests"


def _load(name: str, path: Path) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


boot_image = _load("boot_image", VM_TESTS / "boot_image.py")
qemu = sys.modules["qemu"]
guest = _load("bootimage_guest", VM_TESTS / "guest" / "cfsboot_check.py")


def result(tmp_path: Path, verdicts: str, exit_code: int | None = 0) -> Any:
    serial = tmp_path / "serial.log"
    serial.write_text(
        "[  1.0] booting\n[ 30.1] [script] Deployments:\n[ 30.2] [script]   booted: v1\n"
    )
    report = qemu.parse_verdicts(verdicts)
    return qemu.BootResult(exit_code, report, serial, tmp_path, 42.0, {})


def test_verdicts_become_exit_statuses(tmp_path: Path) -> None:
    passed = result(tmp_path, "BEGIN script\nPASS script\nDONE\n")
    assert boot_image.verdict_status(passed) == (0, "the check passed")
    failed = result(tmp_path, "BEGIN script\nFAIL script: exit code 3: not booted\nDONE\n")
    assert boot_image.verdict_status(failed) == (3, "the check failed: exit code 3: not booted")
    killed = result(tmp_path, "BEGIN script\nFAIL script: exit code -9: x\nDONE\n")
    assert boot_image.verdict_status(killed)[0] == 1
    silent = result(tmp_path, "")
    assert boot_image.verdict_status(silent) == (
        125,
        f"no verdict from the guest: see {tmp_path / 'serial.log'}",
    )
    hung = result(tmp_path, "BEGIN script\n", exit_code=None)
    assert boot_image.verdict_status(hung) == (
        124,
        "no verdict: the guest did not power off in 42 s",
    )
    assert boot_image.script_output(passed.serial_log) == ["Deployments:", "  booted: v1"]


def test_script_reaches_the_guest_as_a_fw_cfg_file(tmp_path: Path) -> None:
    config = qemu.VmConfig(
        disks=(qemu.Disk(tmp_path / "d.raw"),),
        kernel=tmp_path / "vmlinuz",
        fw_cfg=(("opt/cfsboot/check", "script"),),
        fw_cfg_files=(("opt/cfsboot/check-script", Path("/w/a,b.sh")),),
    )
    argv = qemu.qemu_argv(config, verdict_file=tmp_path / "v.txt")
    assert argv[argv.index("-fw_cfg") :][:4] == [
        "-fw_cfg",
        "name=opt/cfsboot/check,string=script",
        "-fw_cfg",
        "name=opt/cfsboot/check-script,file=/w/a,,b.sh",
    ]
    with pytest.raises(ValueError, match="bad fw_cfg item name"):
        qemu.fw_cfg_file_option("check-script", Path("/x"))


def test_guest_runs_the_fw_cfg_script(tmp_path: Path) -> None:
    by_name = tmp_path / "fw"
    item = by_name / "opt/cfsboot/check-script"
    item.mkdir(parents=True)
    (item / "raw").write_bytes(b"#!/bin/sh\necho hello\nexit 3\n")
    path = guest.scenario_path("script", str(by_name), str(tmp_path / "run"))
    assert path == str(tmp_path / "run/script")
    proc = subprocess.run([path], capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout) == (3, "hello\n")
    # Other names (and "script" without the item) are the image's scenarios.
    assert guest.scenario_path("smoke", str(by_name)) == f"{guest.SCENARIOS}/smoke"
    assert guest.scenario_path("script", str(tmp_path / "none")) == f"{guest.SCENARIOS}/script"
