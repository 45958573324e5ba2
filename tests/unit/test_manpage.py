"""cfsboot(8), generated from the argparse parser by debian/manpage.py."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

from cfsboot.cli import COMMANDS
from cfstest.gates import require_tools

SCRIPT = Path(__file__).resolve().parents[2] / "debian" / "manpage.py"
spec = importlib.util.spec_from_file_location("manpage", SCRIPT)
assert spec is not None and spec.loader is not None
manpage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(manpage)


def test_every_command_has_a_section(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1735689600")
    text = manpage.manpage()
    assert text.startswith('.TH CFSBOOT 8 "2025-01-01" "cfsboot ')
    sections = re.findall(r"^\.SS (.*)$", text, re.M)
    for command in COMMANDS:
        assert f"cfsboot {command}".replace("-", "\\-") in sections, command
    for sub in ("container lint", "container compute-digest", "container ukify", "image import"):
        assert f"cfsboot {sub}".replace("-", "\\-") in sections, sub
    # Options with their help, escaped for roff.
    assert ".TP\n\\fB\\-\\-root\\fR\\fI ROOT\\fR\n" in text


def test_roff_escapes() -> None:
    assert manpage.roff(".hidden") == "\\&.hidden"
    assert manpage.roff("a\\b-c") == "a\\eb\\-c"
    assert manpage.roff("DIR[:TAG] …") == "DIR[:TAG] \\[u2026]"


def test_groff_renders_it_without_warnings(tmp_path: Path) -> None:
    require_tools({"groff": "groff-base"})
    page = tmp_path / "cfsboot.8"
    page.write_text(manpage.manpage())
    proc = subprocess.run(
        ["groff", "-man", "-Tutf8", "-ww", "-z", str(page)], capture_output=True, text=True
    )
    assert (proc.returncode, proc.stderr) == (0, "")
