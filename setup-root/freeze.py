"""Freeze setup-root into a self-contained program for the initramfs (`make freeze`).

The program is an interpreter binary, a `python._pth` file that makes it isolated
and points sys.path at `lib.zip`, and `lib.zip` holding exactly the modules
setup-root imports (BOOT_MODULES at every boot, the rest only when asked: a config
file beyond simple TOML, CFSBOOT_DEBUG=1), as unchecked-hash .pyc compiled with
optimize=2 (no stat, no compile, no docstrings at start-up). The initrd unit runs
the interpreter directly (`python -c UNIT_CODE`); `cfsboot-setup-root` is the same
command as a two-line sh wrapper, for people and tests.

The interpreter is the small CPython of setup-root/pymin.sh (`make pymin`, part of
`make setup`): CPython 3.11 with only the modules setup-root needs compiled in
(_ctypes among them: no lib-dynload), 5 MB, 1.5 MB compressed. Debian's own
python3 works as well (--python /usr/bin/python3, with its extension modules in
lib-dynload), but it is 6.8 MB and puts 2.6 MB into every initramfs: the Debian
package's dracut module freezes with it (--src /usr/lib/python3/dist-packages), so
that a python3 security update reaches the next initramfs.

Measured by bench/bench_setuproot.py (real mounts on the host, under `chrt -f 10`
like an initramfs that has the CPU to itself) and in the issue-16 closing note.
A PyInstaller onedir was kept for comparison until then: slower (its bootloader
re-executes itself) and bigger; it is gone. The build host is Debian bookworm
(glibc 2.36), so the program runs on trixie (2.41). Output:
build/setup-root/cfsboot-setup-root/.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
NAME = "cfsboot-setup-root"
CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))
SMALL_PYTHON = CACHE / "pymin" / "python"

# What every boot imports (setuproot.main and everything it imports at the top), as
# the small interpreter has them: tests/unit/test_freeze.py holds the frozen program
# to this list, so that no change pulls a module into every boot unnoticed.
BOOT_MODULES = frozenset(
    {
        "setuproot", "setuproot.main", "setuproot.choice", "setuproot.config",
        "setuproot.contract", "setuproot.mount", "setuproot.plan", "setuproot.record",
        "setuproot.syscalls", "setuproot.verity",
        # the standard library's, most of them frozen into the interpreter or built in
        "__future__", "_collections_abc", "_ctypes", "_stat", "_struct", "ctypes",
        "ctypes._endian", "errno", "fcntl", "genericpath", "os", "os.path", "posixpath",
        "stat", "struct", "types",
    }
)  # fmt: skip
# Imported only when needed; stored in the zip with what they import.
LAZY_IMPORTS = ("tomllib", "traceback", "encodings.latin_1", "encodings.ascii")
# How the unit and the wrapper start it (-c rather than -m: runpy would cost start-up).
UNIT_CODE = "import setuproot.__main__"

# Runs under the target interpreter: import everything setup-root may import, then
# write those modules as .pyc files into a directory, for freeze() to zip.
_CENSUS = """
import sys
src, out = sys.argv[1:3]
sys.path.insert(0, src)
before = set(sys.modules)
import setuproot.main
boot = set(sys.modules) - before
for name in sys.argv[3:]:
    __import__(name)
# (os.path is posixpath under another name: store each module once, under its own name;
# modules frozen into the interpreter are not stored.)
files = {
    k: getattr(m, "__file__", None)
    for k, m in list(sys.modules.items())
    if getattr(m, "__name__", None) == k
    and getattr(getattr(m, "__spec__", None), "origin", None) != "frozen"
}
files["setuproot.__main__"] = src + "/setuproot/__main__.py"
import marshal, os  # after the census
from importlib._bootstrap_external import MAGIC_NUMBER
for name, path in sorted(files.items()):
    if path is None:
        continue  # built into the interpreter
    if not path.endswith(".py"):
        print("extension", path)  # copied next to the zip
        continue
    rel = name.replace(".", "/") + ("/__init__" if path.endswith("__init__.py") else "")
    with open(path, "rb") as f:
        # optimize=2: no docstrings and no asserts, less to read and unmarshal
        code = compile(f.read(), rel + ".py", "exec", dont_inherit=True, optimize=2)
    os.makedirs(os.path.dirname(os.path.join(out, rel)), exist_ok=True)
    with open(os.path.join(out, rel + ".pyc"), "wb") as f:
        # PEP 552 header: flags=1 (hash-based, unchecked), so nothing is re-validated.
        f.write(MAGIC_NUMBER + (1).to_bytes(4, "little") + bytes(8) + marshal.dumps(code))
for name in sorted(boot):
    print("boot", name)
"""

WRAPPER = f"""#!/bin/sh
exec "${{0%/*}}/python" -c '{UNIT_CODE}' "$@"
"""


def default_python() -> Path:
    """The small interpreter if `make pymin` built it, else the distribution's."""
    return SMALL_PYTHON if SMALL_PYTHON.exists() else Path("/usr/bin/python3")


def freeze(out: Path, python: Path, src: Path = HERE) -> tuple[Path, list[str]]:
    """The interpreter, a ._pth file and a zip of exactly the modules needed; returns the
    wrapper program and the modules every boot imports.

    src: the directory holding the setuproot package (the Debian package's dracut module
    freezes the installed one, /usr/lib/python3/dist-packages, with the system's python3).
    """
    top = out / NAME
    top.mkdir(parents=True)
    shutil.copy2(python.resolve(), top / "python")
    with tempfile.TemporaryDirectory(prefix="freeze-") as tmp:
        proc = subprocess.run(
            [str(python), "-I", "-S", "-c", _CENSUS, str(src), tmp, *LAZY_IMPORTS],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            sys.exit(f"{python} cannot import setup-root: {proc.stderr.strip()}")
        with zipfile.ZipFile(top / "lib.zip", "w", zipfile.ZIP_STORED) as zf:
            for pyc in sorted(Path(tmp).rglob("*.pyc")):
                zf.write(pyc, pyc.relative_to(tmp).as_posix())
    extensions = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if "extension" in line]
    boot = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("boot ")]
    path = ["lib.zip"]
    if extensions:  # a distribution's interpreter: its extension modules come along
        dynload = top / "lib-dynload"
        dynload.mkdir()
        for ext in extensions:
            shutil.copy2(ext, dynload)
            # Executable like any shared library, so dracut also installs what it links.
            (dynload / Path(ext).name).chmod(0o755)
        path.append("lib-dynload")
    (top / "python._pth").write_text("".join(p + "\n" for p in path))
    wrapper = top / NAME
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    return wrapper, boot


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
    parser.add_argument(
        "--python",
        type=Path,
        default=Path(os.environ.get("CFSBOOT_FREEZE_PYTHON", default_python())),
        help="interpreter binary (not a venv's): default the small one of `make pymin`",
    )
    parser.add_argument("--src", type=Path, default=HERE, help="directory holding setuproot")
    args = parser.parse_args(argv)
    if args.python != SMALL_PYTHON:
        print(f"freezing with {args.python}: `make pymin` builds the small interpreter")
    shutil.rmtree(args.out / NAME, ignore_errors=True)
    program, _ = freeze(args.out, args.python, args.src)
    check(program)
    return 0


if __name__ == "__main__":
    sys.exit(main())
