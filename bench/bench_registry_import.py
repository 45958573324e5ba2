"""Registry import, cold: `cfsboot image import docker://…` vs `skopeo copy` + `tar -x` + C
`mkcomposefs --digest-store`.

The input is the test OS image v1 (vm-tests/osimage.py: the trixie rootfs layer and
the cfsboot layer, zstd), served by Debian's docker-registry (vm-tests/registry.py)
on its own port. The layout is the current sources' build when it is cached, else
the newest cached build (the image's content is what matters here, not which
cfsboot it carries), else it is built (buildah, a minute or so).

- reference: `skopeo copy docker://… oci:DIR` (--src-tls-verify=false); every layer
  `tar -x` in order (--numeric-owner, only the xattrs a boot image keeps), its
  whiteouts applied after it; the boot image's normalisation on the tree
  (transform.py: `/` takes `/usr`'s metadata, `/run`, `/boot` and `/sysroot`
  emptied); C `mkcomposefs --digest-store --min-version=1 --print-digest`.
- cfsboot: `cfsboot image import --src-tls-verify=false` of the same reference into
  a fresh sha256 repository (made before the clock starts), as a subprocess; its own
  registry client streams the blobs when this machine's containers configuration
  allows (oci/registryconf.py: CFSBOOT_REGISTRY_CLIENT=skopeo in the environment
  measures the skopeo path instead).

Every run of either side starts cold: `sync`, then the page cache dropped (the
registry's storage included), and no run's files are deleted before the last run
ended (ext4 without a journal, see _timed). Runs alternate (5 by default: in `make bench`
the first of them follows the /usr import's writeback); reported are medians of the wall
time and of the CPU time (user + system of the side's process tree, not the
registry's), the ratio, and the load average. Both sides' image digests must be
equal. Needs root (drop_caches, tar's ownership) and docker-registry, skopeo, tar,
zstd and the reference C tools.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

from cfstest import cli  # noqa: E402
from figures import figure, load  # noqa: E402
from reference import (  # noqa: E402
    CACHE,
    REFTOOLS,
    WORK,
    byte_compile,
    mkcomposefs_digest_store,
    unpack_layout,
    vm_module,
)

PORT = 5092  # apart from the VM tests' (5000), test_registry's (5055) and bench_upgrade's (5091)
VARIANT = "v1"


def _missing() -> str | None:
    for tool in ("docker-registry", "skopeo", "tar", "zstd"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    if not (REFTOOLS / "mkcomposefs").exists():
        return f"{REFTOOLS}/mkcomposefs not found (make setup)"
    if os.geteuid() != 0:
        return "needs root (drop_caches, tar -x of root-owned files)"
    return None


def _layout() -> Path:
    """The test OS layout of VARIANT: current, else the newest cached, else built now."""
    osimage = vm_module("osimage")
    current = osimage._load(osimage.oci_dir(), VARIANT)
    if current is not None:
        return Path(current.layout)
    cached = sorted(
        (p for p in (CACHE / "testos").glob(f"oci-*/{VARIANT}") if (p / "index.json").exists()),
        key=lambda p: p.stat().st_mtime,
    )
    if cached:
        return cached[-1]
    return Path(osimage.ensure_images((VARIANT,))[VARIANT].layout)


def _drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _empty(path: Path) -> None:
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _normalise_for_boot(root: Path) -> None:
    """transform_for_oci + transform_for_boot (image/transform.py) on an unpacked tree."""
    usr = os.lstat(root / "usr")
    nsec = {}
    for name in ("run", "boot", "sysroot"):
        if (root / name).is_dir():
            nsec[name] = os.lstat(root / name).st_mtime_ns % 1_000_000_000
        else:  # cfsboot makes the mount point the image lacks (mtime 0, then /usr's seconds)
            (root / name).mkdir(mode=0o755)
            nsec[name] = 0
        _empty(root / name)
    os.chmod(root, usr.st_mode & 0o7777)
    os.chown(root, usr.st_uid, usr.st_gid)
    os.utime(root / "run", ns=(usr.st_mtime_ns, usr.st_mtime_ns))
    for name in ("boot", "sysroot"):  # only the seconds become /usr's
        mtime = usr.st_mtime_ns - usr.st_mtime_ns % 1_000_000_000 + nsec[name]
        os.utime(root / name, ns=(mtime, mtime))
    os.utime(root, ns=(usr.st_mtime_ns, usr.st_mtime_ns))


def reference_import(ref: str, work: Path) -> tuple[str, Path]:
    copy = work / "copy"
    subprocess.run(
        ["skopeo", "copy", "--quiet", "--src-tls-verify=false", ref, f"oci:{copy}:{VARIANT}"],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    rootfs = work / "rootfs"
    rootfs.mkdir()
    unpack_layout(copy, rootfs, xattrs_include="security.capability")
    _normalise_for_boot(rootfs)
    return mkcomposefs_digest_store(rootfs, work)


def cfsboot_import(ref: str, work: Path) -> tuple[str, Path]:
    proc = cli.run("image", "import", "--repo", work / "repo", "--src-tls-verify=false", "-q", ref)
    digest = proc.stdout.strip()
    return digest, work / "repo" / "images" / digest


def _prepare_repo(work: Path) -> None:
    cli.run("repo", "init", "--hash", "sha256", "--insecure", work / "repo")


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


Side = Callable[[str, Path], tuple[str, Path]]


def _timed(
    fn: Side, ref: str, prepare: bool, keep: Path | None, spent: list[Path] | None
) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, image digest) of one cold run; the image copied to keep.

    The run's files go to `spent`, deleted after the last run (None: at once): this
    machine's ext4 has no journal, and there a new inode is not taken from those freed
    in the last minute or so (ext4's recently_deleted check), so a run started just
    after deleting the previous one's 30,000 files pays seconds of system time looking
    for free inodes, varying from run to run — a cost of how the benchmark cleans up,
    not of either side.
    """
    work = Path(tempfile.mkdtemp(prefix="cfsboot-bench-regimport-", dir=WORK))
    if spent is not None:
        spent.append(work)
    try:
        if prepare:
            _prepare_repo(work)
        _drop_caches()
        cpu = _children_cpu()
        t = time.perf_counter()
        digest, image = fn(ref, work)
        wall, cpu = time.perf_counter() - t, _children_cpu() - cpu
        if keep is not None:
            shutil.copyfile(image, keep)
        return wall, cpu, digest
    finally:
        if spent is None:
            shutil.rmtree(work, ignore_errors=True)


