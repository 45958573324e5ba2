"""The dracut module's files without dracut: the initrd unit, module-setup.sh, the install.

tests/integration/test_dracut.py builds a real initramfs with them; these checks are
the fast part, so that a broken unit ordering shows up in every run.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
MODULE = REPO_ROOT / "dracut-module" / "90cfsboot"
UNIT = MODULE / "cfsboot-setup-root.service"
_spec = importlib.util.spec_from_file_location("freeze", REPO_ROOT / "setup-root" / "freeze.py")
assert _spec is not None and _spec.loader is not None
freeze = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(freeze)
PROGRAM = "/usr/lib/cfsboot/setup-root/cfsboot-setup-root"
INTERPRETER = "/usr/lib/cfsboot/setup-root/python"


def unit_directives(text: str) -> dict[tuple[str, str], list[str]]:
    """(section, key) -> every value given, in order (systemd allows repeated keys)."""
    out: dict[tuple[str, str], list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        out.setdefault((section, key.strip()), []).append(value.strip())
    return out


def words(d: dict[tuple[str, str], list[str]], section: str, key: str) -> list[str]:
    return [w for v in d.get((section, key), []) for w in v.split()]


def test_unit_runs_between_sysroot_mount_and_initrd_root_fs() -> None:
    d = unit_directives(UNIT.read_text())
    assert "sysroot.mount" in words(d, "Unit", "After")
    assert "sysroot.mount" in words(d, "Unit", "Requires")
    assert "initrd-root-fs.target" in words(d, "Unit", "Before")
    assert d[("Unit", "DefaultDependencies")] == ["no"]
    assert d[("Unit", "OnFailure")] == ["emergency.target"]
    # Either spelling of the karg triggers it ('|': any of the conditions).
    assert sorted(d[("Unit", "ConditionKernelCommandLine")]) == ["|composefs", "|composefs.digest"]
    assert d[("Service", "Type")] == ["oneshot"]
    # The interpreter with the wrapper's code, and the wrapper's name in the journal.
    assert d[("Service", "ExecStart")] == [f'{INTERPRETER} -c "{freeze.UNIT_CODE}"']
    assert d[("Service", "SyslogIdentifier")] == ["cfsboot-setup-root"]
    assert f"'{freeze.UNIT_CODE}'" in freeze.WRAPPER
    # The one-line failure reaches the console, not only the journal.
    assert "console" in d[("Service", "StandardError")][0]


def test_module_setup_has_the_dracut_hooks() -> None:
    text = (MODULE / "module-setup.sh").read_text()
    for hook in ("check", "depends", "installkernel", "install"):
        assert re.search(rf"^{hook}\(\) {{$", text, re.M), f"{hook}() missing"
    assert re.search(r"instmods erofs overlay", text)
    assert "cfsboot_dir=/usr/lib/cfsboot/setup-root" in text
    assert "cfsboot_conf=/usr/lib/composefs/setup-root-conf.toml" in text
    assert "add-wants initrd-root-fs.target cfsboot-setup-root.service" in text


def test_make_install_dracut_module(tmp_path: Path) -> None:
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    (frozen / "cfsboot-setup-root").write_text("#!/bin/sh\n")
    (frozen / "cfsboot-setup-root").chmod(0o755)
    (frozen / "lib.zip").write_bytes(b"PK")
    dest = tmp_path / "dest"
    proc = subprocess.run(
        [
            "make",
            "-s",
            "-C",
            str(REPO_ROOT),
            "install-dracut-module",
            f"DESTDIR={dest}",
            f"FROZEN={frozen}",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    installed = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if not p.is_dir())
    assert installed == [
        "usr/lib/cfsboot/setup-root/cfsboot-setup-root",
        "usr/lib/cfsboot/setup-root/lib.zip",
        "usr/lib/dracut/modules.d/90cfsboot/cfsboot-setup-root.service",
        "usr/lib/dracut/modules.d/90cfsboot/module-setup.sh",
    ]
    assert (dest / "usr/lib/dracut/modules.d/90cfsboot/module-setup.sh").stat().st_mode & 0o111


def test_make_install_without_a_frozen_program_fails(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT / "dracut-module"), "install", f"FROZEN={tmp_path}"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0
    assert f"no frozen setup-root in {tmp_path} (make freeze)" in proc.stderr


def test_stager_units_run_on_either_spelling_of_the_digest_karg() -> None:
    # Every stager unit that acts only on a system cfsboot booted: composefs= or
    # composefs.digest= (install --karg-style digest), as the initramfs's unit.
    conditioned = []
    for unit in sorted((REPO_ROOT / "stager" / "systemd").glob("cfsboot-*.*")):
        d = unit_directives(unit.read_text())
        cond = d.get(("Unit", "ConditionKernelCommandLine"))
        if cond is None:
            continue
        conditioned.append(unit.name)
        assert sorted(cond) == ["|composefs", "|composefs.digest"], unit.name
    assert conditioned == [
        "cfsboot-assess-boot.service",
        "cfsboot-bless-boot.service",
        "cfsboot-fetch-apply-updates.service",
        "cfsboot-fetch-apply-updates.timer",
        "cfsboot-health-check.service",
    ]
