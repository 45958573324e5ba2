"""OCI import: `cfsboot image import` vs `skopeo copy` + unpack + C `mkcomposefs --digest-store`.

The input is a Debian rootfs (the trixie minbase chroot `make setup` builds,
or a bigger one cached under /var/cache/cfsboot/bench-rootfs) packed as a
one-layer gzip OCI image. Both sides start from that layout and end with the
file objects in a content store plus the composefs image; runs alternate so
that both see the same machine load. Reported: median seconds, MB/s of
uncompressed content, and the ratio cfsboot / reference.
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
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / d) for d in ("stager", "setup-root", "tests")]
sys.path.insert(0, str(HERE))

import reference  # noqa: E402
from cfsboot.composefs.repository import Repository  # noqa: E402
from cfsboot.image.importer import import_image  # noqa: E402
from cfstest.ocibuild import Compression, build_layout  # noqa: E402
from figures import figure  # noqa: E402
from reference import CACHE, REFTOOLS, WORK, mkcomposefs_digest_store, unpack_layout  # noqa: E402
from setuproot.contract import HashAlg  # noqa: E402


def _rootfs() -> Path | None:
    for p in (CACHE / "bench-rootfs", CACHE / "reftools"):
        if (p / "usr" / "bin").is_dir():
            return p
    return None


def _content_bytes(root: Path) -> int:
    total = 0
    seen: set[tuple[int, int]] = set()
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            st = os.lstat(os.path.join(dirpath, f))
            if (st.st_dev, st.st_ino) not in seen and os.path.isfile(os.path.join(dirpath, f)):
                seen.add((st.st_dev, st.st_ino))
                if not os.path.islink(os.path.join(dirpath, f)):
                    total += st.st_size
    return total


def cfsboot_import(layout: Path, work: Path) -> str:
    repo = Repository.init(work / "repo", algorithm=HashAlg.SHA256, insecure=True)
    return import_image(f"oci:{layout}:latest", repo).image_digest


def reference_import(layout: Path, work: Path) -> str:
    """skopeo copy into a fresh layout, unpack the layer, mkcomposefs --digest-store."""
    copy = work / "copy"
    subprocess.run(
        ["skopeo", "copy", "--quiet", f"oci:{layout}:latest", f"oci:{copy}:latest"],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    rootfs = work / "rootfs"
    rootfs.mkdir()
    unpack_layout(copy, rootfs, xattrs_include="*")
    return mkcomposefs_digest_store(rootfs, work)[0]


def _timed(fn: Callable[[Path, Path], str], layout: Path) -> float:
    work = Path(tempfile.mkdtemp(prefix="cfsboot-bench-", dir=WORK))
    try:
        subprocess.run(["sync"], check=True)
        t = time.perf_counter()
        fn(layout, work)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run of each side")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    reference.byte_compile()
    rootfs = _rootfs()
    missing = [t for t in ("skopeo", "tar") if shutil.which(t) is None]
    if rootfs is None or not (REFTOOLS / "mkcomposefs").exists() or missing:
        print(
            f"skipped: needs a rootfs under {CACHE}, {REFTOOLS}/mkcomposefs"
            f" and {missing or 'tools'}"
        )
        return 0
    runs = 1 if args.quick else args.runs
    with tempfile.TemporaryDirectory(prefix="cfsboot-bench-oci-", dir=WORK) as tmp:
        layout = Path(tmp) / "oci"
        t = time.perf_counter()
        build_layout(layout, [rootfs], compression=Compression.GZIP)
        pack = time.perf_counter() - t
        blob_mb = sum(p.stat().st_size for p in (layout / "blobs").rglob("*")) / 1e6
        content_mb = _content_bytes(rootfs) / 1e6
        print(
            f"input: {rootfs}: {content_mb:.0f} MB of file content, {blob_mb:.0f} MB gzip layout"
            f" (packed in {pack:.1f} s)"
        )
        ours: list[float] = []
        ref: list[float] = []
        for _ in range(runs):  # interleaved, so both sides see the same load
            ours.append(_timed(cfsboot_import, layout))
            ref.append(_timed(reference_import, layout))
    o, r = statistics.median(ours), statistics.median(ref)
    print(f"cfsboot image import:                        {o:6.2f} s  {content_mb / o:6.1f} MB/s")
    print(
        f"skopeo copy + tar -x + mkcomposefs --digest-store: {r:6.2f} s  {content_mb / r:6.1f} MB/s"
    )
    print(f"runs: {runs}; cfsboot {ours}, reference {ref}; load average {os.getloadavg()[0]:.2f}")
    figure("image import (vs skopeo copy + tar -x + mkcomposefs)", o, r, "<= 0.35", unit="s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
