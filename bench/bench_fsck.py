"""`cfsboot fsck --repo` on the test OS repository vs `sha512sum` of the same object files.

The repository is made by importing the VM test OS (vm-tests/osimage.py caches
its OCI layouts under CACHE/testos/oci-*/; the newest v1 is used, or --layout)
into a temporary repository. fsck reads and checks every object (fs-verity
digest in userspace: this host has no fs-verity), parses the image and the
import records; the reference hashes the same files once with sha512sum (one
process, through xargs). Both are whole commands (process start included),
run alternately on a warm page cache so that both see the same machine load.
Reported: median seconds, the ratio reference time / cfsboot time (above 1:
cfsboot is faster), the median CPU seconds of each (user + system, all
threads: what a loaded machine makes each pay in time), and the load average
before and after.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / d) for d in ("stager", "setup-root", "tests")]

from cfstest import cli  # noqa: E402

CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))
WORK = Path(os.environ.get("CFSBOOT_BENCH_TMP", "/var/tmp"))


def _layout() -> Path | None:
    found = sorted((CACHE / "testos").glob("oci-*/v1/index.json"), key=lambda p: p.stat().st_mtime)
    return found[-1].parent if found else None


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _timed(
    argv: list[str], *, env: dict[str, str] | None = None, stdin: bytes | None = None
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the command and its children)."""
    c, t = _cpu(), time.perf_counter()
    subprocess.run(argv, input=stdin, capture_output=True, check=True, env=env)
    return time.perf_counter() - t, _cpu() - c


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 runs per side")
    parser.add_argument("--layout", type=Path, help="OCI layout to import (default: test OS v1)")
    parser.add_argument("--runs", type=int, help="runs per side (default 5)")
    args = parser.parse_args(argv)
    runs = args.runs or (3 if args.quick else 5)
    layout = args.layout or _layout()
    if layout is None:
        print(
            f"no test OS layout in {CACHE}/testos (build one: python vm-tests/osimage.py)",
            file=sys.stderr,
        )
        return 1
    env = cli.environ()
    with tempfile.TemporaryDirectory(dir=WORK, prefix="bench-fsck-") as tmp:
        repo = Path(tmp) / "repo"
        subprocess.run(
            cli.argv("image", "import", f"oci:{layout}", "--repo", repo, "--init", "-q"),
            capture_output=True,
            check=True,
            env=env,
        )
        files = sorted(str(p) for p in (repo / "objects").glob("??/*"))
        size = sum(os.path.getsize(f) for f in files)
        names = b"\0".join(f.encode() for f in files)
        reference = ["xargs", "-0", "sha512sum"]
        ours = cli.argv("fsck", "--repo", repo)
        _timed(reference, stdin=names)  # warm the page cache
        print(
            f"repository: {len(files)} objects, {size / 1e6:.0f} MB (from {layout}),"
            f" {runs} runs per side; load average {_load()}"
        )
        mine: list[tuple[float, float]] = []
        ref: list[tuple[float, float]] = []
        for _ in range(runs):
            mine.append(_timed(ours, env=env))
            ref.append(_timed(reference, stdin=names))
        mo, mr = (statistics.median(w for w, _ in x) for x in (mine, ref))
        co, cr = (statistics.median(c for _, c in x) for x in (mine, ref))
        shutil.rmtree(repo)
    print(
        f"fsck: cfsboot {mo:.2f}s ({size / 1e6 / mo:.0f} MB/s), reference {mr:.2f}s"
        f" (sha512sum, {size / 1e6 / mr:.0f} MB/s), ratio {mr / mo:.2f}x;"
        f" CPU seconds {co:.2f} vs {cr:.2f}; load average after {_load()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
