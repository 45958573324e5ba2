"""The frozen setup-root (setup-root/freeze.py): what every boot loads, and what it ships.

Every boot pays for each module setup-root imports, so the frozen program is held to
freeze.BOOT_MODULES: a change that pulls another module into every boot fails here
and has to say why in that list. Timing is bench/bench_setuproot.py's business.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

from cfstest.gates import missing_capability

REPO_ROOT = Path(__file__).resolve().parents[2]


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


freeze = _load(REPO_ROOT / "setup-root" / "freeze.py")

# A boot as the unit runs it (python -c UNIT_CODE), as a dry run with a config file, then
# the modules loaded on the way (printed with repr: the program has no json).
_BOOT = """
import sys
before = set(sys.modules)
sys.argv[1:] = ["--sysroot", "/nonexistent", "--cmdline", "composefs=?" + "0" * 64,
                "--config", sys.argv[1], "--dry-run"]
try:
    exec({code!r})
except SystemExit as e:
    code = e.code
print(repr([int(code), sorted(set(sys.modules) - before)]))
"""


@pytest.fixture(scope="module")
def frozen(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not freeze.SMALL_PYTHON.exists():
        missing_capability(f"no small interpreter in {freeze.SMALL_PYTHON} (make pymin)")
    out = tmp_path_factory.mktemp("frozen")
    freeze.freeze(out, freeze.SMALL_PYTHON)
    return Path(out / freeze.NAME)


def test_a_boot_loads_exactly_the_boot_modules(frozen: Path, tmp_path: Path) -> None:
    config = tmp_path / "setup-root-conf.toml"
    config.write_text('# as images ship it\n[etc]\nmount = "bind"\n[var]\nmount = "none"\n')
    proc = subprocess.run(
        [str(frozen / "python"), "-c", _BOOT.format(code=freeze.UNIT_CODE), str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    code, loaded = ast.literal_eval(proc.stdout.splitlines()[-1])
    assert code == 0
    new = sorted(set(loaded) - freeze.BOOT_MODULES)
    gone = sorted(freeze.BOOT_MODULES - set(loaded))
    assert not new, f"every boot would now import {new}: worth its start-up cost? (BOOT_MODULES)"
    assert not gone, f"no boot imports {gone} any more: take them out of BOOT_MODULES"
    for heavy in ("tomllib", "re", "enum", "typing", "datetime", "functools", "traceback"):
        assert heavy not in loaded


def test_the_program_ships_what_it_needs_and_no_more(frozen: Path) -> None:
    assert sorted(p.name for p in frozen.iterdir()) == [
        "cfsboot-setup-root", "lib.zip", "python", "python._pth",
    ]  # fmt: skip
    assert (frozen / "python._pth").read_text() == "lib.zip\n"
    with zipfile.ZipFile(frozen / "lib.zip") as zf:
        names = {n.removesuffix(".pyc").removesuffix("/__init__").replace("/", ".")
                 for n in zf.namelist()}  # fmt: skip
        assert all(i.compress_type == zipfile.ZIP_STORED for i in zf.infolist())
    # the boot modules that are not frozen into the interpreter, and the lazy ones
    assert {"setuproot.main", "setuproot.__main__", "ctypes", "tomllib", "traceback"} <= names
    assert not {n for n in names if n.split(".")[0] in ("pydoc", "unittest", "email", "http")}
    # the interpreter and its zip: what the module adds to every initramfs, uncompressed
    assert (frozen / "lib.zip").stat().st_size < 1_000_000
    assert (frozen / "python").stat().st_size < 5_000_000
