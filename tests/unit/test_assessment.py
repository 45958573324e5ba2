"""Boot assessment: its configuration, health checks, and what a failed boot leads to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import cast

import pytest

from cfsboot.boot.bootloader import MenuEntry, SystemdBoot
from cfsboot.boot.boottype import BootType
from cfsboot.boot.counting import Tries
from cfsboot.boot.esp import DirEsp
from cfsboot.deploy import assessment, health
from cfsboot.deploy.assessment import AssessmentConfig, parse_config
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import CfsbootError

A, B = "aa" * 64, "bb" * 64


def test_config_keys() -> None:
    base = AssessmentConfig()
    assert base == AssessmentConfig(tries=3, reboot_on_failure=True)
    cfg = parse_config("tries = 5\nreboot-on-failure = false\n", name="x.toml", base=base)
    assert cfg == AssessmentConfig(5, False)
    assert parse_config("", name="x.toml", base=cfg) == cfg  # a later file changes what it sets


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tries = 10", "x.toml: tries must be a whole number from 0 (off) to 9"),
        ("tries = true", "x.toml: tries must be a whole number from 0 (off) to 9"),
        ("reboot-on-failure = 1", "x.toml: reboot-on-failure must be true or false"),
        ("retries = 2", "x.toml: unknown key 'retries' (tries, reboot-on-failure)"),
    ],
)
def test_config_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(CfsbootError) as e:
        parse_config(text, name="x.toml", base=AssessmentConfig())
    assert str(e.value) == message


def test_running_config_layers_etc_over_usr(tmp_path: Path) -> None:
    (tmp_path / "usr/lib/cfsboot").mkdir(parents=True)
    (tmp_path / "etc/cfsboot").mkdir(parents=True)
    (tmp_path / "usr/lib/cfsboot/boot-assessment.toml").write_text("tries = 2\n")
    (tmp_path / "etc/cfsboot/boot-assessment.toml").write_text("reboot-on-failure = false\n")
    assert assessment.running_config(tmp_path) == AssessmentConfig(2, False)


# -- health checks ------------------------------------------------------------------------------


def _script(path: Path, body: str, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(mode)


def test_health_checks_order_override_mask_and_results(tmp_path: Path) -> None:
    usr, etc = tmp_path / "usr", tmp_path / "etc"
    _script(usr / "10-ok", "echo fine")
    _script(usr / "20-fails", "echo one; echo 'disk is full' >&2; exit 3")
    _script(usr / "30-masked", "exit 1")
    _script(usr / "40-replaced", "exit 1")
    _script(usr / "50-not-executable", "exit 1", mode=0o644)
    _script(etc / "40-replaced", "exit 0")
    (etc / "30-masked").symlink_to("/dev/null")
    checks = health.find_checks((usr, etc))
    assert [p.name for p in checks] == ["10-ok", "20-fails", "40-replaced"]
    assert checks[2] == etc / "40-replaced"
    results = health.run_checks(checks)
    assert [(r.name, r.status, r.last_line) for r in results] == [
        ("10-ok", 0, "fine"),
        ("20-fails", 3, "disk is full"),
        ("40-replaced", 0, ""),
    ]
    out = tmp_path / "run/health-checks.json"
    health.write_results(results, out)
    assert health.read_results(out) == ["20-fails exited with status 3: disk is full"]
    assert health.read_results(tmp_path / "missing.json") == []
    (tmp_path / "deep.json").write_text("[" * 100_000)
    assert health.read_results(tmp_path / "deep.json") == []  # was a RecursionError


def test_a_check_that_cannot_run_fails_and_the_others_still_run(tmp_path: Path) -> None:
    """A script without its #! line is a failed check, not a crash of health-check."""
    (tmp_path / "10-no-shebang").write_text("exit 0\n")
    (tmp_path / "10-no-shebang").chmod(0o755)
    _script(tmp_path / "20-ok", "echo fine")
    results = health.run_checks(health.find_checks((tmp_path,)))
    assert [(r.name, r.status, r.ok) for r in results] == [
        ("10-no-shebang", None, False),
        ("20-ok", 0, True),
    ]
    assert results[0].describe() == (
        f'10-no-shebang did not finish: "{tmp_path}/10-no-shebang" could not be run:'
        " Exec format error"
    )


