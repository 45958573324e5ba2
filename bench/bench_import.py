"""Directory import: `cfsboot mkcomposefs --digest-store=… SRC out.img` vs C
`mkcomposefs --digest-store=… SRC out.img`.

Both read the same directory (default /usr; /usr/share/doc with --quick),
hash every file over 64 bytes, copy the contents into a fresh digest store
and write the image. Runs alternate so that both see the same machine load;
before each run dirty data is flushed and the page cache dropped (cold: both
read the files from the disk; --warm keeps the cache). Reported: median
seconds, MB/s of file content, the throughput ratio (cfsboot MB/s over C's:
above 1 cfsboot is faster), and whether the images are byte-identical.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / d) for d in ("stager", "setup-root", "tests")] + [str(HERE)]

from cfsboot.composefs.srctree import tree_from_directory  # noqa: E402
from figures import load  # noqa: E402

CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))
CFSBOOT = Path(sys.executable).parent / "cfsboot"
REFTOOLS = Path(os.environ.get("CFSBOOT_REFTOOLS", CACHE / "reftools-bin"))
WORK = Path(os.environ.get("CFSBOOT_BENCH_TMP", "/var/tmp"))


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


def ours(src: Path, store: Path, out: Path) -> None:
    subprocess.run(
        [str(CFSBOOT), "mkcomposefs", f"--digest-store={store}", str(src), str(out)],
        check=True,
        stdin=subprocess.DEVNULL,
    )


def drop_caches() -> None:
    """Flush dirty data, then drop the page cache (and dentries and inodes): cold reads."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


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
    parser.add_argument("--warm", action="store_true", help="keep the page cache warm")
    args = parser.parse_args(argv)
    src = args.source or Path("/usr/share/doc" if args.quick else "/usr")
    runs = args.runs or (1 if args.quick else 3)
    if not (REFTOOLS / "mkcomposefs").exists():
        print(f"C mkcomposefs not found in {REFTOOLS} (run `make setup`)", file=sys.stderr)
        return 1
    nfiles, nbytes = _content(src)
    cache = "warm" if args.warm else "cold"
    print(f"source: {src} ({nfiles} files, {nbytes / 1e6:.0f} MB), {runs} runs per side, {cache}")
    if args.warm:
        tree_from_directory(src)  # warm the page cache for both sides

    times: dict[str, list[float]] = {"cfsboot": [], "mkcomposefs": []}
    identical = True
    compared = False
    with tempfile.TemporaryDirectory(dir=WORK, prefix="bench-import-") as tmp:
        work = Path(tmp)
        for i in range(runs):
            for name, fn in (("cfsboot", ours), ("mkcomposefs", reference)):
                store, out = work / f"store-{name}", work / f"{name}.img"
                shutil.rmtree(store, ignore_errors=True)
                if args.warm:
                    os.sync()
                else:
                    drop_caches()
                t = time.perf_counter()
                fn(src, store, out)
                times[name].append(time.perf_counter() - t)
                print(f"  run {i + 1} {name}: {times[name][-1]:.2f}s", flush=True)
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
        f"  cfsboot {mo:.2f}s ({mb / mo:.0f} MB/s)  mkcomposefs {mr:.2f}s ({mb / mr:.0f} MB/s)"
        f"  {load()}"
    )
    print(
        f"mkcomposefs --digest-store, {src}, {cache} cache (throughput): cfsboot"
        f" {mb / mo:.0f} MB/s, reference {mb / mr:.0f} MB/s, ratio {mr / mo:.2f}, goal >= 1.50",
        flush=True,
    )
    if compared:
        print(f"images byte-identical: {'yes' if identical else 'NO'}")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
