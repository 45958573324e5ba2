"""What `cfsboot status` and `cfsboot --help`, the commands people and monitoring run most,
import and read (bench/bench_startup.py times them), and that their lean paths print what
the full computation prints.

The module sets are pinned from a fresh interpreter: an import added to a module these
paths load (or a lazy import made eager) fails here instead of slowing every run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cfsboot import cli
from cfsboot.boot import bls
from cfsboot.boot.bootloader import MenuEntry, SystemdBoot
from cfsboot.boot.counting import Tries, counted_name, split_name
from cfsboot.boot.esp import DirEsp, EspError
from cfsboot.boot.espview import ReadOnceEsp
from cfsboot.deploy import status as status_mod
from cfsboot.deploy.assessrecord import record_path
from cfsboot.deploy.fsck.quick import warn_problems
from cfsboot.deploy.origin import Origin, OriginError
from cfsboot.deploy.pins import pin
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import CfsbootError
from cfstest.cli import ENV, argv
from cfstest.osimages import os_image
from cfstest.sysroots import DirSysroot, make_sysroot

# Never imported by `status` on a physical root that is not running: staging, soft reboot,
# the assessment run, importing, image trees, hashing, threads, subprocesses, the human
# layout's dates, logging while nothing is logged, typing (the document's types).
STATUS_NEVER = {
    "cfsboot.deploy.stage",
    "cfsboot.deploy.softreboot",
    "cfsboot.deploy.assessment",
    "cfsboot.deploy.etcmerge",
    "cfsboot.deploy.entries",
    "cfsboot.deploy.usroverlay",
    "cfsboot.deploy.fsck.run",
    "cfsboot.image.importer",
    "cfsboot.image.imagefiles",
    "cfsboot.image.extract",
    "cfsboot.composefs.fsverity",
    "cfsboot.composefs.tree",
    "cfsboot.deploy.statusdoc",
    "cfsboot.oci.reference",
    "cfsboot.linux.arch",
    "cfsboot.linux.run",
    "concurrent.futures",
    "ctypes",
    "datetime",
    "hashlib",
    "logging",
    "shutil",
    "subprocess",
    "tempfile",
    "typing",
}
# `--help`: argparse and the table of subcommands, nothing else of ours.
HELP_NEVER = {"dataclasses", "importlib", "json", "logging", "pathlib", "shutil", "textwrap"}
HELP_NEVER |= {"typing"}


def imported(args: list[str]) -> set[str]:
    """The modules `cfsboot ARGS` (output dropped) adds to what a fresh interpreter holds
    (without site: a venv's .pth files import pathlib, for one, before any of ours)."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "import contextlib, io\n"
        "from cfsboot.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({args!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "sys.stderr.write('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], env=ENV, capture_output=True, text=True, check=True
    )
    return set(proc.stderr.splitlines())


def imported_by(module: str) -> set[str]:
    """The modules importing `module` adds to a fresh interpreter."""
    code = f"import sys\nbefore = set(sys.modules)\nimport {module}\n" + (
        "sys.stderr.write('\\n'.join(sorted(set(sys.modules) - before)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-S", "-c", code], env=ENV, capture_output=True, text=True, check=True
    )
    return set(proc.stderr.splitlines())


@pytest.fixture(scope="module")
def s(tmp_path_factory: pytest.TempPathFactory) -> DirSysroot:
    """Four deployments and a staged one; the live entries on trial (one out of tries,
    with its failure record), one pinned."""
    base = tmp_path_factory.mktemp("startup")
    refs = [os_image(base / f"v{v}", str(v), kernel=f"k{v}") for v in range(1, 6)]
    s = make_sysroot(base / "s", refs[:4], staged=refs[4])
    bl = SystemdBoot(DirEsp(s.esp))
    menu = bl.menu()
    # On trial as systemd-boot counts (the entry file's name): the rollback out of tries.
    trial = {menu[0].deployment: Tries(2, 1), menu[1].deployment: Tries(0, 3)}
    trial[menu[2].deployment] = Tries(1, 2)
    entries = s.esp / "loader/entries"
    for f in sorted(entries.iterdir()):
        t = trial.get(bls.BLSEntry.parse(f.read_text()).deployment() or "")
        if t is not None:
            f.rename(entries / counted_name(split_name(f.name)[0], t))
    sysroot = Sysroot(s.root, run_dir=s.run)
    failed = menu[1].deployment
    path = record_path(sysroot, failed)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"time": "2026-01-02T03:04:05Z", "failed": ["unit x failed"]}))
    pin(sysroot, bl, menu[2].deployment)
    return s


