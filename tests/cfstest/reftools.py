"""The reference C composefs tools (mkcomposefs, composefs-info 1.0.8), run by the tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


class RefTools:
    """The reference C composefs tools (mkcomposefs, composefs-info 1.0.8)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.mkcomposefs = bindir / "mkcomposefs"
        self.composefs_info = bindir / "composefs-info"
        self.fsverity = bindir / "fsverity"

    def run(self, tool: str, *args: str | os.PathLike[str], input: bytes | None = None) -> bytes:
        proc = subprocess.run(
            [str(self.bindir / tool), *map(str, args)],
            input=input,
            capture_output=True,
            check=False,
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"{tool} {' '.join(map(str, args))} failed ({proc.returncode}): "
                f"{proc.stderr.decode(errors='replace')}"
            )
        return proc.stdout
