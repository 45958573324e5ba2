"""QEMU harness for the VM tests: build the command line, boot, collect the guest's verdict.

The oracle is the guest's own verdict: the check unit (``guest/cfsboot_check.py``)
writes ``PASS name`` / ``FAIL name: reason`` lines to a virtio-serial port
that QEMU backs with a host file. The serial console is captured to a log
(each line prefixed with seconds since QEMU start) and kept under the results
directory; any failure raises ``VmError`` carrying its last 50 lines.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

QEMU = "qemu-system-x86_64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
VERDICT_PORT = "cfsboot.verdict"
# The guest check unit writes here (udev names virtio ports by their name).
GUEST_VERDICT_PATH = f"/dev/virtio-ports/{VERDICT_PORT}"
LOG_TAIL_LINES = 50
# Console lines after which waiting for the timeout would only waste minutes.
# systemd's and dracut's emergency shells.
STOP_ON = (
    "You are in emergency mode",
    "Give root password for maintenance",
    "Entering emergency mode",
)
# FW_CFG_MAX_FILE_PATH (56) in QEMU's include/standard-headers/linux/qemu_fw_cfg.h, minus the NUL.
FW_CFG_MAX_NAME = 55


class BootMode(enum.StrEnum):
    DIRECT = "direct"  # -kernel/-initrd/-append, no firmware
    UEFI = "uefi"  # OVMF, boots whatever the ESP on the first disk holds


class DiskFormat(enum.StrEnum):
    RAW = "raw"
    QCOW2 = "qcow2"


@dataclass(frozen=True)
class Disk:
    path: Path
    format: DiskFormat = DiskFormat.RAW


@dataclass(frozen=True)
class VmConfig:
    """One guest. Direct mode needs kernel (and usually initrd and append)."""

    disks: tuple[Disk, ...]
    mode: BootMode = BootMode.DIRECT
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = ""
    memory_mib: int = 2048
    smp: int = 2
    timeout: float = 300.0
    ovmf_code: Path = OVMF_CODE
    ovmf_vars_template: Path = OVMF_VARS
    # (name, string) items the guest reads from /sys/firmware/qemu_fw_cfg/by_name/NAME/raw;
    # names start with "opt/" (QEMU's rule for user items).
    fw_cfg: tuple[tuple[str, str], ...] = ()
    # (name, host file) items, e.g. a check script (guest/cfsboot_check.py's check-script).
    fw_cfg_files: tuple[tuple[str, Path], ...] = ()
    # A virtio NIC on QEMU user networking: the guest gets 10.0.2.15 by DHCP and
    # reaches the host's 127.0.0.1 as 10.0.2.2.
    network: bool = False
    extra_args: tuple[str, ...] = ()


class VmError(Exception):
    """A boot that did not produce the expected verdict (message ends with the serial tail)."""


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    reason: str = ""


@dataclass(frozen=True)
class VerdictReport:
    """What the guest wrote to the verdict port."""

    verdicts: tuple[Verdict, ...] = ()
    # "DATA scenario key value" lines: measurements reported by scenarios.
    data: dict[str, dict[str, str]] = field(default_factory=dict)
    begun: tuple[str, ...] = ()
    done: bool = False
    garbage: tuple[str, ...] = ()

    def verdict(self, name: str) -> Verdict | None:
        """The last verdict for name (a scenario reports once; the last one wins)."""
        for v in reversed(self.verdicts):
            if v.name == name:
                return v
        return None


def parse_verdicts(text: str) -> VerdictReport:
    """Parse the verdict port's content (see guest/cfsboot_check.py)."""
    verdicts: list[Verdict] = []
    data: dict[str, dict[str, str]] = {}
    begun: list[str] = []
    garbage: list[str] = []
    done = False
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        word, _, rest = line.partition(" ")
        if word == "PASS" and rest and " " not in rest:
            verdicts.append(Verdict(rest, True))
        elif word == "FAIL" and rest:
            name, sep, reason = rest.partition(": ")
            if not sep:
                name, reason = rest.rstrip(":"), ""
            verdicts.append(Verdict(name, False, reason))
        elif word == "BEGIN" and rest:
            begun.append(rest)
        elif word == "DATA" and len(rest.split(" ", 2)) >= 2:
            scenario, key, *value = rest.split(" ", 2)
            data.setdefault(scenario, {})[key] = value[0] if value else ""
        elif line == "DONE":
            done = True
        else:
            garbage.append(line)
    return VerdictReport(tuple(verdicts), data, tuple(begun), done, tuple(garbage))


