"""README.md's "Build a bootable image", run as it is written there (= `make demo`).

The block after `<!-- demo -->` builds examples/debian/Containerfile with buildah,
pushes it to an OCI layout, installs it to a throw-away disk and boots it in QEMU
with vm-tests/boot_image.py, whose exit status is the guest check script's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MARKER = "<!-- demo -->"


def readme_block(text: str, marker: str = MARKER) -> str:
    """The first fenced code block after the marker line."""
    lines = text.splitlines()
    start = lines.index(marker) + 1
    if not lines[start].startswith("```"):
        raise ValueError(f"no code block right after {marker}")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("```"))
    return "\n".join(lines[start + 1 : end]) + "\n"


@pytest.mark.vm
def test_build_install_and_boot_the_example(vm_tools: None) -> None:
    block = readme_block((REPO / "README.md").read_text())
    started = time.monotonic()
    # The venv of this run stands in for the README's .venv/bin/python.
    script = block.replace(".venv/bin/python ", f"{sys.executable} ")
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PY": sys.executable},
        check=False,
    )
    print(f"\nREADME demo: {time.monotonic() - started:.0f} s\n{proc.stdout}")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[script] booted from composefs: composefs=" in proc.stdout
    assert "boot-image: the check passed" in proc.stderr
