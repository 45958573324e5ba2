"""Run every benchmark in bench/ (each prints medians and ratios against the reference tool).

Every line any benchmark prints in the form "NAME: cfsboot X, reference Y,
ratio Z, goal G" (bench/figures.py) is collected, and the run ends with one
table of them and the load average. Benchmarks in SLOW (QEMU boots: longer
than 10 minutes) run only when named, or with --all.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import os
import sys
from pathlib import Path
from typing import TextIO

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from figures import LINE, table  # noqa: E402
from reference import byte_compile  # noqa: E402

SLOW = {"boot"}  # bench_boot: QEMU TCG boots, well over 10 minutes


class _Tee(io.TextIOBase):
    """stdout as the benchmarks see it: printed as it comes, figure lines also kept."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.lines: list[str] = []
        self._partial = ""

    def write(self, s: str) -> int:
        self.out.write(s)
        text = self._partial + s
        *done, self._partial = text.split("\n")
        self.lines += [line for line in done if LINE.match(line.strip())]
        return len(s)

    def flush(self) -> None:
        self.out.flush()


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} at the end"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, fewer runs")
    parser.add_argument(
        "--all", action="store_true", help=f"also the slow ones ({', '.join(SLOW)})"
    )
    parser.add_argument("only", nargs="*", help="names of benchmarks to run (e.g. fsverity)")
    args = parser.parse_args(argv)
    failed = 0
    byte_compile()  # every timed `cfsboot` starts as an installed one (reference.py)
    tee = _Tee(sys.stdout)
    real_stdout, sys.stdout = sys.stdout, tee
    try:
        for script in sorted(HERE.glob("bench_*.py")):
            name = script.stem.removeprefix("bench_")
            if args.only and name not in args.only:
                continue
            if not args.only and name in SLOW and not args.all:
                print(f"=== {name}: left out (slow: `make bench BENCH='{name}'` or --all) ===")
                continue
            print(f"=== {name} ===", flush=True)
            # What the benchmark before left dirty is written out first, not while this one
            # runs: C mkcomposefs --digest-store leaves gigabytes to the kernel's writeback,
            # and a side that syncs its output (ours) then waits behind them on the disk.
            os.sync()
            spec = importlib.util.spec_from_file_location(script.stem, script)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            rc = module.main(["--quick"] if args.quick else [])
            if rc:
                print(f"{name}: exit code {rc}", file=sys.stderr)
                failed += 1
    finally:
        sys.stdout = real_stdout
    print(table(tee.lines, _load()))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
