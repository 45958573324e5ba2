"""A system installed by `cfsboot install to-filesystem` into plain directories (root, ESP,
run directory), driven through the CLI as an admin would drive an offline disk."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cfstest import bootorder
from cfstest.cli import run as cfsboot


@dataclass
class System:
    root: Path
    esp: Path
    run: Path

    def cfs(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        opts: list[str | Path] = ["--sysroot", self.root, "--esp", self.esp, "--run-dir", self.run]
        return cfsboot(*args, *opts, check=check)

    def entries(self, entries_dir: str = "loader/entries") -> list[bootorder.Entry]:
        """The menu systemd-boot would show (cfstest.bootorder: the BLS rules, not cfsboot's)."""
        return list(bootorder.read_esp(self.esp, entries_dir).entries)

    def menu(self) -> list[str]:
        """Deployments (other systems' entries by file name) in menu order; the first boots."""
        menu = bootorder.read_esp(self.esp)
        # cfsboot writes no loader.conf `default`: the first entry is the default one.
        assert menu.default is (menu.entries[0] if menu.entries else None)
        return [bootorder.entry_digest(e, self.esp) or e.file for e in menu.entries]

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.cfs("status", "--json").stdout)
        return doc


def install(tmp: Path, imgref: str, *extra: str) -> System:
    root, esp = tmp / "root", tmp / "esp"
    root.mkdir(parents=True)
    esp.mkdir()
    cfsboot("install", "to-filesystem", imgref, root, "--esp", esp, "-q", *extra)
    return System(root, esp, tmp / "run")
