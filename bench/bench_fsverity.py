"""fs-verity digest throughput: cfsboot.composefs.fsverity vs `fsverity digest` (fsverity-utils).

One random file (256 MiB, 64 MiB with --quick) in the page cache, digested
with sha256 and sha512 by both sides in alternating runs so that both see
the same machine load. Reported: median seconds, MB/s, and the ratio
reference time / cfsboot time (above 1: cfsboot is faster). Our library is
timed in-process; the `cfsboot fsverity digest` command (Python start-up
included) is timed too, for the record.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / d) for d in ("stager", "setup-root", "tests")]

from cfsboot.composefs.fsverity import digest_file  # noqa: E402
from cfstest import cli  # noqa: E402
from setuproot.contract import HashAlg  # noqa: E402

WORK = Path(os.environ.get("CFSBOOT_BENCH_TMP", "/var/tmp"))


def _tool() -> str | None:
    for cand in (shutil.which("fsverity"), "/var/cache/cfsboot/reftools-bin/fsverity"):
        if cand and os.path.exists(cand):
            return cand
    return None


def _quiet(argv: list[str], env: dict[str, str] | None = None) -> None:
    subprocess.run(argv, capture_output=True, check=True, env=env)


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB, 3 runs")
    parser.add_argument("--size-mib", type=int, help="file size (default 256)")
    parser.add_argument("--runs", type=int, help="runs per side (default 5)")
    args = parser.parse_args(argv)
    size = (args.size_mib or (64 if args.quick else 256)) << 20
    runs = args.runs or (3 if args.quick else 5)
    tool = _tool()
    if tool is None:
        print("fsverity tool not found (apt-get install fsverity)", file=sys.stderr)
        return 1
    env = cli.environ()
    command = cli.argv("fsverity", "digest")

    with tempfile.TemporaryDirectory(dir=WORK, prefix="bench-fsverity-") as tmp:
        path = Path(tmp) / "data"
        with open(path, "wb") as f:
            for _ in range(size >> 20):
                f.write(os.urandom(1 << 20))
        path.read_bytes()  # into the page cache
        print(f"file: {size >> 20} MiB, {runs} runs per side, reference: {tool}")
        worst = float("inf")
        for alg in HashAlg:
            expected = subprocess.run(
                [tool, "digest", "--compact", f"--hash-alg={alg}", str(path)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            if digest_file(path, alg).hex() != expected:
                print(f"{alg}: digests differ!", file=sys.stderr)
                return 1
            ours: list[float] = []
            ref: list[float] = []
            cmd: list[float] = []
            reference = [tool, "digest", f"--hash-alg={alg}", str(path)]
            ours_cmd = [*command, "--hash-alg", str(alg), str(path)]
            for _ in range(runs):
                ours.append(_time(functools.partial(digest_file, path, alg)))
                ref.append(_time(functools.partial(_quiet, reference)))
                cmd.append(_time(functools.partial(_quiet, ours_cmd, env)))
            mo, mr, mc = (statistics.median(x) for x in (ours, ref, cmd))
            ratio = mr / mo
            worst = min(worst, ratio)
            mb = size / 1e6
            print(
                f"{alg}: cfsboot {mo:.3f}s ({mb / mo:.0f} MB/s)"
                f"  fsverity {mr:.3f}s ({mb / mr:.0f} MB/s)"
                f"  ratio {ratio:.2f}x"
                f"  [cfsboot fsverity digest command: {mc:.3f}s, ratio {mr / mc:.2f}x]"
            )
        print(f"fsverity: worst ratio {worst:.2f}x (target >= 0.8x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
