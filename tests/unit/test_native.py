"""The mypyc-compiled modules of the EROFS build (cfsboot/composefs/native.py): used when
built and current, left for their sources when asked to or when stale; same bytes both ways.

`make test` runs the composefs tests once more with CFSBOOT_PURE_PYTHON=1, so that the
pure-Python path stays tested as a whole; these tests check the switch itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cfsboot.composefs import native
from cfsboot.composefs.erofs import layout

STAGER = Path(native.__file__).resolve().parents[2]
_PROBE = """
import hashlib, sys
from cfsboot.composefs import dumpfile, native
from cfsboot.composefs.erofs.writer import build_image
data = sys.stdin.buffer.read()
root, links = dumpfile.parse_links(data)
image = build_image(root, link_paths=links)
print(native.describe())
print(dumpfile.__file__)
print(hashlib.sha256(image).hexdigest())
"""


def _probe(dump: bytes, *, pure: bool, stager: Path = STAGER) -> tuple[str, str, str]:
    env = {k: v for k, v in os.environ.items() if k != native.PURE_ENV}
    if pure:
        env[native.PURE_ENV] = "1"
    env["PYTHONPATH"] = f"{stager}:{STAGER.parent / 'setup-root'}"
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], input=dump, env=env, capture_output=True, check=True
    ).stdout.decode()
    describe, path, digest = out.splitlines()
    return describe, path, digest


def _dump() -> bytes:
    """A small tree with every kind of line the build handles."""
    digest = "ab" * 32
    ext = b"70000 100644 1 0 0 0 1700000001.5 ab/%s - %s" % (digest[2:].encode(), digest.encode())
    lines = [
        b"/ 4096 40755 3 0 0 0 1700000000.0 - - - security.selinux=a\\x00",
        b"/d 4096 40755 2 0 0 0 1700000000.0 - - - security.selinux=a\\x00",
        b"/d/ext " + ext,
        b"/d/ext2 " + ext,
        b"/d/in 3 100644 1 0 0 0 1700000000.0 - a\\nb -",
        b"/d/link 0 @100644 - - - - 0.0 /d/in - -",
        b"/d/sym 3 120777 1 0 0 0 1700000000.0 ext - -",
        b"/dev 0 20644 1 0 0 259 1700000000.0 - - -",
        b"/wh 0 20000 1 0 0 0 1700000000.0 - - -",
    ]
    return b"\n".join(lines) + b"\n"


def _compiled() -> bool:
    return any(native.compiled_path(m) for m in native.MODULES)


def test_the_compiled_modules_are_built_and_used() -> None:
    """`make venv` compiles them; a build without (CFSBOOT_PURE_PYTHON=1 at install time,
    or no C compiler) would run everything as pure Python, three times slower."""
    if os.environ.get(native.PURE_ENV) == "1":
        assert native.describe().startswith("pure Python")
        return
    assert _compiled(), "no compiled modules: run `make venv` (or `make native`)"
    assert native.stale() == [], "compiled modules older than their sources: `make native`"
    describe, path, _ = _probe(_dump(), pure=False)
    assert describe == "native (compiled with mypyc)"
    assert not path.endswith(".py")


def test_pure_python_on_request_gives_the_same_image() -> None:
    dump = _dump()
    describe, path, pure_digest = _probe(dump, pure=True)
    assert describe == f"pure Python ({native.PURE_ENV}=1)"
    assert path.endswith("dumpfile.py")
    _, _, digest = _probe(dump, pure=False)
    assert digest == pure_digest


@pytest.mark.parametrize("module", native.MODULES)
def test_pure_python_on_request_whichever_module_loads_first(module: str) -> None:
    """The choice is made when cfsboot.composefs is imported: a module of another package
    (cfsboot.oci, cfsboot.image) imports it from its package's __init__, before it loads."""
    env = {**os.environ, native.PURE_ENV: "1"}
    env["PYTHONPATH"] = f"{STAGER}:{STAGER.parent / 'setup-root'}"
    probe = f"import {module} as m; print(m.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == native.source_path(module)


def test_a_stale_compiled_module_leaves_its_source_in_charge(tmp_path: Path) -> None:
    """An edited module must not be shadowed by the old build of it."""
    if not _compiled():
        pytest.fail("no compiled modules to test with: run `make native`")
    copy = tmp_path / "stager"
    shutil.copytree(STAGER, copy, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
    source = copy / "cfsboot/composefs/erofs/layout.py"
    built = os.stat(native.compiled_path("cfsboot.composefs.erofs.layout") or "")
    os.utime(source, ns=(built.st_atime_ns, built.st_mtime_ns + 1_000_000_000))
    describe, path, digest = _probe(_dump(), pure=False, stager=copy)
    assert describe == "pure Python"
    assert path == str(copy / "cfsboot/composefs/dumpfile.py")
    assert digest == _probe(_dump(), pure=True)[2]


@pytest.mark.parametrize("little", [True, False])
def test_u32_patches_both_ways(little: bool) -> None:
    """The little-endian fast path and the portable one write the same bytes."""
    buf = bytearray(64)
    layout.put_u32s(buf, [0, 8, 60], [1, 0x01020304, 0xFFFFFFFE], 1, little=little)
    assert buf[:4] == bytes([2, 0, 0, 0])
    assert buf[8:12] == bytes([5, 3, 2, 1])
    assert buf[60:] == b"\xff" * 4
    assert buf[4:8] + buf[12:60] == bytes(52)
