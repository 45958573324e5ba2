"""mkcomposefs: `cfsboot mkcomposefs --from-file` vs C `mkcomposefs --from-file` (1.0.8).

The input is a generated dumpfile shaped like an OS image (100k entries by default):
directories, external files with fs-verity digests, small inline files, symlinks, a few
devices and hardlinks, SELinux labels on everything and some other xattrs. Measured, in
alternating runs so both sides see the same machine load:

- cfsboot in-process: `dumpfile.parse` + `build_image` (and the build alone);
- cfsboot CLI: a `cfsboot mkcomposefs --from-file DUMP IMG` process;
- C: a `mkcomposefs --from-file DUMP IMG` process.

The same is measured on the trixie test OS's own dumpfile replicated six times under
different top directories (~97k entries: issue 16's target, <= 1.0x C for the CLI).
The images are checked to be byte-identical first. Reported: medians of wall and of CPU
(user + system) time and their ratios (< 1.0 means cfsboot is faster); on a loaded
machine the wall time is mostly waiting for a core or the disk, the CPU time is the work.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / d) for d in ("stager", "setup-root", "tests")] + [str(HERE)]

from cfsboot.composefs import dumpfile, native  # noqa: E402
from cfsboot.composefs.erofs.writer import build_image  # noqa: E402
from cfstest.modload import load_file  # noqa: E402
from figures import figure, load  # noqa: E402

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


def real_dump(work: Path, copies: int = 6) -> bytes:
    """The trixie test OS's own dumpfile (`composefs-info dump` of the C image of its rootfs),
    replicated `copies` times under different top directories (~16k entries each)."""
    testos = load_file(HERE.parent / "vm-tests" / "testos.py")
    rootfs = testos.ensure_base_rootfs(CACHE)
    img = work / "testos.img"
    subprocess.run([str(REFTOOLS / "mkcomposefs"), str(rootfs), str(img)], check=True)
    dump = subprocess.run(
        [str(REFTOOLS / "composefs-info"), "dump", str(img)], check=True, capture_output=True
    ).stdout
    img.unlink()
    lines = dump.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    root, rest = lines[0], lines[1:]
    out = [root]
    for k in range(copies):
        top = b"/os%d" % k
        out.append(top + b" " + root.split(b" ", 1)[1])
        # '@' hardlink targets (the PAYLOAD field) move with their copy
        out += [_relocate(line, top) for line in rest]
    return b"\n".join(out) + b"\n"


def _relocate(line: bytes, top: bytes) -> bytes:
    fields = line.split(b" ", 9)
    if fields[2].startswith(b"@"):
        fields[8] = top + fields[8]
    fields[0] = top + fields[0]
    return b" ".join(fields)


def _cpu() -> float:
    """User + system CPU seconds of this process and its waited-for children so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _time(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall and CPU seconds of one run. On a loaded machine (other jobs on the cores, other
    writers on the disk) the wall time is mostly waiting; the CPU time is the work."""
    cpu = _cpu()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start, _cpu() - cpu


def compare(label: str, dump: Path, runs: int) -> dict[str, float]:
    """Median seconds of each variant on one dumpfile (after checking the bytes are C's)."""
    c_tool = REFTOOLS / "mkcomposefs"
    data = dump.read_bytes()
    lines = data.count(b"\n")
    work = dump.parent
    c_img, cli_img, out_img = work / "c.img", work / "cli.img", work / "stdout.img"

    def run_c() -> None:
        subprocess.run([str(c_tool), "--from-file", str(dump), str(c_img)], check=True)

    def run_cli() -> None:
        subprocess.run(
            [str(CFSBOOT), "mkcomposefs", "--from-file", str(dump), str(cli_img)], check=True
        )

    def run_cli_stdout() -> None:
        with out_img.open("wb") as out:
            subprocess.run(
                [str(CFSBOOT), "mkcomposefs", "--from-file", str(dump), "-"],
                check=True,
                stdout=out,
            )

    images: list[bytearray] = []

    def run_inproc() -> None:
        raw = dump.read_bytes()
        images.append(build_image(dumpfile.parse(raw), link_paths=dumpfile.link_paths(raw)))

    tree = dumpfile.parse(data)
    links = dumpfile.link_paths(data)

    def run_build() -> None:
        build_image(tree, link_paths=links)

    run_c()
    run_cli()
    run_cli_stdout()
    run_inproc()
    expected = c_img.read_bytes()
    if not (expected == cli_img.read_bytes() == out_img.read_bytes() == images[-1]):
        raise SystemExit(f"{label}: images differ from C mkcomposefs: benchmark invalid")
    variants = {
        "C mkcomposefs": run_c,
        "cfsboot CLI": run_cli,
        "cfsboot CLI, no fsync": run_cli_stdout,
        "cfsboot parse+build": run_inproc,
        "cfsboot build only": run_build,
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    cpus: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, fn in variants.items():
            wall, cpu = _time(fn)
            times[name].append(wall)
            cpus[name].append(cpu)
            images.clear()
    medians = {name: statistics.median(samples) for name, samples in times.items()}
    cpu_medians = {name: statistics.median(samples) for name, samples in cpus.items()}
    c_median = medians["C mkcomposefs"]
    c_cpu = cpu_medians["C mkcomposefs"]
    print(f"{label}: {lines} entries, {runs} interleaved runs (medians), {load()}:")
    for name, median in medians.items():
        cpu = cpu_medians[name]
        print(
            f"  {name:22} wall {median:7.3f}s {median / c_median:5.2f}x C"
            f"   CPU {cpu:7.3f}s {cpu / c_cpu:5.2f}x C  {lines / median:9.0f} entries/s"
        )
    medians.update({f"{name} CPU": cpu for name, cpu in cpu_medians.items()})
    return medians


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="20k synthetic entries, 3 runs")
    parser.add_argument("--entries", type=int, help="synthetic dumpfile lines (default 100k)")
    parser.add_argument("--runs", type=int, help="runs per variant (default 7)")
    parser.add_argument("--copies", type=int, default=6, help="copies of the test OS dump")
    parser.add_argument("--no-real", action="store_true", help="skip the test OS dumpfile")
    args = parser.parse_args(argv)
    entries = args.entries or (20_000 if args.quick else 100_000)
    runs = args.runs or (3 if args.quick else 7)
    if not (REFTOOLS / "mkcomposefs").exists():
        print(f"C mkcomposefs not found in {REFTOOLS} (run `make setup`)", file=sys.stderr)
        return 1
    print(f"cfsboot EROFS writer: {native.describe()}")
    with tempfile.TemporaryDirectory(prefix="bench-mkcfs-") as tmp:
        work = Path(tmp)
        (work / "synthetic").mkdir()
        synthetic = work / "synthetic" / "in.dump"
        synthetic.write_bytes(generate_dump(entries))
        syn = compare("synthetic dumpfile", synthetic, runs)
        real = None
        if not args.no_real:
            (work / "real").mkdir()
            real_path = work / "real" / "in.dump"
            real_path.write_bytes(real_dump(work / "real", args.copies))
            real = compare(f"test OS dumpfile x{args.copies}", real_path, runs)
    if real is not None:
        figure(
            "mkcomposefs --from-file, test OS dump (CLI)",
            real["cfsboot CLI"],
            real["C mkcomposefs"],
            "<= 1.00",
            unit="s",
        )
        figure(
            "mkcomposefs --from-file, test OS dump (CLI, CPU time)",
            real["cfsboot CLI CPU"],
            real["C mkcomposefs CPU"],
            "none (for the record: the work, where the wall time waits on a loaded machine)",
            unit="s",
        )
        figure(
            "mkcomposefs --from-file, test OS dump (CLI, no fsync)",
            real["cfsboot CLI, no fsync"],
            real["C mkcomposefs"],
            "none (for the record)",
            unit="s",
        )
    figure(
        "mkcomposefs --from-file, synthetic dump (CLI)",
        syn["cfsboot CLI"],
        syn["C mkcomposefs"],
        "none (for the record)",
        unit="s",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
