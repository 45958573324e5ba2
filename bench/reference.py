"""What several benchmarks share: where the caches and the reference tools are, the
VM harness's modules, and the reference side of an image import (unpack an OCI
layout's layers with tar, then C `mkcomposefs --digest-store`)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))
REFTOOLS = Path(os.environ.get("CFSBOOT_REFTOOLS", CACHE / "reftools-bin"))
WORK = Path(os.environ.get("CFSBOOT_BENCH_TMP", "/var/tmp"))

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
TAR_FLAGS = {"tar+gzip": "-z", "tar+zstd": "--zstd", "tar": ""}


def byte_compile() -> None:
    """Byte-compile cfsboot's sources, as installing the package does (py3compile), so that
    a timed `cfsboot` starts as an installed one: where PYTHONDONTWRITEBYTECODE is set (these
    machines' environment) it would otherwise compile some 60 modules at every run, 0.03 s
    of an import's CPU."""
    root = HERE.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(root / "stager"), str(root / "setup-root")],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def vm_module(name: str) -> ModuleType:
    """A module of the VM harness (vm-tests/ is not a package)."""
    vm_tests = HERE.parent / "vm-tests"
    if str(vm_tests) not in sys.path:
        sys.path.insert(0, str(vm_tests))
    return importlib.import_module(name)


def unpack_layout(layout: Path, rootfs: Path, *, xattrs_include: str) -> None:
    """Every layer of the (one-image) OCI layout `layout` `tar -x`ed into rootfs in order,
    as root and with the xattrs `xattrs_include` names, each layer's whiteouts applied
    after it."""
    blobs = layout / "blobs" / "sha256"
    mdigest = json.loads((layout / "index.json").read_text())["manifests"][0]["digest"]
    manifest = json.loads((blobs / mdigest[7:]).read_text())
    for layer in manifest["layers"]:
        flag = TAR_FLAGS[layer["mediaType"].rpartition(".")[2]]
        argv = ["tar", "-x", *([flag] if flag else []), "--numeric-owner", "--xattrs"]
        argv += [f"--xattrs-include={xattrs_include}", "-C", str(rootfs)]
        argv += ["-f", str(blobs / layer["digest"][7:])]
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        apply_whiteouts(rootfs)


def apply_whiteouts(root: Path) -> None:
    """What a layer's whiteout files say (OCI image spec, layer.md): delete, then drop them.

    The directory keeps the mtime the layer gave it (tar set it), as when the whiteouts
    are applied during the extraction.
    """
    for dirpath, dirs, names in os.walk(root):
        found = [n for n in (*names, *dirs) if n.startswith(WHITEOUT)]
        if not found:
            continue
        st = os.lstat(dirpath)
        for name in found:
            path = Path(dirpath) / name
            if name == OPAQUE:  # a layer is applied whole: nothing of the lower layers is left
                raise SystemExit(f"{path}: opaque whiteouts are not handled by this benchmark")
            target = Path(dirpath) / name[len(WHITEOUT) :]
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
            path.unlink()
        os.utime(dirpath, ns=(st.st_atime_ns, st.st_mtime_ns))
        dirs[:] = [d for d in dirs if not d.startswith(WHITEOUT)]


def mkcomposefs_digest_store(rootfs: Path, work: Path) -> tuple[str, Path]:
    """C `mkcomposefs --digest-store=WORK/store --min-version=1` of rootfs: (digest, image)."""
    image = work / "image.cfs"
    out = subprocess.run(
        [
            str(REFTOOLS / "mkcomposefs"),
            f"--digest-store={work / 'store'}",
            "--min-version=1",
            "--print-digest",
            str(rootfs),
            str(image),
        ],
        check=True,
        capture_output=True,
        stdin=subprocess.DEVNULL,
    )
    return out.stdout.decode().strip(), image
