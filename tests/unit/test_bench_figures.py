"""bench/figures.py: the figure line every benchmark prints and the table `make bench` ends with."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from cfstest import REPO_ROOT


def _figures() -> ModuleType:
    spec = importlib.util.spec_from_file_location("figures", REPO_ROOT / "bench/figures.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("figures", module)
    spec.loader.exec_module(module)
    return module


def test_a_figure_line_and_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    f = _figures()
    line = f.figure("status --json (venv)", 41.23456, 20.5, "<= 2.0", unit="ms")
    assert line == (
        "status --json (venv): cfsboot 41.23 ms, reference 20.5 ms, ratio 2.011, goal <= 2.0"
    )
    assert capsys.readouterr().out == line + "\n"
    other = "EROFS build: cfsboot 1.2 s, reference 1.5 s, ratio 0.80, goal <= 1.0"
    text = f.table([line, "  run 1/5 composefs: 12 s", other], "load average 1.00")
    assert text.splitlines() == [
        "figures (load average 1.00):",
        "  figure                cfsboot   reference  ratio  goal",
        "  status --json (venv)  41.23 ms  20.5 ms    2.011  <= 2.0",
        "  EROFS build           1.2 s     1.5 s      0.80   <= 1.0",
    ]


def test_a_throughput_names_its_own_ratio() -> None:
    line = _figures().figure("fsverity MB/s", 900.0, 600.0, ">= 1.5", ratio=1.5)
    assert line == "fsverity MB/s: cfsboot 900, reference 600, ratio 1.500, goal >= 1.5"
