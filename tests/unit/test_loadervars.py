"""systemd-boot's LoaderEntryOneShot / LoaderEntryDefault: what boots next, as status,
the lifecycle commands' warning and fsck report it (cfsboot.boot.loadervars).

A fake efivarfs directory stands in for /sys/firmware/efi/efivars: each variable a
file `NAME-GUID` holding 4 attribute bytes, then the value in UTF-16LE with a NUL.
The rules come from systemd's src/boot/boot.c (config_load_defaults,
config_select_default_entry, config_find_entry) and src/boot/bootctl-set-efivar.c.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from cfsboot import cli
from cfsboot.boot import bls, espfind
from cfsboot.boot.bls import BLSEntry, EntryFile
from cfsboot.boot.bootloader import Bootloader, BootloaderKind
from cfsboot.boot.esp import Esp
from cfsboot.boot.loadervars import (
    LoaderVars,
    NextBoot,
    choose,
    next_boot,
    read_loader_vars,
)
from cfsboot.commands.common import warn_boot_override
from cfsboot.deploy import softreboot, statusformat
from cfsboot.deploy.fsck.context import Context
from cfsboot.deploy.fsck.esp import EspCode, check_esp
from cfsboot.deploy.fsck.quick import warn_problems
from cfsboot.deploy.status import host_status
from cfsboot.deploy.sysroot import StagedDeployment, Sysroot
from cfsboot.linux import efivars
from cfstest.osimages import os_image
from cfstest.sysroots import DirSysroot, make_sysroot

GUID = efivars.LOADER_GUID
ONESHOT, DEFAULT = efivars.LOADER_ENTRY_ONESHOT, efivars.LOADER_ENTRY_DEFAULT
LAST = efivars.LOADER_ENTRY_LAST_BOOTED
PART_UUID = efivars.LOADER_DEVICE_PART_UUID
# The ESP partition systemd-boot was loaded from (LoaderDevicePartUUID), and another.
LOADED_FROM = "9F3C2A1B-5D6E-4F70-8A9B-0C1D2E3F4A5B"
ANOTHER_ESP = "1A2B3C4D-5E6F-4A7B-8C9D-0E1F2A3B4C5D"
FOREIGN = "title Arch Linux\nlinux /vmlinuz-linux\noptions root=/dev/sda2 rw\n"
V1_ID, V2_ID = "bootc_testos-1-0.conf", "bootc_testos-2-1.conf"
CLEAR_DEFAULT = '`bootctl set-default ""` clears it'


def set_var(efivars_dir: Path, name: str, value: str) -> None:
    """As efivarfs shows a variable bootctl wrote: attributes (NV, BS, RT), UTF-16LE, NUL."""
    efivars_dir.mkdir(exist_ok=True)
    data = (7).to_bytes(4, "little") + (value + "\0").encode("utf-16-le")
    (efivars_dir / f"{name}-{GUID}").write_bytes(data)


@pytest.fixture
def ds(tmp_path: Path) -> DirSysroot:
    """v1 and v2 (the default), and another system's entry `arch.conf` on the ESP."""
    refs = [os_image(tmp_path / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2)]
    ds = make_sysroot(tmp_path / "s", refs)
    (ds.esp / bls.ENTRIES_DIR / "arch.conf").write_text(FOREIGN)
    return ds


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    d = tmp_path / "efivars"
    d.mkdir()
    return d


def live(ds: DirSysroot, efivars_dir: Path) -> Sysroot:
    """The root as the running system's (what only a booted machine has, set by hand)."""
    sysroot = Sysroot(ds.root, run_dir=ds.run, efivars_dir=efivars_dir)
    sysroot.live = True
    return sysroot


def status(
    ds: DirSysroot,
    sysroot: Sysroot,
    monkeypatch: pytest.MonkeyPatch,
    bl: Bootloader | None = None,
) -> tuple[dict[str, object], str]:
    """(status.cfsboot.nextBoot, the human layout's last line)."""
    monkeypatch.setattr(softreboot, "capable", lambda *a: False)  # needs a booted system
    doc = host_status(sysroot, bl or ds.bootloader(), usr=ds.root / "no-usr")
    last = statusformat.human(doc).rstrip("\n").splitlines()[-1]
    return dict(doc["status"]["cfsboot"]["nextBoot"]), last


def override(ds: DirSysroot, variable: str, value: str, message: str) -> dict[str, object]:
    return {
        "variable": variable,
        "value": value,
        "cfsbootDeployment": ds.digests[1],
        "message": message,
    }