def test_a_check_that_hangs_is_killed(tmp_path: Path) -> None:
    _script(tmp_path / "hangs", "sleep 30")
    [r] = health.run_checks([tmp_path / "hangs"], timeout=0.5)
    assert r.status is None and not r.ok
    assert r.describe().startswith("hangs did not finish: ")


# -- a failed boot -------------------------------------------------------------------------------


class _FakeSysroot:
    def __init__(self, booted: str, root: Path) -> None:
        self._booted = booted
        self.shared_var = root / "var"

    def booted(self) -> str:
        return self._booted


def _entry(d: str, version: str, tries: Tries | None) -> MenuEntry:
    kdir = f"/EFI/Linux/bootc_composefs-{d}"
    return MenuEntry(
        d,
        BootType.BLS,
        "OS",
        version,
        "os",
        linux=f"{kdir}/vmlinuz",
        initrd=(f"{kdir}/initrd",),
        options=(f"composefs={d}",),
        tries=tries,
    )


def _assess(
    tmp_path: Path,
    tries: Tries | None,
    *,
    reached: bool = False,
    cfg: AssessmentConfig | None = None,
) -> tuple[bool, str]:
    (tmp_path / "esp").mkdir(parents=True)
    bl = SystemdBoot(DirEsp(tmp_path / "esp"))
    bl.write_menu([_entry(A, "2", tries), _entry(B, "1", None)])
    sysroot = cast(Sysroot, _FakeSysroot(A, tmp_path))
    failures = ["cfsboot-health-check.service: failed (exit-code)"]
    return assessment.assess(sysroot, bl, cfg or AssessmentConfig(), reached=reached,
                             failures=failures)  # fmt: skip


def test_a_good_boot_does_nothing(tmp_path: Path) -> None:
    assert _assess(tmp_path, Tries(2, 1), reached=True) == (
        False,
        f"deployment {A[:12]}…: boot-complete.target reached",
    )
    assert not (tmp_path / "var/lib/cfsboot/boot-assessment").exists()


def test_a_failed_try_reboots_and_is_recorded(tmp_path: Path) -> None:
    reboot, message = _assess(tmp_path, Tries(1, 1))
    assert reboot
    assert message == (
        f"deployment {A[:12]}… failed its boot assessment (cfsboot-health-check.service:"
        " failed (exit-code)), try 1 of 2; rebooting: trying again"
    )
    record = json.loads((tmp_path / f"var/lib/cfsboot/boot-assessment/{A}.json").read_text())
    assert (record["deployment"], record["triesDone"], record["triesLimit"]) == (A, 1, 2)
    assert record["failed"] == ["cfsboot-health-check.service: failed (exit-code)"]


def test_the_last_try_reboots_into_the_previous_deployment(tmp_path: Path) -> None:
    reboot, message = _assess(tmp_path, Tries(0, 2))
    assert reboot and message.endswith("try 2 of 2; rebooting: the previous deployment boots next")


def test_no_reboot_loop_without_a_fallback_or_a_trial(tmp_path: Path) -> None:
    reboot, message = _assess(tmp_path / "a", None)
    assert not reboot and message.endswith("it is not on trial: it stays booted")
    reboot, message = _assess(tmp_path / "b", Tries(2, 1), cfg=AssessmentConfig(3, False))
    assert not reboot and message.endswith("reboot-on-failure is off: it stays booted")


def test_out_of_tries_with_nothing_else_stays_booted(tmp_path: Path) -> None:
    (tmp_path / "esp").mkdir()
    bl = SystemdBoot(DirEsp(tmp_path / "esp"))
    bl.write_menu([_entry(A, "2", Tries(0, 3))])
    sysroot = cast(Sysroot, _FakeSysroot(A, tmp_path))
    reboot, message = assessment.assess(sysroot, bl, AssessmentConfig(), reached=False,
                                        failures=[])  # fmt: skip
    assert not reboot
    assert message == (
        f"deployment {A[:12]}… failed its boot assessment (boot-complete.target was not"
        " reached), try 3 of 3; no other deployment to fall back to: it stays booted"
    )