def test_status_json_is_what_the_full_computation_prints(s: DirSysroot) -> None:
    """The lean run (lazy imports, the ESP and the state read once) and the full
    computation (every command module imported, each read done each time it is asked)."""
    lean = subprocess.run(
        argv("status", "--json", *s.args()), env=ENV, capture_output=True, check=True
    )
    cli.build_parser()  # every command module, and what they import
    sysroot = Sysroot(s.root, run_dir=s.run)
    bl = SystemdBoot(DirEsp(s.esp))
    warn_problems(sysroot, bl)
    doc = status_mod.host_status(sysroot, bl)
    full = (json.dumps(doc, indent=2) + "\n").encode()
    assert lean.stdout == full
    assert lean.stderr == b""
    st = doc["status"]
    assert st["staged"] and st["booted"] and st["rollback"] and st.get("otherDeployments")
    entries = [st["staged"], st["booted"], st["rollback"], *st["otherDeployments"]]
    trials = [
        t["state"] if (t := e["cfsboot"]["bootAssessment"]) is not None else None for e in entries
    ]
    assert trials == [None, "pending", "pending", None, "failed"]
    assert [e["pinned"] for e in entries] == [False, False, True, False, False]
    last = entries[-1]["cfsboot"]["bootAssessment"]
    assert last is not None and last["lastFailure"] == {
        "time": "2026-01-02T03:04:05Z",
        "failed": ["unit x failed"],
    }


def test_what_status_imports(s: DirSysroot) -> None:
    modules = imported(["status", "--json", *map(str, s.args())])
    assert {"cfsboot.deploy.status", "cfsboot.deploy.fsck.quick", "cfsboot.cli"} <= modules
    assert sorted(modules & STATUS_NEVER) == []


