"""CLI start-up: `cfsboot --help` and `cfsboot status --json` on an installed disk image.

Builds the tests' small OS image, installs it with `cfsboot install to-disk`
into a disk image, loop-mounts its root at its offset (as an admin working on
an offline disk does: the ESP is then found through the loop device and read
with mtools) and times both commands, N runs each. With `--base DIR` (another
checkout, e.g. `git worktree add /tmp/base main`) the same commands of that
tree run interleaved with this one's, run by run, so that load from elsewhere
falls on both alike; the ratio is this tree's median over the base's. Wall
time and CPU time (user + system, children included, which load from other
processes disturbs less) are both printed.

Needs root (loop mount). Quote the medians with `uptime`'s load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / d) for d in ("stager", "setup-root", "tests")]

from cfsboot.boot.gpt import read_layout  # noqa: E402
from cfstest import cli  # noqa: E402
from cfstest.osimages import os_image  # noqa: E402


def env_for(tree: Path) -> dict[str, str]:
    env = cli.environ(src=tree)
    # The warm-up run writes the bytecode, as an installed package has it: a tree whose .pyc
    # files are stale would otherwise compile its changed modules on every run.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


@contextmanager
def installed(tmp: Path) -> Iterator[Path]:
    """The root filesystem of a freshly installed disk image, loop-mounted."""
    ref = os_image(tmp / "oci", "1")
    disk = tmp / "disk.img"
    cli.run("install", "to-disk", ref, disk, "--size", "3G", "-q")
    root = read_layout(disk).partitions[1]
    mnt = tmp / "root"
    mnt.mkdir()
    opts = f"loop,offset={root.start},sizelimit={root.size}"
    subprocess.run(["mount", "-o", opts, disk, mnt], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", mnt], check=True)


def time_once(tree: Path, args: list[str | Path]) -> tuple[float, float]:
    """(wall, CPU = user + system of the command and its children) in ms."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cli.argv(*args), env=env_for(tree), stdout=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall * 1000, cpu * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 runs instead of 21")
    parser.add_argument("--runs", type=int, help="runs per command and tree")
    parser.add_argument("--base", type=Path, help="a checkout to compare with")
    args = parser.parse_args(argv)
    runs = args.runs or (5 if args.quick else 21)
    if os.getuid() != 0:
        print("bench_startup: needs root (loop mount)", file=sys.stderr)
        return 1
    trees = {"this": REPO, **({"base": args.base.resolve()} if args.base else {})}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp, installed(Path(tmp)) as mnt:
        run_dir = Path(tmp) / "run"
        commands: dict[str, list[str | Path]] = {
            "--help": ["--help"],
            "status --json": ["status", "--json", "--sysroot", mnt, "--run-dir", run_dir],
        }
        times: dict[tuple[str, str], list[tuple[float, float]]] = {}
        for name, cmd in commands.items():
            for tree in trees.values():
                time_once(tree, cmd)  # warm-up: page cache, bytecode
            for _ in range(runs):
                for label, tree in trees.items():
                    times.setdefault((name, label), []).append(time_once(tree, cmd))
        print(f"{runs} runs each, load average {os.getloadavg()[0]:.2f} at the end")
        for name in commands:
            for i, what in enumerate(("wall", "CPU")):
                medians = {
                    label: statistics.median(t[i] for t in times[(name, label)]) for label in trees
                }
                line = "  ".join(f"{label} {ms:6.1f} ms" for label, ms in medians.items())
                if "base" in medians:
                    line += f"  (this/base {medians['this'] / medians['base']:.3f})"
                print(f"cfsboot {name:14} {what:4} median: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
