"""Freeze setup-root into a self-contained program for the initramfs (`make freeze`).

Two ways, measured side by side by bench/bench_setuproot.py:

- `pyzip` (the default): the build host's own Debian interpreter binary
  (/usr/bin/python3, libpython linked in statically), a `python._pth` file
  that makes it isolated and points sys.path at `lib.zip`, and `lib.zip`
  holding exactly the modules setup-root imports, as unchecked-hash .pyc (no
  stat, no compile at start-up). A two-line sh wrapper starts setuproot.main.
  About 8.3 MB; needs libc, libm, libz, libexpat and libffi from the target,
  which dracut resolves when it installs the ELF files.
- `pyinstaller`: a PyInstaller onedir (own libpython, libffi, libz). Self-
  contained, but the bootloader re-executes itself and imports through its
  own archive. Kept for comparison. (onefile unpacks itself to /tmp on every
  start, ~110 ms: not offered.)

Measured by bench/bench_setuproot.py (a real boot with mounts, 40 runs,
uncontended CPU): pyzip median 22 ms, PyInstaller 26 ms, `python -m
setuproot` 30 ms, `python3 -c pass` 10 ms. Size: both ~8.5 MB, +3.2 MB to the
compressed initramfs.

Chosen: pyzip. It starts fastest (re-measured with hyperfine, dry run, on a
busy machine: pyzip 40 ms mean / 19 ms user CPU, PyInstaller onedir 63 ms /
32 ms, `python3 -I -S -c pass` 23 ms / 7 ms), since it is the bare
interpreter plus precompiled modules with nothing re-executed or unpacked;
it is as small; and it is built in under a second with nothing but the
distribution's python3. Nuitka was not measured: it needs a C toolchain
and a compile at every freeze, and it keeps CPython's own start-up, which
is already about half of pyzip's time.

The build host is Debian bookworm (glibc 2.36), so both run on trixie (2.41).
Output: build/setup-root/cfsboot-setup-root/ with the program
`cfsboot-setup-root` in it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAME = "cfsboot-setup-root"

# Modules PyInstaller's analysis pulls in through the stdlib but setup-root never
# runs. Leaving them out halves the size (libcrypto alone is 4.7 MB).
EXCLUDES = (
    "_blake2 _bisect _bz2 _codecs_cn _codecs_hk _codecs_iso2022 _codecs_jp _codecs_kr"
    " _codecs_tw _csv _decimal _hashlib _heapq _lzma _md5 _multibytecodec _pickle"
    " _posixsubprocess _pydecimal _random _sha1 _sha256 _sha3 _sha512 _socket _ssl"
    " _statistics array bz2 csv decimal difflib doctest email grp hashlib http lzma"
    " multiprocessing pathlib pdb pickle pydoc random resource select selectors socket ssl"
    " shutil statistics subprocess tarfile tempfile unicodedata unittest urllib xml zipfile"
).split()


SPEC = """\
a = Analysis([{main!r}], pathex=[{path!r}], excludes={excludes!r}, noarchive=False)
# pyi_rth_inspect makes inspect find sources in the archive; setup-root never asks,
# and the hook imports zipfile, pathlib and urllib: a third of the start-up time.
a.scripts = [s for s in a.scripts if s[0] != "pyi_rth_inspect"]
pyz = PYZ(a.pure)
exe = EXE(pyz, a.scripts, [], exclude_binaries=True, name={name!r}, strip=True, upx=False,
          console=True)