def test_status_reads_each_entry_and_origin_once(
    s: DirSysroot, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real_read, real_origin = DirEsp.read, Sysroot._read_origin

    def read(self: DirEsp, path: str) -> bytes:
        reads.append(path)
        return real_read(self, path)

    def read_origin(self: Sysroot, depl: str) -> Origin | OriginError | None:
        reads.append(depl)
        return real_origin(self, depl)

    monkeypatch.setattr(DirEsp, "read", read)
    monkeypatch.setattr(Sysroot, "_read_origin", read_origin)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        assert cli.main(["status", "--json", *map(str, s.args())]) == 0
    assert json.loads(out.getvalue())["kind"] == "BootcHost"
    entries = [p for p in reads if p.startswith("loader/entries/")]
    assert len(entries) == 4 and len(set(entries)) == 4
    origins = [d for d in reads if "/" not in d]
    assert sorted(origins) == sorted(set(origins)) and len(origins) == 5


def test_help_imports_no_command_module() -> None:
    modules = imported(["--help"])
    assert {"argparse", "cfsboot.cli"} <= modules
    assert sorted(m for m in modules if m.startswith("cfsboot.commands")) == []
    assert sorted(modules & HELP_NEVER) == []


@pytest.mark.parametrize("columns", ["50", "100", "240"])
def test_help_prints_what_the_full_parser_prints(columns: str) -> None:
    env = {**ENV, "COLUMNS": columns}
    out = subprocess.run(argv("--help"), env=env, capture_output=True, text=True, check=True)
    full = subprocess.run(
        [sys.executable, "-c", "from cfsboot.cli import build_parser\n"
         "print(build_parser().format_help(), end='')"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout == full.stdout
    assert "usr-overlay (usroverlay)" in out.stdout


@pytest.mark.parametrize("value", [None, "", "abc", "0", "-3", "57", "250"])
def test_terminal_columns_is_shutils(value: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    if value is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", value)
    assert cli.terminal_columns() == shutil.get_terminal_size().columns


def test_a_listed_command_parses_through_its_own_parser() -> None:
    args = ["status", "--json", "--sysroot", "/x"]
    listed = cli.build_parser(listing=True).parse_args(args)
    assert listed == cli.build_parser("status").parse_args(args)
    assert listed.json and listed.sysroot == "/x"


def test_the_read_once_esp_reads_once_and_writes_nothing(tmp_path: Path) -> None:
    esp = DirEsp(tmp_path)
    esp.mkdir("loader/entries")
    esp.write_text("loader/entries/a.conf", "title a\n")
    view = ReadOnceEsp(esp)
    assert view.read_text("loader/entries/a.conf") == "title a\n"
    assert [e.name for e in view.listdir("loader/entries")] == ["a.conf"]
    assert view.exists("loader/entries/a.conf")
    os.unlink(tmp_path / "loader/entries/a.conf")
    assert view.read_text("loader/entries/a.conf") == "title a\n"  # as it was first read
    assert view.exists("loader/entries/a.conf")
    assert [e.name for e in view.listdir("loader/entries")] == ["a.conf"]
    writes: list[Callable[[], None]] = [
        lambda: view.write_text("loader/entries/b.conf", "x"),
        lambda: view.remove("loader/entries/a.conf"),
        lambda: view.mkdir("loader/new"),
        lambda: view.rename("loader/entries", "loader/e2"),
        lambda: view.exchange("loader/entries", "loader"),
        lambda: view.remove_tree("loader"),
    ]
    for write in writes:
        with pytest.raises(EspError, match="it is open read-only"):
            write()
    assert sorted(os.listdir(tmp_path / "loader")) == ["entries"]


def test_a_read_once_sysroot_refuses_writes(s: DirSysroot) -> None:
    sysroot = Sysroot(s.root, run_dir=s.run, read_once=True)
    marker = sysroot.staged()
    assert marker is not None and marker.depl_id == s.digests[-1]
    origin = sysroot.origin(s.digests[0])
    assert origin is not None and sysroot.origin(s.digests[0]) is origin
    with pytest.raises(CfsbootError, match="open read-only"):
        sysroot.write_staged(marker)
    with pytest.raises(CfsbootError, match="open read-only"):
        sysroot.write_origin(s.digests[0], origin)
    with pytest.raises(CfsbootError, match="open read-only"):
        sysroot.clear_staged()
    assert Sysroot(s.root, run_dir=s.run).staged() == marker


def test_the_listing_holds_every_command_the_modules_register() -> None:
    full = cli.build_parser()
    sub = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    registered = [(c.dest, c.help) for c in sub._choices_actions]
    assert registered == [(name, help_text) for name, _, help_text, _ in cli.SUBCOMMANDS]


def test_menus_through_a_read_once_esp_are_parsed_once(
    s: DirSysroot, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = SystemdBoot(DirEsp(s.esp))
    menu, order = plain.menu(), plain.written_order()
    parsed: list[bool] = []
    real = SystemdBoot._read_menu

    def read_menu(self: SystemdBoot, staged: bool) -> list[MenuEntry]:
        parsed.append(staged)
        return real(self, staged)

    monkeypatch.setattr(SystemdBoot, "_read_menu", read_menu)
    bl = SystemdBoot(ReadOnceEsp(DirEsp(s.esp)))
    live = bl.menu()
    live.pop()  # the caller's copy
    assert bl.menu() == menu and len(menu) == 4
    assert bl.menu(staged=True)[0].deployment == s.digests[-1]
    bl.menu(staged=True)
    assert parsed == [False, True]
    assert bl.written_order() == bl.written_order() == order


def test_soft_reboot_checks_import_no_staging() -> None:
    """A running system's status asks deploy.softreboot whether it could soft-reboot."""
    modules = imported_by("cfsboot.deploy.softreboot")
    assert sorted(modules & {"cfsboot.deploy.stage", "cfsboot.deploy.etcmerge"}) == []


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-S", "-c", code], env=ENV, capture_output=True, text=True, check=True
    )


@pytest.mark.parametrize("debug", [False, True])
def test_logging_is_configured_when_first_imported(debug: bool) -> None:
    proc = run_python(
        "import sys\n"
        "from cfsboot.cli import configure_logging\n"
        "from cfsboot.linux.lazylog import getLogger\n"
        f"configure_logging({not debug})\n"  # the last configuration counts
        f"configure_logging({debug})\n"
        "log = getLogger('cfsboot.x')\n"
        "log.debug('below %s', 'warning')\n"
        "print('logging' in sys.modules)\n"
        "log.warning('a %s', 'warning')\n"
        "import logging\n"
        "logging.getLogger('other').info('info')\n"
        "logging.getLogger('other').error('error')\n"
    )
    assert proc.stdout == f"{debug}\n"
    shown = ["DEBUG: below warning"] if debug else []
    shown += ["WARNING: a warning", *(["INFO: info"] if debug else []), "ERROR: error"]
    assert proc.stderr.splitlines() == shown


def test_a_lazy_logger_logs_as_the_real_one(caplog: pytest.LogCaptureFixture) -> None:
    from cfsboot.linux.lazylog import getLogger

    log = getLogger("cfsboot.test")
    caplog.set_level(10)
    log.info("one %d", 1)
    try:
        raise ValueError("two")
    except ValueError:
        log.exception("caught")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("cfsboot.test", "INFO", "one 1"),
        ("cfsboot.test", "ERROR", "caught"),
    ]
    first, second = caplog.records
    assert first.funcName == "test_a_lazy_logger_logs_as_the_real_one"
    assert second.exc_info is not None and second.exc_info[0] is ValueError
    assert log.isEnabledFor(10) and log.name == "cfsboot.test"


def test_one_command_parses_without_its_siblings_parsers() -> None:
    """`status` builds its own parser, not those of switch, upgrade, gc... of its module."""
    parser = cli.build_parser("status")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["status"]
    update = cli.build_parser("update")
    sub = next(a for a in update._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["upgrade", "update"]
    args = ["status", "--json", "--booted", "--sysroot", "/x"]
    assert vars(parser.parse_args(args)) == vars(cli.build_parser().parse_args(args))


@pytest.mark.parametrize("width", [1, 5, 12, 30, 80])
def test_help_text_wraps_as_textwrap_does_at_blanks(width: int) -> None:
    """cliparse.wrap (--help without textwrap's import): textwrap's lines where no word
    has a hyphen to break after; words longer than a line cut as textwrap cuts them."""
    import textwrap

    from cfsboot.cliparse import wrap

    text = "stage another image to boot next; abcdefghijklmnopqrstuvwxyz0123456789 x y"
    want = textwrap.wrap(text, width, break_on_hyphens=False)
    assert wrap(text, width) == want
    assert wrap("", width) == textwrap.wrap("", width) == []
