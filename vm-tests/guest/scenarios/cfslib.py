"""Shared by the Python scenarios (not a scenario itself: not executable).

Expected values come from the host per boot through the fw_cfg item
opt/cfsboot/expect (JSON), so the boot entries need not change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, NoReturn

FW_CFG = "/sys/firmware/qemu_fw_cfg/by_name/opt/cfsboot/expect/raw"
MARKER_ETC = "/etc/cfsboot-test/local-change"
MARKER_VAR = "/var/lib/cfsboot-test-marker"


def fail(msg: str) -> NoReturn:
    print(msg)
    sys.exit(1)


def check(cond: bool, msg: str) -> None:
    if not cond:
        fail(msg)


def expect() -> dict[str, Any]:
    try:
        with open(FW_CFG, "rb") as f:
            doc: dict[str, Any] = json.loads(f.read().decode().strip("\0 \n"))
            return doc
    except FileNotFoundError:
        return {}


def sh(*argv: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if ok and proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        fail(f"{' '.join(argv)} failed with exit code {proc.returncode}: {last}")
    return proc


def data(key: str, value: object) -> None:
    print(f"DATA {key} {value}")


def status() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sh("cfsboot", "status", "--json").stdout)
    return doc


def verity(entry: dict[str, Any] | None) -> str | None:
    return None if entry is None else entry["composefs"]["verity"]


def os_version() -> str:
    with open("/usr/lib/os-release") as f:
        for line in f:
            if line.startswith("VERSION_ID="):
                return line.split("=", 1)[1].strip().strip('"')
    return ""


def root_mount() -> tuple[str, str, list[str]]:
    out = sh("findmnt", "-n", "-o", "SOURCE,FSTYPE,OPTIONS", "/").stdout.split()
    return out[0], out[1], out[2].split(",")


def booted_is(digest: str) -> None:
    source, fstype, opts = root_mount()
    check(fstype == "overlay", f"/ is {fstype}, not the composefs overlay")
    check(source == f"composefs:{digest}", f"/ is {source}, expected composefs:{digest[:12]}…")


def wait_online() -> None:
    sh("/usr/lib/systemd/systemd-networkd-wait-online", "--any", "--ipv4", "--timeout=90")


def writable(path: str) -> bool:
    probe = os.path.join(path, ".cfsboot-write-probe")
    try:
        with open(probe, "w") as f:
            f.write("x")
        os.unlink(probe)
        return True
    except OSError:
        return False
