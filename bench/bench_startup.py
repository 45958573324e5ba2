"""CLI start-up: `cfsboot --help` and `status --json` against the same interpreter's `-c pass`.

The commands people and monitoring run most. The sysroot is a physical root
with 10 deployments in its boot menu (installed with `cfsboot install
to-filesystem` into directories, then 9 switches, each finalized), read as
an admin reads an offline root (--sysroot, --esp, --run-dir).

Two installs are timed, each against its own interpreter's `-c pass`:
- venv: this tree run by the interpreter running this script as the venv's console
  script runs it (`from cfsboot.cli import main`; the tree first on PYTHONPATH);
- package: the Debian package of this tree (`make deb`, unpacked with dpkg-deb)
  run by /usr/bin/python3 through the package's own /usr/bin/cfsboot.

`-c 'import json'` is timed too: the floor of any Python program that prints
JSON (json imports re, and re enum), as a ratio to `-c pass`.

`status --json` run again on an unchanged system prints the output its first run
kept (cfsboot.linux.outputcache: each path that run read is checked, nothing is
imported); monitoring sees that one, and it is the figure. The first run's cost
(CFSBOOT_OUTPUT_CACHE=0: worked out in full) is printed beside it, and the
breakdown splits that one. The sysroot's files are left older than the racy
window (3 s) before the runs, as a system's state is between two updates.

Runs interleave (pass, import json, --help, status; per install), so that load from
elsewhere falls on all alike. Bytecode is written by a warm-up run, as an
installed package has it. With `--base DIR` (another checkout) the venv
commands of that tree run interleaved too, and its medians are printed. Wall
time is the figure; CPU time (user + system), which load disturbs less, is
printed beside it. Quote the medians with `uptime`'s load average.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / d) for d in ("stager", "setup-root", "tests")]
sys.path.insert(0, str(REPO / "bench"))

from cfstest import dirsystem  # noqa: E402
from cfstest.osimages import os_image  # noqa: E402
from figures import figure  # noqa: E402

DEPLOYMENTS = 10
# What the venv's console script (.venv/bin/cfsboot, written by pip) runs; `-m cfsboot.cli`
# would add runpy's imports (about 1.5 ms), which no installed command pays.
ENTRY_POINT = "import sys; from cfsboot.cli import main; sys.exit(main())"
SYSTEM_PYTHON = "/usr/bin/python3"
UNKEPT = {"CFSBOOT_OUTPUT_CACHE": "0"}  # status worked out in full, as its first run is
RACY_S = 3.2  # cfsboot.linux.outputcache.RACY_NS, and a little more


def sysroot(tmp: Path) -> list[str]:
    """A physical root with DEPLOYMENTS deployments; the options that name it."""
    system = dirsystem.install(tmp / "sys", os_image(tmp / "oci1", "1"))
    for i in range(2, DEPLOYMENTS + 1):
        system.cfs("switch", os_image(tmp / f"oci{i}", str(i)), "-q")
        system.cfs("finalize-staged")
    status = system.status()["status"]
    found = sum(1 for k in ("booted", "rollback", "staged") if status.get(k))
    found += len(status.get("otherDeployments", []))
    assert found == DEPLOYMENTS, status
    return ["--sysroot", str(system.root), "--esp", str(system.esp), "--run-dir", str(system.run)]


def unpacked_deb(tmp: Path, deb: Path | None) -> Path:
    """The package's files (built by `make deb` unless given), unpacked under tmp."""
    if deb is None:
        subprocess.run(["make", "-C", str(REPO), "deb"], check=True, stdout=subprocess.DEVNULL)
        deb = next((REPO / "build/deb").glob("cfsboot_*.deb"))
    out = tmp / "deb"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True)
    return out


def env_for(pythonpath: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": pythonpath}


def time_once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU = user + system of the command) in ms."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return wall * 1000, cpu * 1000


def commands(
    opts: list[str], trees: dict[str, Path], deb: Path | None
) -> dict[tuple[str, str], tuple[list[str], dict[str, str]]]:
    """(install, command) -> (argv, environment)."""
    out = {}
    for label, tree in trees.items():
        env = env_for(os.pathsep.join([str(tree / "stager"), str(tree / "setup-root")]))
        run = [sys.executable, "-c", ENTRY_POINT]
        out[(label, "pass")] = ([sys.executable, "-c", "pass"], env)
        out[(label, "import json")] = ([sys.executable, "-c", "import json"], env)
        out[(label, "--help")] = ([*run, "--help"], env)
        out[(label, "status --json")] = ([*run, "status", "--json", *opts], env)
        out[(label, "status, first")] = ([*run, "status", "--json", *opts], {**env, **UNKEPT})
    if deb is not None:
        env = env_for(str(deb / "usr/lib/python3/dist-packages"))
        run = [SYSTEM_PYTHON, str(deb / "usr/bin/cfsboot")]
        out[("package", "pass")] = ([SYSTEM_PYTHON, "-c", "pass"], env)
        out[("package", "import json")] = ([SYSTEM_PYTHON, "-c", "import json"], env)
        out[("package", "--help")] = ([*run, "--help"], env)
        out[("package", "status --json")] = ([*run, "status", "--json", *opts], env)
        out[("package", "status, first")] = ([*run, "status", "--json", *opts], {**env, **UNKEPT})
    return out