coll = COLLECT(exe, a.binaries, a.datas, strip=True, upx=False, name={name!r})
"""


def freeze(out: Path, work: Path) -> Path:
    import PyInstaller.__main__  # type: ignore[import-untyped]

    work.mkdir(parents=True, exist_ok=True)
    spec = work / f"{NAME}.spec"
    spec.write_text(
        SPEC.format(
            main=str(HERE / "setuproot" / "__main__.py"),
            path=str(HERE),
            excludes=list(EXCLUDES),
            name=NAME,
        )
    )
    PyInstaller.__main__.run(
        [
            "--noconfirm",
            "--clean",
            "--log-level=WARN",
            f"--distpath={out}",
            f"--workpath={work}",
            str(spec),
        ]
    )
    return out / NAME / NAME


# Runs under the target interpreter: import everything setup-root may import
# (including what it imports lazily), then store those modules as .pyc in a zip.
_ZIP_BUILDER = """
import sys
src, out, dynload = sys.argv[1:4]
sys.path.insert(0, src)
import setuproot.main, setuproot.mount, setuproot.plan, setuproot.config
import setuproot.syscalls, setuproot.verity, setuproot.contract
import tomllib, traceback, runpy, encodings.latin_1, encodings.ascii  # runpy: for -m
# (os.path is posixpath under another name: store each module once, under its own name.)
files = {
    k: getattr(m, "__file__", None)
    for k, m in list(sys.modules.items())
    if getattr(m, "__name__", None) == k
}
files["setuproot.__main__"] = src + "/setuproot/__main__.py"
import importlib.util, marshal, zipfile  # after the census: they are the builder's
with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
    for name, path in sorted(files.items()):
        if path is None:
            continue  # built into the interpreter
        if not path.endswith(".py"):
            print(path)  # an extension module: copied next to the zip
            continue
        rel = name.replace(".", "/") + ("/__init__" if path.endswith("__init__.py") else "")
        with open(path, "rb") as f:
            code = compile(f.read(), rel + ".py", "exec", dont_inherit=True)
        # PEP 552 header: flags=1 (hash-based, unchecked), so nothing is re-validated.
        header = importlib.util.MAGIC_NUMBER + (1).to_bytes(4, "little") + bytes(8)
        zf.writestr(rel + ".pyc", header + marshal.dumps(code))
"""

# -c rather than -m: runpy and importlib.util would cost start-up time.
WRAPPER = """#!/bin/sh
exec "${0%/*}/python" -c 'import sys; from setuproot.main import main; sys.exit(main())' "$@"
"""


def freeze_pyzip(out: Path, python: Path, src: Path = HERE) -> Path:
    """The target interpreter, a ._pth file, and a zip of exactly the modules needed.

    src: the directory holding the setuproot package (the Debian package's dracut
    module freezes the installed one, /usr/lib/python3/dist-packages).
    """
    top = out / NAME
    dynload = top / "lib-dynload"
    dynload.mkdir(parents=True)
    shutil.copy2(python.resolve(), top / "python")
    (top / "python._pth").write_text("lib.zip\nlib-dynload\n")
    proc = subprocess.run(
        [
            str(python),
            "-I",
            "-S",
            "-c",
            _ZIP_BUILDER,
            str(src),
            str(top / "lib.zip"),
            str(dynload),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    for ext in proc.stdout.split():
        shutil.copy2(ext, dynload)
        # Executable like any shared library, so dracut also installs what it links.
        (dynload / Path(ext).name).chmod(0o755)
    wrapper = top / NAME
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    return wrapper


def check(program: Path) -> None:
    """Run the frozen program once (a dry run) so a broken freeze fails the build."""
    digest = "0" * 64
    start = time.perf_counter()
    proc = subprocess.run(
        [
            str(program),
            "--sysroot",
            "/nonexistent",
            "--cmdline",
            f"composefs=?{digest}",
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0 or not proc.stdout.startswith("open "):
        sys.exit(f"frozen {program} does not work: {proc.stderr.strip()}")
    size = sum(f.stat().st_size for f in program.parent.rglob("*") if f.is_file())
    print(f"{program}: {size / 1e6:.1f} MB, dry run in {elapsed:.0f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "build" / "setup-root")
    parser.add_argument("--mode", choices=("pyzip", "pyinstaller"), default="pyzip")
    parser.add_argument(
        "--python",
        type=Path,
        default=Path(os.environ.get("CFSBOOT_FREEZE_PYTHON", "/usr/bin/python3")),
        help="interpreter binary for pyzip (a distribution's, not a venv's)",
    )
    parser.add_argument(
        "--src", type=Path, default=HERE, help="directory holding setuproot (pyzip mode)"
    )
    args = parser.parse_args(argv)
    shutil.rmtree(args.out / NAME, ignore_errors=True)
    if args.mode == "pyzip":
        program = freeze_pyzip(args.out, args.python, args.src)
    else:
        work = args.out.parent / "setup-root.work"
        program = freeze(args.out, work)
        shutil.rmtree(work, ignore_errors=True)
    check(program)
    return 0


if __name__ == "__main__":
    sys.exit(main())
