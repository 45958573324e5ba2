"""fs-verity digest throughput: cfsboot.composefs.fsverity vs `fsverity digest` (fsverity-utils).

One random file (256 MiB, 64 MiB with --quick) in the page cache, digested
with sha256 and sha512 by both sides in alternating runs so that both see
the same machine load. Reported: median seconds, MB/s, and the ratio
reference time / cfsboot time (above 1: cfsboot is faster). Our library is
timed in-process; the `cfsboot fsverity digest` command (Python start-up
included) is timed too, for the record.

Then, in memory (400 MiB, 64 MiB with --quick): the leaf hashes (`_hash_blocks`) and
`digest_bytes` through the C module `_verity` and through the pure-Python code, and
the same digest while a second thread decompresses zstd (as `image import` does):
the wall time of both, and how far the decompression got, with each implementation.
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


def _overlapped(fn: Callable[[], object], frames: list[bytes]) -> tuple[float, int]:
    """Wall time of fn() on this thread while another decompresses `frames` over and
    over until fn is done; and how many bytes that thread decompressed meanwhile."""
    import zstandard

    done = threading.Event()
    out = [0]

    def decompress() -> None:
        d = zstandard.ZstdDecompressor()
        while not done.is_set():
            for frame in frames:
                out[0] += len(d.decompress(frame))
                if done.is_set():
                    break

    worker = threading.Thread(target=decompress)
    t = time.perf_counter()
    worker.start()
    fn()
    done.set()
    elapsed = time.perf_counter() - t
    worker.join()
    return elapsed, out[0]


def _layer_like_frames() -> list[bytes]:
    """zstd frames of about 1 MiB of the standard library's sources each (8 MiB in all):
    data that decompresses at about a layer's speed."""
    import zstandard

    files = sorted(Path(os.__file__).parent.glob("*.py"))
    text = b"".join(f.read_bytes() for f in files)[: 8 << 20]
    c = zstandard.ZstdCompressor(level=3)
    return [c.compress(text[i : i + (1 << 20)]) for i in range(0, len(text), 1 << 20)]


def in_memory(size: int, runs: int) -> None:

    native = fsverity._verity
    if native is None:
        print("in memory: the C module _verity is not in use (make native?): pure Python only")
    data = os.urandom(size)
    frames = _layer_like_frames()
    sides = [("pure", None)] + ([("C", native)] if native is not None else [])
    mb = size / 1e6
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
            med = {side: statistics.median(t) for side, t in times.items()}
            line = "  ".join(f"{side} {m:.3f}s ({mb / m:.0f} MB/s)" for side, m in med.items())
            ratio = f"  pure/C {med['pure'] / med['C']:.2f}x" if "C" in med else ""
            print(f"  {alg} {name}: {line}{ratio}")
        walls: dict[str, list[float]] = {side: [] for side, _ in sides}
        unpacked: dict[str, list[int]] = {side: [] for side, _ in sides}
        for _ in range(runs):
            for side, module in sides:
                run = _with(module, functools.partial(fsverity.digest_bytes, data, alg))
                wall, n = _overlapped(run, frames)
                walls[side].append(wall)
                unpacked[side].append(n)
        parts = []
        for side, _ in sides:
            wall = statistics.median(walls[side])
            pairs = zip(unpacked[side], walls[side], strict=True)
            rate = statistics.median(n / w for n, w in pairs)
            parts.append(f"{side} {wall:.3f}s, zstd thread {rate / 1e6:.0f} MB/s meanwhile")
        print(f"  {alg} digest_bytes + zstd thread: {'  '.join(parts)}")


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
