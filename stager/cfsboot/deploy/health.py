"""Health checks as scripts: `/usr/lib/cfsboot/health.d/*` (the image), `/etc/cfsboot/health.d/*`.

`cfsboot health-check` (cfsboot-health-check.service, after multi-user.target,
required by boot-complete.target) runs every executable file of both
directories in the lexical order of their names; a file in /etc replaces the
one of the same name in /usr/lib, and a symlink to /dev/null there turns it off.
Each check is required: one that exits non-zero or runs past its time (killed)
fails the service, so boot-complete.target is not reached and the boot is not
blessed. Every check runs, also after one failed, so that the record says
everything that is wrong. The results go to /run/cfsboot/health-checks.json for
`cfsboot assess-boot`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cfsboot.errors import CfsbootError

HEALTH_DIRS = (Path("/usr/lib/cfsboot/health.d"), Path("/etc/cfsboot/health.d"))
RESULTS_FILE = Path("/run/cfsboot/health-checks.json")
CHECK_TIMEOUT = 300.0


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: int | None  # exit status; None: did not finish in time, or could not run
    seconds: float
    last_line: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0

    def describe(self) -> str:
        """One line of printable text (a check's output, and the file it is read back
        from, may hold anything)."""
        how = "did not finish" if self.status is None else f"exited with status {self.status}"
        line = f"{self.name} {how}" + (f": {self.last_line}" if self.last_line else "")
        return "".join(c if c.isprintable() else " " for c in line)


def find_checks(dirs: tuple[Path, ...] = HEALTH_DIRS) -> list[Path]:
    """The checks to run, by name; later directories override earlier ones."""
    by_name: dict[str, Path] = {}
    for d in dirs:
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            continue
        for name in names:
            if not name.startswith("."):
                by_name[name] = d / name
    out = []
    for name in sorted(by_name):
        path = by_name[name]
        if os.path.realpath(path) == "/dev/null" or not path.is_file():
            continue
        if os.access(path, os.X_OK):
            out.append(path)
    return out


def run_checks(checks: list[Path], *, timeout: float = CHECK_TIMEOUT) -> list[CheckResult]:
    results = []
    for path in checks:
        started = time.monotonic()
        try:
            from cfsboot.linux.run import run  # status imports this module, and runs nothing

            proc = run([path], check=False, capture=True, timeout=timeout)
        except CfsbootError as e:
            results.append(CheckResult(path.name, None, time.monotonic() - started, e.message))
            continue
        text = (proc.stdout + proc.stderr).decode(errors="replace").strip()
        last = text.splitlines()[-1] if text else ""
        results.append(CheckResult(path.name, proc.returncode, time.monotonic() - started, last))
    return results


def write_results(results: list[CheckResult], path: Path = RESULTS_FILE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")


def read_results(path: Path = RESULTS_FILE) -> list[str]:
    """One line per failed check of this boot (none when nothing ran or all passed)."""
    try:
        docs = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: [[[[... nested
        return []
    out = []
    for d in docs if isinstance(docs, list) else []:
        r = _result(d)
        if r is not None and not r.ok:
            out.append(r.describe())
    return out


def _result(d: object) -> CheckResult | None:
    """One entry of the results file; None for one that is not (a damaged file)."""
    if not isinstance(d, dict):
        return None
    name, status, last = d.get("name"), d.get("status"), d.get("last_line", "")
    seconds = d.get("seconds")
    if status is not None and (not isinstance(status, int) or isinstance(status, bool)):
        return None
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return None
    if not isinstance(name, str) or not isinstance(last, str):
        return None
    return CheckResult(name, status, float(seconds), last)
