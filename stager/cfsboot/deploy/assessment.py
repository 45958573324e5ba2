"""Boot assessment: how many tries a new deployment gets, blessing a good boot, acting on a bad one.

A deployment finalized by switch/upgrade boots on trial (cfsboot.boot.counting).
The boot is good when `boot-complete.target` is reached; the image's health
checks (cfsboot.deploy.health, and units `RequiredBy=boot-complete.target`)
can hold it back. Then:

- good: `cfsboot bless` ends the trial (not after a soft reboot: the boot
  loader, which counts, did not start the deployment, so its first full boot
  is its trial). On systemd-boot it runs systemd's own
  `systemd-bless-boot good` (via systemd-bless-boot.service, which systemd's
  generator pulls in when systemd-boot booted a counted entry; cfsboot's
  drop-in runs it on the ESP cfsboot finds, mounted or not); on GRUB it marks
  the entry's grubenv counter `good` (cfsboot-bless-boot.service).
- bad: `cfsboot assess-boot` (cfsboot-assess-boot.service, after
  boot-complete.target whether it was reached or not) records why in the shared
  /var (`/var/lib/cfsboot/boot-assessment/ID.json`, read by `status`) and,
  when the booted deployment is on trial and a reboot leads somewhere (a try
  left, or another deployment the boot loader prefers now), reboots. Once its
  tries are used up the boot loader passes it over: the previous deployment
  boots, with no one at the console.

Tries: `--boot-tries N` on the command line, else `/etc/cfsboot/boot-assessment.toml`
of the running system, else the new image's `/usr/lib/cfsboot/boot-assessment.toml`,
else 3. 0 turns counting off. The files hold `tries = N` and
`reboot-on-failure = true|false` (the latter read at boot, from the running
system's files).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cfsboot.boot.bootloader import Bootloader, BootloaderKind, MenuEntry
from cfsboot.boot.counting import MAX_TRIES, Tries
from cfsboot.boot.esp import DirEsp
from cfsboot.composefs.repository import Repository
from cfsboot.composefs.tree import Inode
from cfsboot.deploy.assessrecord import record_path
from cfsboot.deploy.health import RESULTS_FILE, read_results
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import die
from cfsboot.image import imagefiles
from cfsboot.linux import efivars
from cfsboot.linux.fsutil import write_file_atomic
from cfsboot.linux.lazyrun import run
from setuproot.contract import KargError, parse_cmdline

log = logging.getLogger(__name__)

CONFIG_NAME = "boot-assessment.toml"
IMAGE_CONFIG = f"usr/lib/cfsboot/{CONFIG_NAME}"
HOST_CONFIG = Path("/etc/cfsboot") / CONFIG_NAME
DEFAULT_TRIES = 3
BOOT_COMPLETE = "boot-complete.target"
SYSTEMD_BLESS_BOOT = "/usr/lib/systemd/systemd-bless-boot"


@dataclass(frozen=True)
class AssessmentConfig:
    tries: int = DEFAULT_TRIES
    reboot_on_failure: bool = True


def parse_config(text: str, *, name: str, base: AssessmentConfig) -> AssessmentConfig:
    """`base` with what the TOML file `name` sets; a bad file is a one-line error."""
    try:
        import tomllib

        doc = tomllib.loads(text)
    except RecursionError:
        die(f"{name}: invalid TOML: nested too deeply")
    except ValueError as e:  # TOMLDecodeError, or an integer of 4300+ digits
        die(f"{name}: {str(e).splitlines()[0]}")
    cfg = base
    for key, value in doc.items():
        if key == "tries":
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_TRIES:
                die(f"{name}: tries must be a whole number from 0 (off) to {MAX_TRIES}")
            cfg = replace(cfg, tries=value)
        elif key == "reboot-on-failure":
            if not isinstance(value, bool):
                die(f"{name}: reboot-on-failure must be true or false")
            cfg = replace(cfg, reboot_on_failure=value)
        else:
            die(f"{name}: unknown key {key!r} (tries, reboot-on-failure)")
    return cfg


def image_config(repo: Repository, tree: Inode) -> AssessmentConfig:
    data = imagefiles.read_file(repo, tree, IMAGE_CONFIG)
    if data is None:
        return AssessmentConfig()
    return parse_config(data.decode(errors="replace"), name=f"/{IMAGE_CONFIG} of the image",
                        base=AssessmentConfig())  # fmt: skip


def running_config(root: Path = Path("/")) -> AssessmentConfig:
    """The running system's: its /usr/lib file, then /etc's."""
    cfg = AssessmentConfig()
    for path in (root / IMAGE_CONFIG, root / HOST_CONFIG.relative_to("/")):
        try:
            text = path.read_text()
        except FileNotFoundError:
            continue
        cfg = parse_config(text, name=str(path), base=cfg)
    return cfg


def trial_tries(
    sysroot: Sysroot, repo: Repository, tree: Inode, override: int | None
) -> Tries | None:
    """The trial a newly staged deployment (image `tree`) gets; None: counting is off."""
    if override is not None:
        n = override
    else:
        n = image_config(repo, tree).tries
        if sysroot.live and HOST_CONFIG.exists():
            n = parse_config(HOST_CONFIG.read_text(), name=str(HOST_CONFIG),
                             base=AssessmentConfig(tries=n)).tries  # fmt: skip
    return Tries(n) if n > 0 else None


# ---------------------------------------------------------------------------------------
# Records of failed boots (in the shared /var)
# ---------------------------------------------------------------------------------------


def write_record(sysroot: Sysroot, depl: str, doc: dict[str, Any]) -> None:
    path = record_path(sysroot, depl)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file_atomic(path, (json.dumps(doc, indent=2) + "\n").encode())


def clear_record(sysroot: Sysroot, depl: str) -> None:
    record_path(sysroot, depl).unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------
# At boot
# ---------------------------------------------------------------------------------------


def _booted(sysroot: Sysroot) -> str:
    booted = sysroot.booted()
    if booted is None:
        die("this system was not booted from a cfsboot deployment (no composefs root)")
    return booted


def bless(sysroot: Sysroot, bl: Bootloader, *, deployment: str | None = None) -> str:
    """End the booted deployment's trial: its boot reached boot-complete.target.

    deployment: end that one's trial instead, by cfsboot's own rename (an admin's
    call, on a disk image or by hand).
    """
    done: str | None
    if deployment is not None:
        if deployment not in (m.deployment for m in bl.menu()):
            die(f"deployment {deployment[:12]}… is not in the boot menu")
        done = bl.bless(deployment)
        clear_record(sysroot, deployment)
        return done or f"deployment {deployment[:12]}… was not on trial: nothing to bless"
    booted = _booted(sysroot)
    if soft_rebooted(booted):
        return (
            f"deployment {booted[:12]}… runs after a soft reboot (the boot loader did not"
            " start it): its boot trial stays for its first full boot"
        )
    if bl.kind is BootloaderKind.SYSTEMD_BOOT:
        counted = efivars.boot_count_path()
        if counted is None:
            return "systemd-boot booted an entry without a boot counter: nothing to bless"
        if isinstance(bl.esp, DirEsp) and Path(SYSTEMD_BLESS_BOOT).exists():
            run([SYSTEMD_BLESS_BOOT, f"--path={bl.esp.root}", "good"])
            done = f"systemd-bless-boot marked {counted} good"
        else:
            done = bl.bless(booted, counter_path=counted)
    else:
        done = bl.bless(booted)
    clear_record(sysroot, booted)
    return done or f"deployment {booted[:12]}… was not on trial: nothing to bless"


def soft_rebooted(booted: str, cmdline_path: str = "/proc/cmdline") -> bool:
    """Whether `booted` came by a soft reboot: the kernel was started for another deployment."""
    try:
        with open(cmdline_path) as f:
            kargs = parse_cmdline(f.read())
    except (OSError, KargError):
        return False
    return bool(kargs) and all(k.digest != booted for k in kargs)


def boot_complete_reached() -> bool:
    out = run(["systemctl", "show", "-P", "ActiveState", BOOT_COMPLETE], capture=True)
    return out.stdout.decode().strip() == "active"


def failed_requirements() -> list[str]:
    """One line per unit boot-complete.target requires that did not succeed."""
    out = run(["systemctl", "show", "-P", "Requires", BOOT_COMPLETE], capture=True)
    units = out.stdout.decode().split()
    if not units:
        return []
    out = run(["systemctl", "show", "-p", "Id,ActiveState,Result", *units], capture=True)
    lines: list[str] = []
    for block in out.stdout.decode().split("\n\n"):
        props = dict(ln.partition("=")[::2] for ln in block.splitlines() if "=" in ln)
        state, result = props.get("ActiveState", ""), props.get("Result", "")
        if state == "failed" or result not in ("", "success"):
            lines.append(f"{props.get('Id', '?')}: {state} ({result or 'no result'})")
    return lines


def assess(
    sysroot: Sysroot,
    bl: Bootloader,
    cfg: AssessmentConfig,
    *,
    reached: bool,
    failures: list[str],
) -> tuple[bool, str]:
    """After boot-complete.target: (reboot?, what to say). Records a failed trial."""
    booted = _booted(sysroot)
    if reached:
        return False, f"deployment {booted[:12]}…: boot-complete.target reached"
    menu = bl.menu()
    entry = next((m for m in menu if m.deployment == booted), None)
    tries = entry.tries if entry is not None else None
    failures = failures + [f"health check {r}" for r in read_results(RESULTS_FILE) if r]
    why = "; ".join(failures) or "boot-complete.target was not reached"
    what = f"deployment {booted[:12]}… failed its boot assessment ({why})"
    if tries is None:
        return False, f"{what}; it is not on trial: it stays booted"
    write_record(sysroot, booted, _record(booted, entry, tries, failures))
    tried = f"try {tries.done} of {tries.limit}"
    if tries.left <= 0 and (not menu or menu[0].deployment == booted):
        return False, f"{what}, {tried}; no other deployment to fall back to: it stays booted"
    if not cfg.reboot_on_failure:
        return False, f"{what}, {tried}; reboot-on-failure is off: it stays booted"
    nxt = "the previous deployment boots next" if tries.left <= 0 else "trying again"
    return True, f"{what}, {tried}; rebooting: {nxt}"


def _record(
    booted: str, entry: MenuEntry | None, tries: Tries, failures: list[str]
) -> dict[str, Any]:
    return {
        "deployment": booted,
        "version": entry.version if entry is not None else "",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "bootId": _boot_id(),
        "triesDone": tries.done,
        "triesLimit": tries.limit,
        "failed": failures,
    }


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def reboot() -> None:
    os.sync()
    run(["systemctl", "--no-block", "reboot"])
