#!/usr/bin/python3
"""Guest side of the VM tests: run scenarios, report verdicts, power off.

Protocol on /dev/virtio-ports/cfsboot.verdict (one line each, read by qemu.py):
  BEGIN name            a scenario started
  DATA name key value   a measurement (scenario stdout lines "DATA key value")
  PASS name             the scenario exited 0
  FAIL name: reason     it did not (reason: its last output line and exit code)
  DONE                  all scenarios ran; poweroff follows

Settings come from QEMU fw_cfg items opt/cfsboot/NAME (per boot, chosen by the host
without touching boot entries) or else from the kernel argument cfsboot.NAME:
  check            scenario names, separated by commas (or spaces)
  check.poweroff   0: keep the guest running after the scenarios
  check-script     (fw_cfg only) the program the scenario named "script" runs
                   (vm-tests/boot_image.py --check SCRIPT)
"""

import os
import subprocess
import sys
import threading
import time
from typing import TextIO

PORT = "/dev/virtio-ports/cfsboot.verdict"
SCENARIOS = "/usr/lib/cfsboot-check/scenarios"
SCRIPT = "script"  # the scenario the host hands over as the fw_cfg item check-script
SCRIPT_DIR = "/run/cfsboot-check"
SCENARIO_TIMEOUT = 900
FW_CFG_BY_NAME = "/sys/firmware/qemu_fw_cfg/by_name"
FW_CFG_PREFIX = "opt/cfsboot/"
KARG_PREFIX = "cfsboot."


def cmdline(text: str | None = None) -> dict[str, str]:
    if text is None:
        with open("/proc/cmdline") as f:
            text = f.read()
    return dict(w.partition("=")[::2] for w in text.split())


def load_fw_cfg() -> None:
    """qemu_fw_cfg is a module in Debian's kernel (CONFIG_FW_CFG_SYSFS=m)."""
    if not os.path.isdir(FW_CFG_BY_NAME):
        subprocess.run(["modprobe", "qemu_fw_cfg"], capture_output=True, check=False)


def fw_cfg(name: str, by_name: str = FW_CFG_BY_NAME) -> str | None:
    """The fw_cfg item opt/cfsboot/NAME, or None if QEMU was not given one."""
    try:
        with open(os.path.join(by_name, FW_CFG_PREFIX + name, "raw"), "rb") as f:
            return f.read().decode(errors="replace").strip("\0 \n")
    except FileNotFoundError:
        return None


def setting(name: str, default: str, args: dict[str, str], by_name: str = FW_CFG_BY_NAME) -> str:
    """fw_cfg first (it is per boot), then the kernel command line, then the default."""
    value = fw_cfg(name, by_name)
    if value is not None:
        return value
    return args.get(KARG_PREFIX + name, default)


def scenario_names(value: str) -> list[str]:
    return [n for n in value.replace(",", " ").split() if n]


def open_port() -> TextIO | None:
    # udev creates the symlink once virtio_console has probed the port.
    for _ in range(600):
        if os.path.exists(PORT):
            return open(PORT, "w", buffering=1)
        time.sleep(0.1)
    print(f"cfsboot-check: {PORT} did not appear; verdicts go to the console only")
    return None


def report(port: TextIO | None, line: str) -> None:
    print(f"cfsboot-check: {line}", flush=True)
    if port is not None:
        port.write(line + "\n")
        port.flush()


def scenario_path(name: str, by_name: str = FW_CFG_BY_NAME, run_dir: str = SCRIPT_DIR) -> str:
    """The program of a scenario: from the image, or the host's check-script via fw_cfg."""
    item = os.path.join(by_name, FW_CFG_PREFIX + "check-script", "raw")
    if name == SCRIPT and os.path.exists(item):
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        path = os.path.join(run_dir, SCRIPT)
        with open(item, "rb") as src, open(path, "wb") as dst:
            dst.write(src.read())
        os.chmod(path, 0o755)
        return path
    return os.path.join(SCENARIOS, name)


def run_scenario(port: TextIO | None, name: str) -> None:
    report(port, f"BEGIN {name}")
    script = scenario_path(name)
    if "/" in name or not os.access(script, os.X_OK):
        report(port, f"FAIL {name}: no such scenario {script}")
        return
    # Unbuffered: a Python scenario's lines reach the console as they are printed.
    env = dict(os.environ, CFSBOOT_CHECK_NAME=name, PYTHONUNBUFFERED="1")
    last = ""
    try:
        proc = subprocess.Popen(
            [script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
            errors="replace",
        )
        assert proc.stdout is not None
        # A hung scenario is killed so that the guest still reports and powers off.
        watchdog = threading.Timer(SCENARIO_TIMEOUT, proc.kill)
        watchdog.start()
        for raw in proc.stdout:
            line = raw.rstrip("\n")
            print(f"[{name}] {line}", flush=True)
            if line.startswith("DATA ") and line[5:].strip():
                report(port, f"DATA {name} {line[5:].strip()}")
            elif line.strip():
                last = line.strip()
        code = proc.wait()
        watchdog.cancel()
    except OSError as exc:
        report(port, f"FAIL {name}: cannot run {script}: {exc}")
        return
    if code == 0:
        report(port, f"PASS {name}")
    else:
        report(port, f"FAIL {name}: exit code {code}: {last}")


def main() -> int:
    args = cmdline()
    load_fw_cfg()
    names = scenario_names(setting("check", "", args))
    port = open_port()
    for name in names:
        run_scenario(port, name)
    report(port, "DONE")
    if port is not None:
        port.close()
    os.sync()
    if setting("check.poweroff", "1", args) != "0":
        subprocess.run(["systemctl", "--no-block", "poweroff"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