def qemu_argv(
    config: VmConfig,
    *,
    verdict_file: Path,
    ovmf_vars: Path | None = None,
) -> list[str]:
    """The full QEMU command line; the serial console goes to stdout."""
    argv = [
        QEMU,
        "-accel", "tcg",
        "-machine", "q35",
        "-cpu", "max",
        "-smp", str(config.smp),
        "-m", str(config.memory_mib),
        "-nodefaults",
        "-display", "none",
        "-monitor", "none",
        "-serial", "stdio",
        # Reboots and panics (with panic=-1) end the run instead of looping.
        "-no-reboot",
        "-device", "virtio-rng-pci",
    ]  # fmt: skip
    for i, disk in enumerate(config.disks):
        argv += [
            "-drive",
            f"file={disk.path},format={disk.format},if=virtio,cache=unsafe,index={i}",
        ]
    argv += [
        "-device", "virtio-serial",
        "-chardev", f"file,id=verdict,path={verdict_file}",
        "-device", f"virtserialport,chardev=verdict,name={VERDICT_PORT}",
    ]  # fmt: skip
    if config.mode is BootMode.DIRECT:
        if config.kernel is None:
            raise ValueError("direct kernel boot needs a kernel")
        argv += ["-kernel", str(config.kernel)]
        if config.initrd is not None:
            argv += ["-initrd", str(config.initrd)]
        if config.append:
            argv += ["-append", config.append]
    else:
        if ovmf_vars is None:
            raise ValueError("UEFI boot needs a writable copy of the OVMF variables")
        argv += [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={config.ovmf_code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={ovmf_vars}",
        ]  # fmt: skip
    for name, value in config.fw_cfg:
        argv += ["-fw_cfg", fw_cfg_option(name, value)]
    for name, path in config.fw_cfg_files:
        argv += ["-fw_cfg", fw_cfg_file_option(name, path)]
    if config.network:
        argv += ["-nic", "user,model=virtio-net-pci"]
    argv += list(config.extra_args)
    return argv


def fw_cfg_option(name: str, value: str) -> str:
    """The -fw_cfg option for a string item (QEMU's option syntax doubles commas)."""
    if not name.startswith("opt/") or "," in name or len(name) > FW_CFG_MAX_NAME:
        raise ValueError(f"bad fw_cfg item name {name!r} (opt/..., no commas, at most 55 bytes)")
    return f"name={name},string={value.replace(',', ',,')}"


def fw_cfg_file_option(name: str, path: Path) -> str:
    """The -fw_cfg option for an item whose content is a host file."""
    fw_cfg_option(name, "")  # the same name rules
    return f"name={name},file={str(path).replace(',', ',,')}"


def overlay_argv(base: Path, overlay: Path, base_format: DiskFormat = DiskFormat.RAW) -> list[str]:
    """qemu-img command creating a qcow2 overlay whose writes leave base untouched."""
    return [
        "qemu-img", "create", "-q",
        "-f", "qcow2",
        "-b", str(base.resolve()),
        "-F", str(base_format),
        str(overlay),
    ]  # fmt: skip


def create_overlay(base: Path, overlay: Path, base_format: DiskFormat = DiskFormat.RAW) -> Disk:
    """A qcow2 overlay on base (several guests may share one base this way)."""
    subprocess.run(overlay_argv(base, overlay, base_format), check=True, stdin=subprocess.DEVNULL)
    return Disk(overlay, DiskFormat.QCOW2)


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return "(no serial log)"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class BootResult:
    exit_code: int | None  # None: killed at the timeout
    report: VerdictReport
    serial_log: Path
    results_dir: Path
    wall_seconds: float
    # Seconds since QEMU start at which each watched console marker first appeared.
    markers: dict[str, float]
    # The stop_on console pattern that made the harness kill the guest, if any.
    stopped_on: str | None = None
    # When cut_power killed the guest (seconds since start), if it did.
    power_cut_at: float | None = None

    def failure(self, message: str) -> VmError:
        return VmError(
            f"{message}\nserial log: {self.serial_log}\n"
            f"--- last {LOG_TAIL_LINES} lines ---\n{log_tail(self.serial_log)}"
        )


class _Console:
    """Copies the console to the log (lines prefixed with seconds since start),
    notes when watched markers appear and kills QEMU on a stop pattern."""

    def __init__(self, proc: subprocess.Popen[bytes], log_path: Path, started: float,
                 watch: Sequence[str], stop_on: Sequence[str],
                 cut_power: tuple[str, float] | None = None) -> None:  # fmt: skip
        self.cut_power = cut_power
        self.power_cut_at: float | None = None
        self.proc = proc
        self.log_path = log_path
        self.started = started
        self.watch = watch
        self.stop_on = stop_on
        self.markers: dict[str, float] = {}
        self.stopped_on: str | None = None

    def pump(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "w", encoding="utf-8", errors="replace") as log:
            for raw in iter(self.proc.stdout.readline, b""):
                now = time.monotonic() - self.started
                line = raw.decode(errors="replace").rstrip("\r\n")
                for marker in self.watch:
                    if marker not in self.markers and marker in line:
                        self.markers[marker] = now
                log.write(f"[{now:7.2f}] {line}\n")
                log.flush()
                for pattern in self.stop_on:
                    if self.stopped_on is None and pattern in line:
                        self.stopped_on = pattern
                        self.proc.kill()
                if self.cut_power and self.power_cut_at is None and self.cut_power[0] in line:
                    self.power_cut_at = now + self.cut_power[1]
                    threading.Timer(self.cut_power[1], self._cut).start()

    def _cut(self) -> None:
        """SIGKILL: the guest loses power with whatever it had not written yet."""
        if self.proc.poll() is None:
            self.proc.kill()


# Under TCG with two vCPUs the guest kernel very rarely dies while patching its own
# code at boot ("Oops: int3" in early initcalls, seen here once in ~100 boots): a
# failure of the emulator, not of what is tested. Such a boot is run again once.
EARLY_PANIC = "Kernel panic - not syncing"
EARLY_PANIC_SECONDS = 30.0  # of guest time: before the initrd has mounted anything


def _early_panic(result: BootResult) -> bool:
    if result.report.begun or not result.serial_log.exists():
        return False
    for line in result.serial_log.read_text(errors="replace").splitlines():
        if EARLY_PANIC in line:
            m = re.search(r"\]\s*\[\s*([0-9.]+)\]", line)
            return m is not None and float(m.group(1)) < EARLY_PANIC_SECONDS
    return False


def boot(
    config: VmConfig,
    results_dir: Path,
    *,
    watch: Sequence[str] = (),
    stop_on: Sequence[str] = STOP_ON,
    cut_power: tuple[str, float] | None = None,
) -> BootResult:
    """One boot (see _boot_once); run again once if the kernel panicked at its very start."""
    result = _boot_once(config, results_dir, watch=watch, stop_on=stop_on, cut_power=cut_power)
    if not _early_panic(result):
        return result
    kept = results_dir / "serial.log.early-panic"
    result.serial_log.rename(kept)
    print(f"qemu: the guest kernel panicked at boot under TCG ({kept}); booting again")
    return _boot_once(config, results_dir, watch=watch, stop_on=stop_on, cut_power=cut_power)


def _boot_once(
    config: VmConfig,
    results_dir: Path,
    *,
    watch: Sequence[str] = (),
    stop_on: Sequence[str] = STOP_ON,
    cut_power: tuple[str, float] | None = None,
) -> BootResult:
    """Boot the guest until it powers off (or the timeout kills it); never raises on verdicts.

    watch: console substrings whose first appearance is timed (BootResult.markers).
    stop_on: console substrings after which QEMU is killed at once (pass () when a
    test expects, say, emergency mode and wants to see what follows).
    cut_power: (console substring, seconds): kill QEMU that long after the substring
    first appears (a power cut at a chosen moment); BootResult.power_cut_at says when.
    """
    results_dir.mkdir(parents=True, exist_ok=True)
    serial_log = results_dir / "serial.log"
    verdict_file = results_dir / "verdict.txt"
    verdict_file.unlink(missing_ok=True)
    ovmf_vars = None
    if config.mode is BootMode.UEFI:
        ovmf_vars = results_dir / "ovmf_vars.fd"
        shutil.copyfile(config.ovmf_vars_template, ovmf_vars)
    argv = qemu_argv(config, verdict_file=verdict_file, ovmf_vars=ovmf_vars)
    (results_dir / "qemu.argv").write_text("\n".join(argv) + "\n")
    stderr_path = results_dir / "qemu.stderr"
    started = time.monotonic()
    with open(stderr_path, "wb") as stderr_file:
        # stderr to a file: a chatty QEMU must never block on a full pipe.
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr_file
        )
    console = _Console(proc, serial_log, started, watch, stop_on, cut_power)
    pump = threading.Thread(target=console.pump, daemon=True)
    pump.start()
    exit_code: int | None
    try:
        exit_code = proc.wait(timeout=config.timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        exit_code = None
    wall = time.monotonic() - started
    pump.join(timeout=10)
    if stderr_path.stat().st_size == 0:
        stderr_path.unlink()
    text = verdict_file.read_text(errors="replace") if verdict_file.exists() else ""
    return BootResult(
        exit_code if console.stopped_on is None else None,
        parse_verdicts(text),
        serial_log,
        results_dir,
        wall,
        console.markers,
        console.stopped_on,
        console.power_cut_at,
    )


def check_passed(result: BootResult, scenarios: Sequence[str]) -> None:
    """Raise VmError unless QEMU exited cleanly and every scenario reported PASS."""
    if result.stopped_on is not None:
        raise result.failure(f"guest stopped: the console showed {result.stopped_on!r}")
    if result.exit_code is None:
        raise result.failure(
            f"guest did not power off within the timeout ({result.wall_seconds:.0f} s)"
        )
    if result.exit_code != 0:
        stderr = result.results_dir / "qemu.stderr"
        detail = stderr.read_text().strip().splitlines()[-1:] if stderr.exists() else []
        raise result.failure(f"QEMU exited with status {result.exit_code} {' '.join(detail)}")
    problems = []
    for name in scenarios:
        v = result.report.verdict(name)
        if v is None:
            began = " (it began but never finished)" if name in result.report.begun else ""
            problems.append(f"no verdict for {name}{began}")
        elif not v.passed:
            problems.append(f"FAIL {name}: {v.reason}")
    if problems:
        raise result.failure("; ".join(problems))


def results_root() -> Path:
    """Where boots keep their logs: $CFSBOOT_VM_RESULTS or build/vm-results in the tree."""
    env = os.environ.get("CFSBOOT_VM_RESULTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "build" / "vm-results"