# What status --json imports, in import order (printed by a run of it); then importing
# them alone, and importing the standard library's part alone, split a run's time.
_MODULES = (
    "import sys\n"
    "before = set(sys.modules)\n"
    "import contextlib, io\n"
    "from cfsboot.cli import main\n"
    "with contextlib.redirect_stdout(io.StringIO()):\n"
    "    main(sys.argv[1:])\n"
    "print(' '.join(m for m in sys.modules if m not in before))\n"
)


def breakdown(opts: list[str], deb: Path, runs: int) -> list[tuple[str, float]]:
    """Medians of a package run of status --json split: the interpreter, the standard
    library it imports, cfsboot's modules, and the work (reading and printing)."""
    env = env_for(str(deb / "usr/lib/python3/dist-packages"))
    out = subprocess.run(
        [SYSTEM_PYTHON, "-c", _MODULES, "status", "--json", *opts],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    modules = out.stdout.split()
    ours = ("cfsboot", "setuproot")
    stdlib = [m for m in modules if m.split(".")[0] not in ours]
    script = [SYSTEM_PYTHON, str(deb / "usr/bin/cfsboot"), "status", "--json", *opts]
    env = {**env, **UNKEPT}
    steps = {
        "interpreter (-c pass)": [SYSTEM_PYTHON, "-c", "pass"],
        "+ standard library imports": [SYSTEM_PYTHON, "-c", "import " + ", ".join(stdlib)],
        "+ cfsboot imports": [SYSTEM_PYTHON, "-c", "import " + ", ".join(modules)],
        "+ the work (status --json)": script,
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    for argv_ in steps.values():
        time_once(argv_, env)
    for _ in range(runs):
        for k, argv_ in steps.items():
            times[k].append(time_once(argv_, env)[0])
    print(f"status --json (package), {len(stdlib)} standard and {len(modules) - len(stdlib)}"
          " cfsboot modules: medians, wall ms (each step adds to the one before)")  # fmt: skip
    return [(k, statistics.median(v)) for k, v in times.items()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="7 runs instead of 21")
    parser.add_argument("--runs", type=int, help="runs per command")
    parser.add_argument("--base", type=Path, help="a checkout to compare with (venv only)")
    parser.add_argument("--deb", type=Path, help="the package to time (default: make deb)")
    parser.add_argument("--no-deb", action="store_true", help="time the venv only")
    parser.add_argument(
        "--breakdown",
        action="store_true",
        help="also split the package's status --json: interpreter, imports, work",
    )
    args = parser.parse_args(argv)
    runs = args.runs or (7 if args.quick else 21)
    trees = {"venv": REPO, **({"base": args.base.resolve()} if args.base else {})}
    with tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        opts = sysroot(Path(tmp))
        deb = None if args.no_deb else unpacked_deb(Path(tmp), args.deb)
        cmds = commands(opts, trees, deb)
        for argv_, env in cmds.values():
            time_once(argv_, env)  # warm-up: page cache, bytecode
        time.sleep(RACY_S)  # the bytecode just written is as old as an installed one
        times: dict[tuple[str, str], list[tuple[float, float]]] = {k: [] for k in cmds}
        for _ in range(runs):
            for key, (argv_, env) in cmds.items():
                times[key].append(time_once(argv_, env))
        load = os.getloadavg()
        steps = breakdown(opts, deb, runs) if args.breakdown and deb is not None else []
    for i, (name, ms) in enumerate(steps):
        added = f" (+{ms - steps[i - 1][1]:.1f})" if i else ""
        print(f"  {name:28} {ms:6.1f}{added}")
    print(f"{runs} runs each, {DEPLOYMENTS} deployments, load average {load[0]:.2f} {load[1]:.2f}")

    def med(key: tuple[str, str], i: int) -> float:
        return statistics.median(t[i] for t in times[key])

    for install in dict.fromkeys(k[0] for k in cmds):
        python = cmds[(install, "pass")][0][0]
        print(f"{install} ({python}): medians, wall / CPU ms")
        for name in ("pass", "import json", "--help", "status --json", "status, first"):
            wall, cpu = med((install, name), 0), med((install, name), 1)
            print(f"  {name:14} {wall:6.1f} / {cpu:6.1f}")
    for install in ("venv", "package"):
        if (install, "pass") not in cmds:
            continue
        for name in ("--help", "status --json"):
            cfs, ref = med((install, name), 0), med((install, "pass"), 0)
            figure(f"startup {name} ({install}, vs -c pass)", cfs, ref, "<= 2.0", unit="ms")
        first = med((install, "status, first"), 0) / med((install, "pass"), 0)
        print(f"  ({install}: status --json worked out in full, its first run: {first:.2f}x)")
        floor = med((install, "import json"), 0) / med((install, "pass"), 0)
        print(f"  ({install}: `-c 'import json'` alone, paid by any JSON printer: {floor:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
