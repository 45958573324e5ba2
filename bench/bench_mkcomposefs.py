"""mkcomposefs: `cfsboot mkcomposefs --from-file` vs C `mkcomposefs --from-file` (1.0.8).

The input is a generated dumpfile shaped like an OS image (100k entries by default):
directories, external files with fs-verity digests, small inline files, symlinks, a few
devices and hardlinks, SELinux labels on everything and some other xattrs. Measured, in
alternating runs so both sides see the same machine load:

- cfsboot in-process: `dumpfile.parse` + `build_image` (and the build alone);
- cfsboot CLI: a `cfsboot mkcomposefs --from-file DUMP IMG` process;
- C: a `mkcomposefs --from-file DUMP IMG` process.

The images are checked to be byte-identical first. Reported: medians and ratios (< 1.0
means cfsboot is faster).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / d) for d in ("stager", "setup-root", "tests")]

from cfsboot.composefs import dumpfile  # noqa: E402
from cfsboot.composefs.erofs.writer import build_image, dumpfile_link_paths  # noqa: E402

CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))
REFTOOLS = Path(os.environ.get("CFSBOOT_REFTOOLS", CACHE / "reftools-bin"))
CFSBOOT = Path(sys.executable).parent / "cfsboot"

_LABELS = [
    b"system_u:object_r:usr_t:s0",
    b"system_u:object_r:bin_t:s0",
    b"system_u:object_r:lib_t:s0",
    b"system_u:object_r:etc_t:s0",
    b"system_u:object_r:shlib_t:s0",
    b"system_u:object_r:man_t:s0",
]


def _esc(value: bytes) -> bytes:
    return value.replace(b"\\", b"\\\\").replace(b"=", b"\\x3d").replace(b"\0", b"\\x00")


def generate_dump(n_entries: int, seed: int = 1) -> bytes:
    """A deterministic dumpfile of about `n_entries` lines shaped like an OS tree."""
    rnd = random.Random(seed)
    mtime = b"1700000000.0"
    lines = [b"/ 4096 40755 2 0 0 0 " + mtime + b" - - - security.selinux=" + _LABELS[0] + b"\\x00"]
    dirs = [b""]
    files: list[bytes] = []
    count = 1
    while count < n_entries:
        # uniform parents give the log-depth, wide-and-shallow shape of OS trees
        parent = rnd.choice(dirs)
        name = b"%s-%d" % (rnd.choice([b"lib", b"share", b"doc", b"x", b"python3"]), count)
        path = parent + b"/" + name
        label = b" security.selinux=" + rnd.choice(_LABELS) + b"\\x00"
        kind = rnd.random()
        if kind < 0.09 or len(dirs) < 20:
            lines.append(b"%s 4096 40755 2 0 0 0 %s - - -%s" % (path, mtime, label))
            dirs.append(path)
        elif kind < 0.70:
            size = rnd.choice([65, 300, 4096, 9000, 70_000, 1 << 20, 50 << 20])
            digest = hashlib.sha256(path).hexdigest().encode()
            extra = b" user.checksum=%d" % (count % 7) if rnd.random() < 0.05 else b""
            lines.append(
                b"%s %d 100644 1 0 0 0 %s %s/%s - %s%s%s"
                % (path, size, mtime, digest[:2], digest[2:], digest, label, extra)
            )
            files.append(path)
        elif kind < 0.80:
            content = b"#%d\\n" % count
            lines.append(
                b"%s %d 100644 1 0 0 0 %s - %s -%s"
                % (path, len(content) - 1, mtime, content, label)
            )
        elif kind < 0.97:
            target = b"../lib/target-%d.so" % rnd.randrange(1000)
            lines.append(
                b"%s %d 120777 1 0 0 0 %s %s - -%s" % (path, len(target), mtime, target, label)
            )
        elif kind < 0.98:
            lines.append(b"%s 0 20644 1 0 0 %d %s - - -%s" % (path, 259 + count % 9, mtime, label))
        elif files:
            target = rnd.choice(files)
            lines.append(b"%s 0 @100644 - - - - 0.0 %s - -" % (path, target))
        else:
            continue
        count += 1
    # dumpfile order: parents first, then sorted paths (as `composefs-info dump` prints)
    root_line, rest = lines[0], lines[1:]
    rest.sort(key=lambda line: line.split(b" ", 1)[0].split(b"/"))
    return b"\n".join([root_line, *rest]) + b"\n"


def _time(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20k entries, 3 runs")
    parser.add_argument("--entries", type=int, help="number of dumpfile lines (default 100k)")
    parser.add_argument("--runs", type=int, help="runs per variant (default 7)")
    args = parser.parse_args(argv)
    entries = args.entries or (20_000 if args.quick else 100_000)
    runs = args.runs or (3 if args.quick else 7)
    c_tool = REFTOOLS / "mkcomposefs"
    if not c_tool.exists():
        print(f"C mkcomposefs not found in {REFTOOLS} (run `make setup`)", file=sys.stderr)
        return 1

    with tempfile.TemporaryDirectory(prefix="bench-mkcfs-") as tmp:
        work = Path(tmp)
        dump = work / "in.dump"
        data = generate_dump(entries)
        dump.write_bytes(data)
        lines = data.count(b"\n")
        c_img, cli_img = work / "c.img", work / "cli.img"

        def run_c() -> None:
            subprocess.run([str(c_tool), "--from-file", str(dump), str(c_img)], check=True)

        def run_cli() -> None:
            subprocess.run(
                [str(CFSBOOT), "mkcomposefs", "--from-file", str(dump), str(cli_img)], check=True
            )

        images: list[bytes] = []

        def run_inproc() -> None:
            raw = dump.read_bytes()
            root = dumpfile.parse(raw)
            images.append(build_image(root, link_paths=dumpfile_link_paths(raw)))

        tree = dumpfile.parse(data)
        links = dumpfile_link_paths(data)

        def run_build() -> None:
            build_image(tree, link_paths=links)

        run_c()
        run_cli()
        run_inproc()
        if not (c_img.read_bytes() == cli_img.read_bytes() == images[-1]):
            print("images differ from C mkcomposefs: benchmark invalid", file=sys.stderr)
            return 1
        variants = {
            "C mkcomposefs": run_c,
            "cfsboot CLI": run_cli,
            "cfsboot parse+build": run_inproc,
            "cfsboot build only": run_build,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(runs):
            for name, fn in variants.items():
                times[name].append(_time(fn))
                images.clear()

    c_median = statistics.median(times["C mkcomposefs"])
    print(f"mkcomposefs --from-file, {lines} entries, {runs} interleaved runs (median s):")
    for name, samples in times.items():
        median = statistics.median(samples)
        ratio = median / c_median
        print(f"  {name:22} {median:7.3f}s  {lines / median:9.0f} entries/s  {ratio:5.2f}x C")
    return 0


if __name__ == "__main__":
    sys.exit(main())
