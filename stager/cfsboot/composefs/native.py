"""The modules of the EROFS build that run as native code, and the way back to pure Python.

`mkcomposefs --from-file` spends its time in a few loops that run once per line or per
inode (parse a line, place and encode an inode). Where they run as interpreted Python,
cfsboot takes about three times as long as C mkcomposefs on a real OS tree; compiled by
mypyc (setup.py, at `pip install` time: `make venv`) the same source runs as C and the
build beats C. An import's reading of its layers (image/layerread.py, oci/tar.py,
oci/apply.py: run once per tar member, and the tree built from their records) is
compiled too: importing the test OS image from a registry took 1.57 s with them as
Python, 1.47 s compiled (medians of 6 cold runs; its tree 44 ms -> 31 ms). The modules
stay plain, typed Python: every one of them runs either way, and the tests run them both
ways (`make test`).

A compiled module is an extension module next to its source, and Python imports those
first. Importing `cfsboot.composefs` calls `select()`, which makes the sources win
instead when
- CFSBOOT_PURE_PYTHON=1 is set (the pure-Python test run, debugging), or
- a compiled module is older than its source: an edit not yet rebuilt (`make native`)
  must not be shadowed by the old code.

One module is written in C instead (C_MODULES): `_verity` hashes fs-verity Merkle trees
of whole buffers with libcrypto, without the GIL (fsverity.py's pure-Python code is
its twin). `c_module()` hands it out under the same rule, its source being the .c file:
none when CFSBOOT_PURE_PYTHON=1, when it is not built, or when it is older than its source.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES, ModuleSpec, SourceFileLoader
from types import ModuleType

# Compiled together (one mypyc group: calls between them stay native).
MODULES = (
    "cfsboot.composefs.limits",
    "cfsboot.composefs.tree",
    "cfsboot.composefs.dumpescape",
    "cfsboot.composefs.dumpread",
    "cfsboot.composefs.dumpfast",
    "cfsboot.composefs.dumpfile",
    "cfsboot.composefs.erofs.format",
    "cfsboot.composefs.erofs.xxhash",
    "cfsboot.composefs.erofs.xattrs",
    "cfsboot.composefs.erofs.layout",
    "cfsboot.composefs.erofs.dirents",
    "cfsboot.composefs.erofs.writer",
    "cfsboot.oci.tar",
    "cfsboot.oci.apply",
    "cfsboot.image.layerread",
)
GROUP = "cfsboot.composefs._native"  # the shared library: cfsboot/composefs/_native__mypyc*.so
PURE_ENV = "CFSBOOT_PURE_PYTHON"
# Extension modules written in C, each built from one source (setup.py links libcrypto).
C_MODULES = ("cfsboot.composefs._verity",)

_STAGER = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_pure = False


def source_path(module: str) -> str:
    return os.path.join(_STAGER, *module.split(".")) + (".c" if module in C_MODULES else ".py")


def compiled_path(module: str) -> str | None:
    """The extension module built for `module` by this interpreter, if there is one."""
    base = os.path.join(_STAGER, *module.split("."))
    for suffix in EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return None


def _older_than_source(module: str, path: str) -> bool:
    """Whether the built `path` of `module` predates its source (an edit not yet rebuilt)."""
    return os.stat(path).st_mtime < os.stat(source_path(module)).st_mtime


def stale() -> list[str]:
    """The compiled modules older than their sources (or missing while others exist)."""
    built = [(m, compiled_path(m)) for m in MODULES]
    if all(path is None for _, path in built):
        return []
    return [m for m, path in built if path is None or _older_than_source(m, path)]


def c_stale(module: str, path: str | None = None) -> bool:
    """Whether the C module `module` (built at `path`, looked up when None) is built but
    older than its source (an install without the .c file, from a wheel, has nothing to
    be stale against)."""
    path = path if path is not None else compiled_path(module)
    if path is None:
        return False
    try:
        return _older_than_source(module, path)
    except FileNotFoundError:
        return False


def c_module(module: str) -> ModuleType | None:
    """The C module `module` if it is to be used: built, current, not turned off."""
    if os.environ.get(PURE_ENV) == "1":
        return None
    path = compiled_path(module)
    if path is None or c_stale(module, path):
        return None
    try:
        return importlib.import_module(module)
    except ImportError:  # e.g. a libcrypto without the algorithms: the sources serve
        return None


class _SourceFinder:
    """Finds the compiled modules' sources, ahead of the extension modules."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> ModuleSpec | None:
        if name not in MODULES:
            return None
        origin = source_path(name)
        spec = ModuleSpec(name, SourceFileLoader(name, origin), origin=origin)
        spec.has_location = True
        return spec


def select() -> None:
    """Use the sources instead of the compiled modules when asked to or when stale."""
    global _pure
    if _pure:
        return
    if os.environ.get(PURE_ENV) == "1" or stale():
        sys.meta_path.insert(0, _SourceFinder())
        _pure = True


def describe() -> str:
    """How the modules run: for `make bench` and the tests."""
    loaded = [sys.modules[m] for m in MODULES if m in sys.modules]
    native = [m for m in loaded if not (getattr(m, "__file__", None) or "").endswith(".py")]
    if not loaded:
        return "not loaded yet"
    if len(native) == len(loaded):
        return "native (compiled with mypyc)"
    if not native:
        return "pure Python" + (f" ({PURE_ENV}=1)" if os.environ.get(PURE_ENV) == "1" else "")
    return f"mixed: {len(native)} of {len(loaded)} modules native"
