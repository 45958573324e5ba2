"""setup-root: wall time with real mounts, and what the dracut module adds to an initramfs.

1. Boots a composefs image the way the initramfs does (EROFS, overlay with the
   objects/ data-only layer, /etc overlay, /var bind, the /sysroot swap) from a
   loop-mounted ext4 in a private mount namespace, N times each with the frozen
   program run as the initrd unit runs it (`make freeze`: the interpreter with
   UNIT_CODE), through its sh wrapper, and as `python -m setuproot`, next to
   `python3 -I -S -c pass`. Goal: frozen median <= 15 ms.
2. Builds the trixie test OS's initramfs with dracut without and with the
   module and prints both compressed sizes. Goal: <= 2.0 MB added.

Needs root (mounts, loop devices); `--quick` does fewer runs and skips (2).
The boots run under SCHED_FIFO (`chrt -f 10`), as an initramfs has the CPU to
itself: on a shared, loaded machine plain medians mostly measure the other load
(`--no-fifo` to see that).
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent.parent / "tests")]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cfstest.modload import load_file  # noqa: E402
from figures import figure, load  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FROZEN = REPO / "build/setup-root/cfsboot-setup-root/cfsboot-setup-root"
REFTOOLS = Path(os.environ.get("CFSBOOT_REFTOOLS", "/var/cache/cfsboot/reftools-bin"))

# One namespace, N boots: mount the physical root, time setup-root, tear it all down.
_LOOP = r"""
set -eu
mount -t tmpfs tmpfs /run
for i in $(seq "$N"); do
    mount -o loop "$IMG" "$M"
    s=$EPOCHREALTIME
    "$@" --sysroot "$M" --cmdline "composefs=?$DIGEST"
    e=$EPOCHREALTIME
    echo "$s $e"
    umount -R "$M"
