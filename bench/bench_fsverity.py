"""fs-verity digest throughput: cfsboot.composefs.fsverity vs `fsverity digest` (fsverity-utils).

One random file (256 MiB, 64 MiB with --quick) in the page cache, digested
with sha256 and sha512 by both sides in alternating runs so that both see
the same machine load. Reported: median seconds, MB/s, and the ratio
reference time / cfsboot time (above 1: cfsboot is faster). Our library is
timed in-process; the `cfsboot fsverity digest` command (Python start-up
included) is timed too, for the record.

Then, in memory (400 MiB, 64 MiB with --quick): the leaf hashes (`_hash_blocks`) and
`digest_bytes` through the C module `_verity` and through the pure-Python code; and
the digest's wall time while a second thread decompresses zstd (as `image import`
does) or runs bytecode, with each implementation.
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
import threading
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / d) for d in ("stager", "setup-root", "tests")]

from cfsboot.composefs import fsverity  # noqa: E402
from cfsboot.composefs.fsverity import digest_file  # noqa: E402
from cfstest import cli  # noqa: E402
from figures import load  # noqa: E402
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


def _with(module: object, fn: Callable[[], object]) -> Callable[[], object]:
    """fn run with fsverity's C module set to `module` (None: the pure-Python code)."""

    def run() -> object:
        saved, fsverity._verity = fsverity._verity, module  # type: ignore[assignment]
        try:
            return fn()
        finally:
            fsverity._verity = saved

    return run


def _overlapped(fn: Callable[[], object], step: Callable[[], int]) -> tuple[float, int]:
    """Wall time of fn() on this thread while another thread repeats step() until fn is
    done; and the sum of what step() returned meanwhile (bytes, iterations)."""
    done = threading.Event()
    out = [0]

    def work() -> None:
        while not done.is_set():
            out[0] += step()

    worker = threading.Thread(target=work)
    t = time.perf_counter()
    worker.start()
    fn()
    done.set()
    elapsed = time.perf_counter() - t
    worker.join()
    return elapsed, out[0]


def _zstd_step() -> Callable[[], int]:
    """Decompress about 1 MiB of zstd (the standard library's sources, level 3: about a
    layer's speed); zstandard lets go of the GIL while it works."""
    import zstandard

    files = sorted(Path(os.__file__).parent.glob("*.py"))
    text = b"".join(f.read_bytes() for f in files)[: 1 << 20]
    frame = zstandard.ZstdCompressor(level=3).compress(text)
    d = zstandard.ZstdDecompressor()
    return lambda: len(d.decompress(frame))


def _python_step() -> int:
    """Pure bytecode, never letting go of the GIL of its own accord (tar parsing, say)."""
    n = 0
    for _ in range(1000):
        n += 1
    return n


def _sides() -> list[tuple[str, object]]:
    native = fsverity._verity
    if native is None:
        print("in memory: the C module _verity is not in use (make native?): pure Python only")
    return [("pure", None)] + ([("C", native)] if native is not None else [])


def _median_line(results: dict[str, list[float]], mb: float) -> str:
    med = {side: statistics.median(t) for side, t in results.items()}
    line = "  ".join(f"{side} {m:.3f}s ({mb / m:.0f} MB/s)" for side, m in med.items())
    return line + (f"  pure/C {med['pure'] / med['C']:.2f}x" if "C" in med else "")


def in_memory(size: int, runs: int) -> None:
    sides = _sides()
    data = os.urandom(size)
    small = memoryview(data)[: min(size, 16 << 20)]
    print(f"in memory: {size >> 20} MiB, {runs} runs per side, alternating")
    for alg in HashAlg:
        calls = {
            "_hash_blocks": lambda a=alg: fsverity._hash_blocks(a, data),
            "digest_bytes": lambda a=alg: fsverity.digest_bytes(data, a),
        }
        for name, fn in calls.items():
            times: dict[str, list[float]] = {side: [] for side, _ in sides}
            for _ in range(runs):
                for side, module in sides:
                    times[side].append(_time(_with(module, fn)))
            print(f"  {alg} {name}: {_median_line(times, size / 1e6)}")
        # The digest while a second thread works: decompression (which lets go of the
        # GIL, as image import's does) on the whole buffer; bytecode on 16 MiB (the pure
        # path waits up to a switch interval, 5 ms, to get the GIL back after each block).
        for what, step, buf in (
            ("zstd", _zstd_step(), memoryview(data)),
            ("bytecode", _python_step, small),
        ):
            walls: dict[str, list[float]] = {side: [] for side, _ in sides}
            for _ in range(runs):
                for side, module in sides:
                    run = _with(module, functools.partial(fsverity.digest_bytes, buf, alg))
                    walls[side].append(_overlapped(run, step)[0])
            mb = len(buf) / 1e6
            print(
                f"  {alg} digest_bytes of {len(buf) >> 20} MiB + a {what} thread: "
                f"{_median_line(walls, mb)}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 MiB, 3 runs")
    parser.add_argument("--size-mib", type=int, help="file size (default 256)")
    parser.add_argument("--runs", type=int, help="runs per side (default 5)")
    parser.add_argument("--memory-mib", type=int, help="in-memory buffer size (default 400)")
    parser.add_argument("--memory-only", action="store_true", help="only the in-memory part")
    args = parser.parse_args(argv)
    size = (args.size_mib or (64 if args.quick else 256)) << 20
    runs = args.runs or (3 if args.quick else 5)
    if args.memory_only:
        in_memory((args.memory_mib or (64 if args.quick else 400)) << 20, runs)
        print(load())
        return 0
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
    in_memory((args.memory_mib or (64 if args.quick else 400)) << 20, runs)
    print(load())
    return 0


if __name__ == "__main__":
    sys.exit(main())
