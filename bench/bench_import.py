"""Directory import: `tree_from_directory(SRC, digest_store=…)` + build_image vs C
`mkcomposefs --digest-store=… SRC out.img`.

Both read the same directory (default /usr; /usr/share/doc with --quick),
hash every file over 64 bytes, copy the contents into a fresh digest store
and write the image. Runs alternate so that both see the same machine load;
dirty data is flushed before each run, so no run pays for the previous one's
writeback. Cold (the default, issue 16's condition; needs root): the page
cache is dropped before every run of either side; `--warm` warms it once
instead. Reported: median seconds, MB/s of file content, the throughput ratio
reference time / cfsboot time (above 1: cfsboot is faster), the figure line
(time ratio cfsboot / reference: goal <= 0.667, i.e. 1.5x C's throughput),
whether the images are byte-identical, and each run's CPU time (user + sys) and
load average with the medians of the CPU times: on a loaded machine cfsboot's
eight threads get a larger share of the CPU than mkcomposefs's two, so there the
CPU times compare the work done better than the wall times.
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

sys.path.insert(0, str(HERE))

from cfsboot.composefs.srctree import tree_from_directory  # noqa: E402
from figures import figure  # noqa: E402
from reference import REFTOOLS, WORK, byte_compile  # noqa: E402


def _content(src: Path) -> tuple[int, int]:
    """(regular files, bytes in them) under src, every name counted as C counts it."""
    files = total = 0
    for dirpath, _dirs, names in os.walk(src):
        for n in names:
            st = os.lstat(os.path.join(dirpath, n))
            if st.st_mode & 0o170000 == 0o100000:
                files += 1
                total += st.st_size
    return files, total


def _cpu() -> tuple[float, float]:
    """(user, sys) CPU seconds of this process and its waited-for children so far:
    cfsboot runs in this process, mkcomposefs as a child."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime


def _load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def ours(src: Path, store: Path, out: Path) -> None:
    tree = tree_from_directory(src, digest_store=store)
    try:
        from cfsboot.composefs.erofs.writer import build_image
    except ImportError:  # the writer is optional for this benchmark
        return
    out.write_bytes(build_image(tree))


def reference(src: Path, store: Path, out: Path) -> None:
    subprocess.run(
        [str(REFTOOLS / "mkcomposefs"), f"--digest-store={store}", str(src), str(out)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="/usr/share/doc, 1 run per side")
    parser.add_argument("--source", type=Path, help="directory to import (default /usr)")
    parser.add_argument("--runs", type=int, help="runs per side (default 3)")
    parser.add_argument("--warm", action="store_true", help="warm page cache, not cold")
    args = parser.parse_args(argv)
    byte_compile()
    cold = not args.warm
    if cold and os.geteuid() != 0:
        print("not root: cannot drop the page cache; measuring warm", file=sys.stderr)
        cold = False
    src = args.source or Path("/usr/share/doc" if args.quick else "/usr")
    runs = args.runs or (1 if args.quick else 3)
    if not (REFTOOLS / "mkcomposefs").exists():
        print(f"C mkcomposefs not found in {REFTOOLS} (run `make setup`)", file=sys.stderr)
        return 1
    nfiles, nbytes = _content(src)
    state = "cold" if cold else "warm"
    print(f"source: {src} ({nfiles} files, {nbytes / 1e6:.0f} MB), {runs} {state} runs per side")
    if not cold:
        tree_from_directory(src)  # warm the page cache for both sides

    times: dict[str, list[float]] = {"cfsboot": [], "mkcomposefs": []}
    cpus: dict[str, list[float]] = {"cfsboot": [], "mkcomposefs": []}
    identical = True
    compared = False
    with tempfile.TemporaryDirectory(dir=WORK, prefix="bench-import-") as tmp:
        work = Path(tmp)
        for i in range(runs):
            for name, fn in (("cfsboot", ours), ("mkcomposefs", reference)):
                store, out = work / f"store-{name}", work / f"{name}.img"
                shutil.rmtree(store, ignore_errors=True)
                os.sync()
                if cold:
                    Path("/proc/sys/vm/drop_caches").write_text("3\n")
                c = _cpu()
                t = time.perf_counter()
                fn(src, store, out)
                times[name].append(time.perf_counter() - t)
                user, sys_ = (b - a for a, b in zip(c, _cpu(), strict=True))
                cpus[name].append(user + sys_)
                print(
                    f"  run {i + 1} {name}: {times[name][-1]:.2f}s,"
                    f" cpu {user:.2f}s user + {sys_:.2f}s sys, {_load()}",
                    flush=True,
                )
            py_img = work / "cfsboot.img"
            if py_img.exists():
                compared = True
                identical &= py_img.read_bytes() == (work / "mkcomposefs.img").read_bytes()
            for name in times:
                shutil.rmtree(work / f"store-{name}", ignore_errors=True)
        os.sync()
    mo = statistics.median(times["cfsboot"])
    mr = statistics.median(times["mkcomposefs"])
    mb = nbytes / 1e6
    print(
        f"import: cfsboot {mo:.2f}s ({mb / mo:.0f} MB/s)"
        f"  mkcomposefs {mr:.2f}s ({mb / mr:.0f} MB/s)"
        f"  throughput ratio {mr / mo:.2f}x"
    )
    co = statistics.median(cpus["cfsboot"])
    cr = statistics.median(cpus["mkcomposefs"])
    print(f"cpu (user+sys): cfsboot {co:.2f}s  mkcomposefs {cr:.2f}s  ratio {co / cr:.2f}")
    figure(
        f"--digest-store import of {src}, {state} (time)",
        mo,
        mr,
        "<= 0.667 (1.5x C's throughput)" if cold else "none (for the record)",
        unit="s",
    )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if compared:
        print(f"images byte-identical: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