done
"""


def make_sysroot(tmp: Path) -> tuple[Path, str]:
    """An ext4 image holding a repository with one deployed image (~300 files)."""
    src = tmp / "src"
    for d in ("etc", "usr/bin", "usr/share/doc", "var", "sysroot", "run"):
        (src / d).mkdir(parents=True)
    for i in range(300):
        (src / "usr/share/doc" / f"f{i}").write_bytes(os.urandom(100 + 37 * i))
    (src / "etc/hostname").write_text("bench\n")
    phys = tmp / "physical"
    objects = phys / "composefs/objects"
    objects.mkdir(parents=True)
    (phys / "composefs/images").mkdir()
    img = tmp / "image.erofs"
    out = subprocess.run(
        [
            str(REFTOOLS / "mkcomposefs"),
            "--min-version=1",
            "--print-digest",
            f"--digest-store={objects}",
            str(src),
            str(img),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    digest = out.stdout.strip()
    (objects / digest[:2]).mkdir(exist_ok=True)
    img.rename(objects / digest[:2] / digest[2:])
    (phys / "composefs/images" / digest).symlink_to(f"../objects/{digest[:2]}/{digest[2:]}")
    deploy = phys / "state/deploy" / digest
    deploy.mkdir(parents=True)
    (phys / "state/os/default/var").mkdir(parents=True)
    (deploy / "var").symlink_to("../../os/default/var")
    ext4 = tmp / "physical.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(phys), str(ext4), "64M"],
        check=True,
        capture_output=True,
    )
    return ext4, digest


def time_boots(ext4: Path, digest: str, argv: list[str], n: int, tmp: Path) -> list[float]:
    mnt = tmp / "mnt"
    mnt.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(REPO / "setup-root"),
        "IMG": str(ext4),
        "M": str(mnt),
        "DIGEST": digest,
        "N": str(n),
    }
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "bash", "-c", _LOOP, "loop", *argv],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(argv)} failed: {proc.stderr.strip()}")
    return [
        (float(e) - float(s)) * 1000 for s, e in (line.split() for line in proc.stdout.splitlines())
    ]


def time_command(argv: list[str], n: int) -> list[float]:
    script = 'for i in $(seq "$N"); do s=$EPOCHREALTIME; "$@"; e=$EPOCHREALTIME; echo "$s $e"; done'
    out = subprocess.run(
        ["bash", "-c", script, "loop", *argv],
        env={"PATH": os.environ["PATH"], "N": str(n)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [(float(e) - float(s)) * 1000 for s, e in (line.split() for line in out.splitlines())]


def report(name: str, ms: list[float], base: float | None = None) -> float:
    med = statistics.median(ms)
    ratio = f"  x{med / base:.2f} of python3 -I -S -c pass" if base else ""
    print(f"  {name:34} median {med:6.1f} ms  min {min(ms):6.1f} ms  (n={len(ms)}){ratio}")
    return med


def initramfs_sizes(tmp: Path) -> None:
    testos = load_file(REPO / "vm-tests/testos.py")
    rootfs = testos.ensure_base_rootfs()
    kver = testos.kernel_version(rootfs)
    dest = tmp / "dest"
    subprocess.run(
        ["make", "-s", "-C", str(REPO / "dracut-module"), "install", f"DESTDIR={dest}"],
        check=True,
        capture_output=True,
    )
    sizes = {}
    for label, upper_src in (("without", None), ("with", dest)):
        upper = tmp / f"upper-{label}"
        upper.mkdir()
        if upper_src is not None:
            subprocess.run(["cp", "-a", f"{upper_src}/.", str(upper)], check=True)
        img = "/var/tmp/bench-initrd.img"
        testos.run_in_overlay(rootfs, testos.dracut_argv(kver, img), upper=upper)
        sizes[label] = (upper / img.lstrip("/")).stat().st_size
    added = sizes["with"] - sizes["without"]
    print(
        f"  initramfs (dracut, trixie, zstd): without {sizes['without'] / 1e6:.2f} MB,"
        f" with {sizes['with'] / 1e6:.2f} MB"
    )
    # The reference: what Rust's composefs-setup-root adds (issue 16), about 1.2 MB.
    figure("setup-root initramfs growth", added / 1e6, 1.2, "<= 2.0 MB", unit="MB")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs, no initramfs builds")
    parser.add_argument("--runs", type=int, help="boots per variant (default 40, 10 with --quick)")
    parser.add_argument("--no-initramfs", action="store_true", help="skip the two dracut builds")
    parser.add_argument("--no-fifo", action="store_true", help="boots at normal priority")
    args = parser.parse_args(argv)
    n = args.runs or (10 if args.quick else 40)
    freeze = load_file(REPO / "setup-root/freeze.py")
    freeze.main([])  # what the sources say now
    fifo = [] if args.no_fifo else ["chrt", "-f", "10"]
    python = str(FROZEN.parent / "python")
    with tempfile.TemporaryDirectory(prefix="bench-setuproot.") as t:
        tmp = Path(t)
        ext4, digest = make_sysroot(tmp)
        print(
            f"setup-root, real mounts on the host ({n} boots each,"
            f" {'normal priority' if args.no_fifo else 'SCHED_FIFO'}; {load()}):"
        )
        base = report(
            "python3 -I -S -c pass",
            time_command([*fifo, "/usr/bin/python3", "-I", "-S", "-c", "pass"], n),
        )
        frozen = report(
            "frozen, as the unit runs it",
            time_boots(ext4, digest, [*fifo, python, "-c", freeze.UNIT_CODE], n, tmp),
            base,
        )
        report(
            "frozen, through the sh wrapper",
            time_boots(ext4, digest, [*fifo, str(FROZEN)], n, tmp),
            base,
        )
        report(
            "python -S -m setuproot (venv)",
            time_boots(ext4, digest, [*fifo, sys.executable, "-S", "-m", "setuproot"], n, tmp),
            base,
        )
        figure("setup-root boot, real mounts", frozen, base, "<= 15 ms", unit="ms")
        if not (args.quick or args.no_initramfs):
            initramfs_sizes(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