# -- status ------------------------------------------------------------------------------


def test_unset_cfsboot_default_boots(
    ds: DirSysroot, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    nxt, last = status(ds, live(ds, fake), monkeypatch)
    assert nxt == {"deployment": ds.digests[1], "entry": V2_ID, "override": None}
    assert not last.startswith("Boot loader override")


def assert_override(
    ds: DirSysroot,
    sysroot: Sysroot,
    monkeypatch: pytest.MonkeyPatch,
    var: tuple[str, str, str],
    deployment: str | None,
    message: str,
) -> None:
    """status's nextBoot and its human line, for a variable (name, value as set, entry id
    matched) that overrides cfsboot's default."""
    name, value, entry = var
    nxt, last = status(ds, sysroot, monkeypatch)
    assert nxt == {
        "deployment": deployment,
        "entry": entry,
        "override": override(ds, name, value, message),
    }
    assert last == f"Boot loader override: {message}."


def test_default_names_cfsboot_entry(
    ds: DirSysroot, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_var(fake, DEFAULT, V1_ID)
    message = (
        f"the EFI variable LoaderEntryDefault names {V1_ID} (deployment {ds.digests[0][:12]}…):"
        f" systemd-boot starts it at every boot instead of deployment {ds.digests[1][:12]}…;"
        f" {CLEAR_DEFAULT}"
    )
    assert_override(
        ds, live(ds, fake), monkeypatch, (DEFAULT, V1_ID, V1_ID), ds.digests[0], message
    )


def test_default_names_foreign_entry(
    ds: DirSysroot, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_var(fake, DEFAULT, "Arch.conf")  # matched case-folded, as systemd-boot does
    message = (
        "the EFI variable LoaderEntryDefault names arch.conf (not a cfsboot entry):"
        f" systemd-boot starts it at every boot instead of deployment {ds.digests[1][:12]}…;"
        f" {CLEAR_DEFAULT}"
    )
    var = (DEFAULT, "Arch.conf", "arch.conf")
    assert_override(ds, live(ds, fake), monkeypatch, var, None, message)


def test_default_names_missing_entry(
    ds: DirSysroot, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_var(fake, DEFAULT, "gone.conf")  # systemd-boot passes over it: cfsboot's default boots
    sysroot = live(ds, fake)
    nxt, last = status(ds, sysroot, monkeypatch)
    assert nxt == {"deployment": ds.digests[1], "entry": V2_ID, "override": None}
    assert not last.startswith("Boot loader override")
    ctx = Context(sysroot, None, ds.bootloader(), False, live=ds.menu())
    notes = [n for n in check_esp(ctx).notes if n.code == EspCode.LOADER_VARIABLE_UNMATCHED]
    assert [n.line() for n in notes] == [
        "EFI variable LoaderEntryDefault: 'gone.conf' names no boot entry: systemd-boot"
        ' passes over it (`bootctl set-default ""` removes it)'
    ]


def test_oneshot_over_default(ds: DirSysroot, fake: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    set_var(fake, DEFAULT, "arch.conf")
    set_var(fake, ONESHOT, V1_ID)
    message = (
        f"the EFI variable LoaderEntryOneShot names {V1_ID} (deployment {ds.digests[0][:12]}…):"
        f" systemd-boot starts it at the next boot instead of deployment {ds.digests[1][:12]}…;"
        ' `bootctl set-oneshot ""` clears it'
    )
    assert_override(
        ds, live(ds, fake), monkeypatch, (ONESHOT, V1_ID, V1_ID), ds.digests[0], message
    )


def test_offline_sysroot_ignores_host_variables(
    ds: DirSysroot, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_var(fake, DEFAULT, "arch.conf")
    set_var(fake, ONESHOT, "gone.conf")
    monkeypatch.setattr(efivars, "EFIVARS", fake)  # the host's, were they read
    for sysroot in (Sysroot(ds.root, run_dir=ds.run, efivars_dir=fake), ds.sysroot()):
        assert not sysroot.live and sysroot.loader_efivars() is None
        nxt, _ = status(ds, sysroot, monkeypatch)
        assert nxt == {"deployment": ds.digests[1], "entry": V2_ID, "override": None}
        ctx = Context(sysroot, None, ds.bootloader(), False, live=ds.menu())
        assert [n.code for n in check_esp(ctx).notes] == []
    # The same root as the running system reads them (the host's efivarfs by default).
    sysroot = ds.sysroot()
    sysroot.live = True
    assert sysroot.loader_efivars() == fake
    assert status(ds, sysroot, monkeypatch)[0]["entry"] == "arch.conf"


def test_grub_ignores_the_variables(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refs = [os_image(tmp_path / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2)]
    ds = make_sysroot(tmp_path / "g", refs, kind=BootloaderKind.GRUB)
    set_var(fake, DEFAULT, "*")
    set_var(fake, ONESHOT, "gone.conf")
    sysroot = live(ds, fake)
    nxt, last = status(ds, sysroot, monkeypatch)
    assert nxt == {"deployment": ds.digests[1], "entry": None, "override": None}
    assert not last.startswith("Boot loader override")
    ctx = Context(sysroot, None, ds.bootloader(), False, live=ds.menu())
    assert [n.code for n in check_esp(ctx).notes] == []
    warn_boot_override(sysroot, ds.bootloader())
    assert warnings(caplog) == []


def test_staged_menu_is_what_boots_next(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    refs = [os_image(tmp_path / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2, 3)]
    ds = make_sysroot(tmp_path / "s", refs[:2], staged=refs[2])
    nxt, _ = status(ds, live(ds, fake), monkeypatch)
    assert nxt == {"deployment": ds.digests[2], "entry": "bootc_testos-3-2.conf", "override": None}
    # The live default's id is v2's in the staged menu too: it still wins after finalize.
    set_var(fake, DEFAULT, V2_ID)
    nxt, _ = status(ds, live(ds, fake), monkeypatch)
    assert (nxt["deployment"], nxt["entry"]) == (ds.digests[1], V2_ID)
    assert nxt["override"] == {
        "variable": DEFAULT,
        "value": V2_ID,
        "cfsbootDeployment": ds.digests[2],
        "message": f"the EFI variable LoaderEntryDefault names {V2_ID} (deployment"
        f" {ds.digests[1][:12]}…): systemd-boot starts it at every boot instead of deployment"
        f" {ds.digests[2][:12]}…; {CLEAR_DEFAULT}",
    }


def unmatched_notes(sysroot: Sysroot, ds: DirSysroot, bl: Bootloader | None = None) -> list[str]:
    ctx = Context(sysroot, None, bl or ds.bootloader(), False, live=ds.menu())
    notes = check_esp(ctx).notes
    return [n.line() for n in notes if n.code == EspCode.LOADER_VARIABLE_UNMATCHED]


def test_a_staged_menu_finalize_refuses_does_not_boot_next(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The marker names another deployment than the staged menu's first: finalize refuses
    it, the live menu boots next, and status, fsck's note and the warning all say so."""
    refs = [os_image(tmp_path / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2, 3)]
    ds = make_sysroot(tmp_path / "s", refs[:2], staged=refs[2])
    sysroot = live(ds, fake)
    sysroot.write_staged(StagedDeployment(ds.digests[0]))
    assert sysroot.staged_entry(ds.bootloader()) is None
    set_var(fake, ONESHOT, "bootc_testos-3-*")  # v3: in the staged menu only
    nxt, _ = status(ds, sysroot, monkeypatch)
    assert nxt == {"deployment": ds.digests[1], "entry": V2_ID, "override": None}
    assert unmatched_notes(sysroot, ds) == [
        "EFI variable LoaderEntryOneShot: 'bootc_testos-3-*' names no boot entry: systemd-boot"
        ' passes over it (`bootctl set-oneshot ""` removes it)'
    ]
    set_var(fake, ONESHOT, V2_ID)  # the live default: no override of the live menu
    warn_boot_override(sysroot, ds.bootloader())
    assert warnings(caplog) == []


def test_what_boots_next_of_a_staged_deployment(tmp_path: Path, fake: Path) -> None:
    refs = [os_image(tmp_path / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2, 3)]
    ds = make_sysroot(tmp_path / "s", refs[:2], staged=refs[2])
    sysroot, bl = live(ds, fake), ds.bootloader()
    staged = sysroot.staged_entry(bl)
    assert staged is not None and staged.deployment == ds.digests[2]
    assert sysroot.staged_next(bl) == staged
    # Download-only: staged still, but finalize leaves it.
    sysroot.write_staged(StagedDeployment(ds.digests[2], finalization_locked=True))
    assert (sysroot.staged_entry(bl), sysroot.staged_next(bl)) == (staged, None)
    # Without its state directory finalize refuses it (the live default stays).
    sysroot.write_staged(StagedDeployment(ds.digests[2]))
    sysroot.deploy_dir(ds.digests[2]).rename(tmp_path / "moved")
    assert (sysroot.staged_entry(bl), sysroot.staged_next(bl)) == (staged, None)
    # No staged menu: nothing staged (the marker alone is a leftover fsck reports).
    bl.discard_staged()
    assert (sysroot.staged_entry(bl), sysroot.staged_next(bl)) == (None, None)


def test_status_reads_the_variables_once(
    ds: DirSysroot, fake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """status's quick check (fsck's unmatched-variable note) and its nextBoot share one
    read of each variable; a root open for writing reads them each time it is asked."""
    set_var(fake, DEFAULT, "arch.conf")
    reads: list[str] = []
    real = efivars.loader_string

    def loader_string(name: str, efivars_dir: Path = efivars.EFIVARS) -> str | None:
        reads.append(name)
        return real(name, efivars_dir)

    monkeypatch.setattr(efivars, "loader_string", loader_string)
    monkeypatch.setattr(softreboot, "capable", lambda *a: False)  # needs a booted system
    sysroot = Sysroot(ds.root, run_dir=ds.run, efivars_dir=fake, read_once=True)
    sysroot.live = True
    bl = ds.bootloader()
    warn_problems(sysroot, bl)
    doc = host_status(sysroot, bl, usr=ds.root / "no-usr")
    assert doc["status"]["cfsboot"]["nextBoot"]["entry"] == "arch.conf"
    assert reads == [PART_UUID, ONESHOT, DEFAULT, LAST]
    writer = live(ds, fake)
    assert writer.loader_vars(bl) == LoaderVars(default="arch.conf")
    set_var(fake, DEFAULT, V1_ID)
    assert writer.loader_vars(bl) == LoaderVars(default=V1_ID)
    assert sysroot.loader_vars(bl) == LoaderVars(default="arch.conf")


def test_variables_of_another_esp_are_not_read(
    ds: DirSysroot, fake: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """--esp names another ESP than the one systemd-boot was loaded from: the variables
    choose from that one's menu, so status, fsck and the warning read none of them."""
    set_var(fake, DEFAULT, "arch.conf")
    set_var(fake, ONESHOT, "gone.conf")
    sysroot, both = live(ds, fake), LoaderVars("gone.conf", "arch.conf")
    # Which partition each ESP is, as espfind works it out from the disk (test_espfind,
    # and tests/integration/test_espfind_loop.py on a loop device); ds.esp is a directory.
    partitions: dict[Esp, str] = {}
    real = espfind.partition_uuid
    monkeypatch.setattr(espfind, "partition_uuid", lambda e: partitions.get(e) or real(e))

    def on(partuuid: str) -> Bootloader:
        bl = ds.bootloader()
        partitions[bl.esp] = partuuid
        return bl

    # The ESP systemd-boot came from (the variable's UUID in either case), and a plain
    # directory whose partition cannot be known (read as before).
    for value in (LOADED_FROM.lower(), LOADED_FROM):
        set_var(fake, PART_UUID, value)
        for bl in (on(LOADED_FROM), ds.bootloader()):
            assert sysroot.loader_vars(bl) == both
    nxt, _ = status(ds, sysroot, monkeypatch, on(LOADED_FROM))
    assert nxt["entry"] == "arch.conf"
    other = on(ANOTHER_ESP)
    assert sysroot.loader_vars(other) == LoaderVars()
    nxt, last = status(ds, sysroot, monkeypatch, other)
    assert nxt == {"deployment": ds.digests[1], "entry": V2_ID, "override": None}
    assert not last.startswith("Boot loader override")
    assert unmatched_notes(sysroot, ds, other) == []
    assert len(unmatched_notes(sysroot, ds, on(LOADED_FROM))) == 1
    warn_boot_override(sysroot, other)
    assert warnings(caplog) == []


# -- switch / upgrade / rollback / finalize ------------------------------------------------


def warnings(caplog: pytest.LogCaptureFixture) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("value", "warned"),
    [
        ("arch.conf", True),  # another system's entry wins over the rollback
        (V2_ID, False),  # rollback renames v2's entry (`-0`): it names nothing now
    ],
)
def test_rollback_warns_once_exit_unchanged(
    ds: DirSysroot,
    fake: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
    value: str,
    warned: bool,
) -> None:
    set_var(fake, DEFAULT, value)
    # The command's root is not the running system here: give it the variables of one.
    monkeypatch.setattr(Sysroot, "loader_efivars", lambda self: fake)
    assert cli.main(["rollback", *map(str, ds.args())]) == 0
    assert (
        capsys.readouterr().err
        == f"deployment {ds.digests[0][:12]}… (Test OS) is now the default\n"
    )
    line = (
        "the EFI variable LoaderEntryDefault names arch.conf (not a cfsboot entry):"
        f" systemd-boot starts it at every boot instead of deployment {ds.digests[0][:12]}…;"
        f" {CLEAR_DEFAULT}"
    )
    assert warnings(caplog) == ([(logging.WARNING, line)] if warned else [])


def test_finalize_warns(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refs = [os_image(tmp_path / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2, 3)]
    ds = make_sysroot(tmp_path / "s", refs[:2], staged=refs[2])
    set_var(fake, DEFAULT, "arch.conf")
    (ds.esp / bls.ENTRIES_DIR / "arch.conf").write_text(FOREIGN)  # finalize carries it over
    monkeypatch.setattr(Sysroot, "loader_efivars", lambda self: fake)
    assert cli.main(["finalize-staged", *map(str, ds.args())]) == 0
    assert ds.menu()[0].deployment == ds.digests[2]
    assert warnings(caplog) == [
        (
            logging.WARNING,
            "the EFI variable LoaderEntryDefault names arch.conf (not a cfsboot entry):"
            f" systemd-boot starts it at every boot instead of deployment {ds.digests[2][:12]}…;"
            f" {CLEAR_DEFAULT}",
        )
    ]


def test_staged_switch_warns_against_staged_menu(
    tmp_path: Path, fake: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refs = [os_image(tmp_path / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2, 3)]
    ds = make_sysroot(tmp_path / "s", refs[:2], staged=refs[2])
    set_var(fake, ONESHOT, "bootc_testos-2-*")  # v2: the live default, behind v3 once staged
    warn_boot_override(live(ds, fake), ds.bootloader())
    assert warnings(caplog) == [
        (
            logging.WARNING,
            "the EFI variable LoaderEntryOneShot names bootc_testos-2-1.conf (deployment"
            f" {ds.digests[1][:12]}…): systemd-boot starts it at the next boot instead of"
            f' deployment {ds.digests[2][:12]}…; `bootctl set-oneshot ""` clears it',
        )
    ]


# -- the rules -----------------------------------------------------------------------------


def entry(name: str, sort_key: str | None = None) -> EntryFile:
    return EntryFile(name, BLSEntry(title=name, linux="/k", sort_key=sort_key))


ENTRIES = [
    entry("b.conf", "b"),
    entry("a+2-1.conf", "a"),  # on trial: its id has no counter
    entry("c.conf"),
]


@pytest.mark.parametrize(
    ("lv", "conf", "want"),
    [
        # nothing set: loader.conf's default, else the first in menu order
        (LoaderVars(), None, ("a.conf", None)),
        (LoaderVars(), "c.conf", ("c.conf", None)),
        # a glob, case-folded, against ids without the boot counter; first in menu order
        (LoaderVars(default="B.CONF"), None, ("b.conf", DEFAULT)),
        (LoaderVars(default="a.conf"), "c.conf", ("a.conf", DEFAULT)),
        (LoaderVars(default="a+2-1.conf"), None, ("a.conf", None)),
        (LoaderVars(default="?.conf"), "c.conf", ("a.conf", DEFAULT)),
        # a value naming nothing is passed over: the next rule decides
        (LoaderVars(default="x.conf"), "c.conf", ("c.conf", None)),
        (LoaderVars(oneshot="x.conf", default="b.conf"), None, ("b.conf", DEFAULT)),
        # the one-shot entry comes first
        (LoaderVars(oneshot="c.conf", default="b.conf"), None, ("c.conf", ONESHOT)),
        # @saved: the entry booted last (LoaderEntryLastBooted), from the variable or loader.conf
        (LoaderVars(default="@saved", last_booted="c.conf"), "b.conf", ("c.conf", LAST)),
        (LoaderVars(default="@SAVED"), "b.conf", ("b.conf", None)),
        (LoaderVars(last_booted="c.conf"), "@saved", ("c.conf", LAST)),
        (LoaderVars(last_booted="x.conf"), "@saved", ("a.conf", None)),
        (LoaderVars(last_booted="c.conf"), None, ("a.conf", None)),
        # systemd-boot's own entries are not files: a variable naming one is believed
        (LoaderVars(oneshot="auto-windows"), None, ("auto-windows", ONESHOT)),
    ],
)
def test_choose(lv: LoaderVars, conf: str | None, want: tuple[str, str | None]) -> None:
    c = choose(ENTRIES, conf, lv)
    assert c.entry is not None
    assert (c.entry.id, c.variable) == want


def test_saved_hints() -> None:
    by_var = choose(ENTRIES, None, LoaderVars(default="@saved", last_booted="c.conf"))
    assert by_var.clear == '`bootctl set-default ""` clears the @saved default'
    by_conf = choose(ENTRIES, "@saved", LoaderVars(last_booted="c.conf"))
    assert by_conf.clear == "drop `default @saved` from loader/loader.conf"


def test_read_loader_vars(fake: Path) -> None:
    assert read_loader_vars(None) == LoaderVars()
    assert read_loader_vars(fake) == LoaderVars()
    set_var(fake, ONESHOT, "a.conf")
    set_var(fake, DEFAULT, "")  # empty: no value (it would match no entry)
    set_var(fake, LAST, "bootc_x-1.conf")
    assert read_loader_vars(fake) == LoaderVars("a.conf", None, "bootc_x-1.conf")


def test_type2_ukis_in_efi_linux_are_entries(ds: DirSysroot, fake: Path) -> None:
    (ds.esp / "EFI/Linux/other-os+3.efi").write_bytes(b"MZ")
    set_var(fake, DEFAULT, "other-os.efi")
    nb = next_boot(ds.bootloader(), read_loader_vars(fake))
    assert nb.chosen.entry is not None and nb.chosen.entry.id == "other-os.efi"
    assert nb.overridden and nb.cfsboot.deployment == ds.digests[1]
    assert json.dumps(nb.chosen.deployment) == "null"


def test_switch_warns(
    ds: DirSysroot,
    tmp_path: Path,
    fake: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    v3 = os_image(tmp_path / "v3", "3", kernel="k3")
    set_var(fake, ONESHOT, "arch.conf")
    monkeypatch.setattr(Sysroot, "loader_efivars", lambda self: fake)
    assert cli.main(["switch", "-q", v3, *map(str, ds.args())]) == 0
    staged = ds.menu(staged=True)[0].deployment
    assert capsys.readouterr().out == f"{staged}\n"
    assert warnings(caplog) == [
        (
            logging.WARNING,
            "the EFI variable LoaderEntryOneShot names arch.conf (not a cfsboot entry):"
            f" systemd-boot starts it at the next boot instead of deployment {staged[:12]}…;"
            ' `bootctl set-oneshot ""` clears it',
        )
    ]


def test_warning_when_loader_conf_names_another_system() -> None:
    # loader.conf's `default` picks c.conf (not cfsboot's); the variable picks b.conf.
    nb = NextBoot(
        choose(ENTRIES, "c.conf", LoaderVars(default="b.conf")),
        choose(ENTRIES, "c.conf", LoaderVars()),
    )
    assert nb.warning() == (
        "the EFI variable LoaderEntryDefault names b.conf (not a cfsboot entry): systemd-boot"
        f" starts it at every boot instead of c.conf; {CLEAR_DEFAULT}"
    )
    same = NextBoot(
        choose(ENTRIES, None, LoaderVars(default="a.conf")), choose(ENTRIES, None, LoaderVars())
    )
    assert not same.overridden and same.warning() is None


def test_download_only_warns_when_let_boot(
    tmp_path: Path, fake: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    refs = [os_image(tmp_path / f"v{v}", str(v), kernel=f"k{v}") for v in (1, 2, 3)]
    ds = make_sysroot(tmp_path / "s", refs[:2], staged=refs[2])
    sysroot = live(ds, fake)
    sysroot.write_staged(StagedDeployment(ds.digests[2], finalization_locked=True))
    set_var(fake, DEFAULT, V2_ID)
    # Downloaded only: nothing was made the default, nothing to warn about.
    warn_boot_override(sysroot, ds.bootloader())
    assert warnings(caplog) == []
    monkeypatch.setattr(Sysroot, "loader_efivars", lambda self: fake)
    assert cli.main(["upgrade", "--from-downloaded", *map(str, ds.args())]) == 0
    assert warnings(caplog) == [
        (
            logging.WARNING,
            f"the EFI variable LoaderEntryDefault names {V2_ID} (deployment"
            f" {ds.digests[1][:12]}…): systemd-boot starts it at every boot instead of deployment"
            f" {ds.digests[2][:12]}…; {CLEAR_DEFAULT}",
        )
    ]