def _unlinked_dump(image: Path) -> list[str]:
    """`composefs-info dump` of image with every hardlink written out as a file of its own.

    C mkcomposefs does not detect hardlinks in a directory (two names, two files);
    cfsboot keeps a layer's hardlinks, as composefs-rs does. Apart from that (and so
    from nlink), both images must say the same of every path.
    """
    out = subprocess.run(
        [str(REFTOOLS / "composefs-info"), "dump", str(image)],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    ).stdout.decode(errors="surrogateescape")
    rows = {f[0]: f for f in (line.split(" ") for line in out.splitlines())}
    lines = []
    for path, f in rows.items():
        if f[2].startswith("@"):  # path size @mode nlink uid gid rdev mtime TARGET …
            f = [path, *rows[f[8]][1:]]
        if not f[2].startswith("4"):  # not a directory
            f = [*f[:3], "1", *f[4:]]
        lines.append(" ".join(f))
    return sorted(lines)


def _sizes(layout: Path) -> tuple[float, int]:
    """(MB of layer blobs, number of layers) of the layout's VARIANT."""
    index = json.loads((layout / "index.json").read_text())
    mdigest = index["manifests"][0]["digest"]
    manifest = json.loads((layout / "blobs" / "sha256" / mdigest[7:]).read_text())
    return sum(d["size"] for d in manifest["layers"]) / 1e6, len(manifest["layers"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one run of each side")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    byte_compile()
    reason = _missing()
    if reason:
        print(f"registry import benchmark skipped: {reason}")
        return 0
    registry = vm_module("registry")
    layout = _layout()
    blob_mb, nlayers = _sizes(layout)
    runs = 1 if args.quick else args.runs
    # What both sides' runs leave until the end (see _timed), for each MB of compressed
    # layers: the reference's about 5 MB (the copy, the tree, the objects), cfsboot's 2.
    spent: list[Path] | None = []
    if shutil.disk_usage(WORK).free < runs * 8 * blob_mb * 1e6:
        print(f"not enough space in {WORK} to keep every run's files: each is deleted at once")
        spent = None
    ours: list[tuple[float, float, str]] = []
    ref_runs: list[tuple[float, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="cfsboot-bench-registry-", dir=WORK) as tmp:
        with registry.running(Path(tmp) / "registry", port=PORT) as reg:
            reg.push(layout, VARIANT)
            ref = reg.ref(VARIANT)
            print(f"input: {layout} as {ref}: {nlayers} layers, {blob_mb:.0f} MB compressed")
            kept = (Path(tmp) / "cfsboot.cfs", Path(tmp) / "reference.cfs")
            try:
                for i in range(runs):  # interleaved, so both sides see the same load
                    first = i == 0
                    ours.append(
                        _timed(cfsboot_import, ref, True, kept[0] if first else None, spent)
                    )
                    ref_runs.append(
                        _timed(reference_import, ref, False, kept[1] if first else None, spent)
                    )
            finally:
                for work in spent or ():
                    shutil.rmtree(work, ignore_errors=True)
            same = _unlinked_dump(kept[0]) == _unlinked_dump(kept[1])
    digests = ({d for _, _, d in ours}, {d for _, _, d in ref_runs})
    if not same or len(digests[0]) != 1 or len(digests[1]) != 1:
        print(f"images differ: cfsboot {digests[0]}, reference {digests[1]}")
        return 1
    o, r = (statistics.median(w for w, _, _ in x) for x in (ours, ref_runs))
    oc, rc = (statistics.median(c for _, c, _ in x) for x in (ours, ref_runs))
    print(
        f"images: cfsboot {digests[0].pop()}, reference {digests[1].pop()}: the same files,"
        " metadata and contents (C mkcomposefs writes hardlinks as separate files)"
    )
    print(f"cfsboot image import:   {o:6.2f} s wall, {oc:6.2f} s CPU")
    print(f"skopeo + tar + mkcfs:   {r:6.2f} s wall, {rc:6.2f} s CPU")
    print(
        f"runs: {runs}, cold; cfsboot {[round(w, 2) for w, _, _ in ours]},"
        f" reference {[round(w, 2) for w, _, _ in ref_runs]}; {load()}"
    )
    figure(
        "registry image import, cold (vs skopeo + tar -x + mkcomposefs)", o, r, "<= 0.35", unit="s"
    )
    figure("registry image import, cold, CPU time", oc, rc, "(reported)", unit="s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
