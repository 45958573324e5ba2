"""What SELinux labelling adds to an import: the test OS with and without a policy layer.

Inputs: the trixie test OS rootfs (vm-tests/testos.py) as one zstd layer,
and the same plus a second layer holding /etc/selinux of the SELinux oracle
chroot (Debian's selinux-policy-default, as `make setup` installs it). Each
is imported with `import_image(ref, None)` (`cfsboot image compute-id`:
every layer read, hashed, the boot image built), runs alternating. Reported:
medians of the whole import of each, and of the labelling itself
(`selabel.load_policy` + `selabel.relabel`, timed inside the import).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / d) for d in ("stager", "setup-root", "tests", "vm-tests")]

from cfsboot.image import selabel, transform  # noqa: E402
from cfsboot.image.importer import import_image  # noqa: E402
from cfstest.ocibuild import Compression, build_layout  # noqa: E402

CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))
ORACLE = CACHE / "selinux-oracle"
WORK = Path(os.environ.get("CFSBOOT_BENCH_TMP", "/var/tmp"))


def _load_testos() -> Any:
    spec = importlib.util.spec_from_file_location("testos", REPO / "vm-tests" / "testos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Timer:
    """Adds the time spent in selabel's two steps (the bench patches transform's module ref)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t

        return timed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one run of each")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    if not (ORACLE / "etc/selinux/config").exists():
        print(f"skipped: needs the SELinux oracle chroot in {ORACLE} (make setup)")
        return 0
    rootfs = _load_testos().ensure_base_rootfs(CACHE)
    runs = 1 if args.quick else args.runs
    timer = _Timer()
    real_load, real_relabel = selabel.load_policy, selabel.relabel
    transform.selabel.load_policy = timer.wrap(real_load)  # type: ignore[attr-defined]
    transform.selabel.relabel = timer.wrap(real_relabel)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory(prefix="cfsboot-bench-selabel-", dir=WORK) as tmp:
        policy = Path(tmp) / "policy"
        shutil.copytree(ORACLE / "etc/selinux", policy / "etc/selinux", symlinks=True)
        plain, labelled = Path(tmp) / "plain", Path(tmp) / "labelled"
        build_layout(plain, [rootfs], compression=Compression.ZSTD)
        build_layout(labelled, [rootfs, policy], compression=Compression.ZSTD)
        times: dict[str, list[float]] = {"plain": [], "labelled": []}
        label_times: list[float] = []
        inodes = 0
        for _ in range(runs):
            for name, layout in (("plain", plain), ("labelled", labelled)):
                timer.seconds = 0.0
                re.purge()  # each import compiles its regexes, as a fresh process would
                t = time.perf_counter()
                result = import_image(f"oci:{layout}:latest", None)
                times[name].append(time.perf_counter() - t)
                if name == "labelled":
                    label_times.append(timer.seconds)
                    assert result.tree is not None
                    inodes = sum(1 for _ in _inodes(result.tree))
    p, lab = statistics.median(times["plain"]), statistics.median(times["labelled"])
    sel = statistics.median(label_times)
    print(f"input: {rootfs} ({inodes} inodes in the labelled boot image), {runs} runs")
    print(f"import (compute-id), no policy:        {p:6.2f} s")
    print(f"import (compute-id), policy layer:     {lab:6.2f} s  (+{lab - p:.2f} s)")
    print(f"of which load_policy + relabel:        {sel:6.2f} s  ({100 * sel / lab:.1f} %)")
    print(f"runs: plain {times['plain']}, labelled {times['labelled']}, labelling {label_times}")
    return 0


def _inodes(root: Any) -> Any:
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        yield node
        if node.children:
            stack.extend(node.children.values())


if __name__ == "__main__":
    sys.exit(main())
