"""Boot counting: BLS entry names, grubenv, the GRUB menu's counting code, menus on an ESP."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from cfsboot.boot import bls
from cfsboot.boot.bootloader import MenuEntry, SystemdBoot
from cfsboot.boot.boottype import BootType
from cfsboot.boot.counting import (
    ENV_SIZE,
    GrubEnv,
    GrubEnvError,
    Tries,
    counted_name,
    grub_tries,
    split_name,
)
from cfsboot.boot.esp import DirEsp
from cfsboot.boot.grub import GrubEntry, GrubError, GrubMenu
from cfsboot.boot.grubloader import Grub
from cfstest.gates import missing_capability

A, B, C = "aa" * 64, "bb" * 64, "cc" * 64


# -- BLS names ---------------------------------------------------------------------------------


def test_names_follow_systemd_boots_walk() -> None:
    """The Automatic Boot Assessment walk: +3, +2-1, +1-2, +0-3; blessed: no counter."""
    name = "bootc_debian-13.2-1.conf"
    walk = [Tries(3), Tries(2, 1), Tries(1, 2), Tries(0, 3)]
    names = [counted_name(name, t) for t in walk]
    assert names == [
        "bootc_debian-13.2-1+3.conf",
        "bootc_debian-13.2-1+2-1.conf",
        "bootc_debian-13.2-1+1-2.conf",
        "bootc_debian-13.2-1+0-3.conf",
    ]
    assert [split_name(n) for n in names] == [(name, t) for t in walk]
    assert split_name(name) == (name, None)
    assert counted_name(name, None) == name
    assert [Tries(0, 3).failed, Tries(1, 2).failed] == [True, False]


def test_entry_file_agrees_with_split_name() -> None:
    for n in ("x+3.conf", "x+0-3.conf", "x.conf", "x-1+12-3.conf"):
        ef = bls.EntryFile(n, bls.BLSEntry())
        base, tries = split_name(n)
        assert ef.id == base
        assert ef.tries_left == (tries.left if tries else None)
        assert ef.tries_done == (tries.done if tries else 0)


def test_out_of_tries_sorts_after_everything() -> None:
    def ef(name: str, key: str) -> bls.EntryFile:
        return bls.EntryFile(name, bls.BLSEntry(sort_key=key))

    bad, good = ef("bootc_os-2-1+0-3.conf", "bootc-os-0"), ef("bootc_os-1-0.conf", "bootc-os-1")
    trial = ef("bootc_os-2-1+1-2.conf", "bootc-os-0")
    assert [e.name for e in bls.sort_entries([bad, good])] == [good.name, bad.name]
    assert [e.name for e in bls.sort_entries([good, trial])] == [trial.name, good.name]


# -- grubenv -------------------------------------------------------------------------------------


def test_grubenv_block_layout() -> None:
    env = GrubEnv((("k1", "0"),), ("saved_entry=other",))
    data = env.render()
    assert len(data) == ENV_SIZE
    assert data.startswith(b"# GRUB Environment Block\ncfsboot_t_k1=0\nsaved_entry=other\n#")
    assert data.rstrip(b"#").endswith(b"\n")
    assert GrubEnv.parse(data) == env


def test_grubenv_counters_of_a_full_menu_stay_in_the_first_sector() -> None:
    """GRUB's in-place rewrite of one value then touches one 512-byte sector only."""
    keys = [f"{i:02d}" * 5 + "abcdef" for i in range(10)]
    data = GrubEnv(tuple((k, "9") for k in keys)).render()
    last = data.index(b"cfsboot_t_" + keys[-1].encode())
    assert last + len(f"cfsboot_t_{keys[-1]}=9\n") <= 512


def test_grubenv_refuses_what_is_not_a_block_and_what_does_not_fit() -> None:
    with pytest.raises(GrubEnvError, match="not a GRUB environment block"):
        GrubEnv.parse(b"# GRUB Environment Block\n")
    with pytest.raises(GrubEnvError, match="too full"):
        GrubEnv((), ("x=" + "y" * 1100,)).render()


def test_grubenv_escaped_newlines_stay_in_their_value() -> None:
    raw = b"# GRUB Environment Block\nmsg=a\\\nb\ncfsboot_t_k=2\n"
    env = GrubEnv.parse(raw + b"#" * (ENV_SIZE - len(raw)))
    assert env.other == ("msg=a\\\nb",) and env.get("k") == "2"


@pytest.mark.parametrize(
    ("value", "tries"),
    [
        (None, Tries(3, 0, "k")),
        ("0", Tries(3, 0, "k")),
        ("1", Tries(2, 1, "k")),
        ("3", Tries(0, 3, "k")),
        ("7", Tries(0, 3, "k")),  # past the limit: out of tries
        ("1####", Tries(0, 3, "k")),  # unreadable: out of tries, as the menu reads it
        ("good", None),
    ],
)
def test_grub_values(value: str | None, tries: Tries | None) -> None:
    assert grub_tries(value, 3, "k") == tries


# -- the GRUB menu's counting code ------------------------------------------------------------


def _grub_entry(d: str, counter: tuple[str, int] | None) -> GrubEntry:
    return GrubEntry(
        title=f"OS {d[:2]}",
        deployment=d,
        linux=f"/EFI/Linux/bootc_composefs-{d}/vmlinuz",
        initrd=(f"/EFI/Linux/bootc_composefs-{d}/initrd",),
        options=("rw", f"composefs={d}"),
        counter=counter,
    )


def test_counting_code_of_an_entry_exact() -> None:
    text = GrubMenu((_grub_entry(A, ("k1", 2)), _grub_entry(B, None))).render()
    body = text.split(f"--id cfsboot-{A} {{\n", 1)[1].split("\tinsmod", 1)[0]
    assert body == (
        "\t# cfsboot-counting k1 2 begin\n"
        '\tif [ -f "${cfsboot_env}" ]; then\n'
        '\t\tload_env --skip-sig --file "${cfsboot_env}" cfsboot_t_k1\n'
        '\t\tif [ -z "${cfsboot_t_k1}" -o "${cfsboot_t_k1}" = 0 ]; then\n'
        "\t\t\tset cfsboot_t_k1=1\n"
        '\t\t\tsave_env --file "${cfsboot_env}" cfsboot_t_k1\n'
        '\t\telif [ "${cfsboot_t_k1}" = 1 ]; then\n'
        "\t\t\tset cfsboot_t_k1=2\n"
        '\t\t\tsave_env --file "${cfsboot_env}" cfsboot_t_k1\n'
        "\t\tfi\n"
        "\tfi\n"
        "\t# cfsboot-counting end\n"
    )
    preamble = text.split("\n\nmenuentry", 1)[0].split(f"set default=cfsboot-{A}\n", 1)[1]
    assert preamble == (
        "# cfsboot-counting menu begin\n"
        'set cfsboot_env="${config_directory}/grubenv"\n'
        'if [ ! -f "${cfsboot_env}" ]; then\n'
        '\tset cfsboot_env="(${root})/EFI/BOOT/grubenv"\n'
        "fi\n"
        "export cfsboot_env\n"
        'if [ -f "${cfsboot_env}" ]; then\n'
        '\tload_env --skip-sig --file "${cfsboot_env}" cfsboot_t_k1\n'
        '\tif [ "${cfsboot_t_k1}" = good -o -z "${cfsboot_t_k1}" -o "${cfsboot_t_k1}" = 0'
        ' -o "${cfsboot_t_k1}" = 1 ]; then\n'
        f"\t\tset default=cfsboot-{A}\n"
        "\telif true; then\n"
        f"\t\tset default=cfsboot-{B}\n"
        "\tfi\n"
        "fi\n"
        "# cfsboot-counting end"
    )


def test_menu_without_counters_has_no_counting_code() -> None:
    text = GrubMenu((_grub_entry(A, None), _grub_entry(B, None))).render()
    assert "cfsboot-counting" not in text and "$" not in text


@pytest.mark.parametrize("limit", [1, 3, 9])
def test_counted_menus_parse_back(limit: int) -> None:
    menu = GrubMenu(
        (_grub_entry(A, ("k1", limit)), _grub_entry(B, ("k2", 2)), _grub_entry(C, None))
    )
    assert GrubMenu.parse(menu.render()) == menu


def test_counting_code_that_is_not_ours_is_refused() -> None:
    text = GrubMenu((_grub_entry(A, ("k1", 2)),)).render()
    tampered = text.replace("set cfsboot_t_k1=2\n", "set cfsboot_t_k1=0\n")
    with pytest.raises(GrubError, match="not what cfsboot writes"):
        GrubMenu.parse(tampered)
    with pytest.raises(GrubError, match="not closed"):
        GrubMenu.parse(text.replace("\t# cfsboot-counting end\n", ""))


def _script_check(text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("grub-script-check")
    if tool is None:
        missing_capability("grub-script-check not found (apt-get install grub-common)")
        raise AssertionError("unreachable")
    path = tmp_path / "grub.cfg"
    path.write_text(text)
    return subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)


@pytest.mark.parametrize(
    "counters",
    [
        (None, None),
        (("k1", 3), None),
        (("k1", 1), ("k2", 9)),
        (None, ("k2", 2)),
    ],
)
def test_grub_script_check_accepts_every_menu(
    counters: tuple[tuple[str, int] | None, ...], tmp_path: Path
) -> None:
    entries = [_grub_entry(d, c) for d, c in zip((A, B), counters, strict=True)]
    uki = GrubEntry(
        title="UKI", deployment=C, chainload="/EFI/Linux/bootc/x.efi", counter=("k3", 2)
    )
    proc = _script_check(GrubMenu((*entries, uki)).render(), tmp_path)
    assert (proc.returncode, proc.stderr) == (0, "")


def test_grub_script_check_catches_a_broken_script(tmp_path: Path) -> None:
    """The check the tests above rely on fails on a script GRUB cannot parse."""
    text = GrubMenu((_grub_entry(A, ("k1", 2)),)).render().replace("\tfi\n", "", 1)
    assert _script_check(text, tmp_path).returncode != 0


# -- menus on an ESP ---------------------------------------------------------------------------


def _entry(d: str, version: str, tries: Tries | None = None) -> MenuEntry:
    kdir = f"/EFI/Linux/bootc_composefs-{d}"
    return MenuEntry(
        d,
        BootType.BLS,
        "OS",
        version,
        "os",
        linux=f"{kdir}/vmlinuz",
        initrd=(f"{kdir}/initrd",),
        options=("rw", f"composefs={d}"),
        tries=tries,
    )


def test_systemd_boot_names_and_keeps_counters(tmp_path: Path) -> None:
    esp = DirEsp(tmp_path)
    sd = SystemdBoot(esp)
    sd.write_menu([_entry(B, "1")])
    sd.write_menu([_entry(A, "2", Tries(3)), _entry(B, "1")])
    live = tmp_path / bls.ENTRIES_DIR
    assert sorted(p.name for p in live.iterdir()) == ["bootc_os-1-0.conf", "bootc_os-2-1+3.conf"]
    # systemd-boot counts two tries down; the menu lists it last once they are spent.
    (live / "bootc_os-2-1+3.conf").rename(live / "bootc_os-2-1+0-3.conf")
    assert [m.deployment for m in sd.menu()] == [B, A]
    assert sd.written_order() == [A, B]
    assert sd.menu()[1].tries == Tries(0, 3) and sd.menu()[1].failed
    # A rewrite (say C staged) keeps A's spent counter: it stays passed over.
    sd.write_menu([_entry(C, "3", Tries(2)), *sd.menu()])
    assert sorted(p.name for p in live.iterdir()) == [
        "bootc_os-1-1.conf",
        "bootc_os-2-0+0-3.conf",
        "bootc_os-3-2+2.conf",
    ]


def test_systemd_boot_commit_takes_the_live_counters_of_all_but_the_first(
    tmp_path: Path,
) -> None:
    """A blessing between stage and finalize is not undone by the staged menu."""
    sd = SystemdBoot(DirEsp(tmp_path))
    sd.write_menu([_entry(A, "2", Tries(2, 1)), _entry(B, "1")])
    sd.stage([_entry(C, "3", Tries(3)), *sd.menu()])
    assert sd.bless(A) == "renamed loader/entries/bootc_os-2-1+2-1.conf to bootc_os-2-1.conf"
    sd.commit()
    names = sorted(p.name for p in (tmp_path / bls.ENTRIES_DIR).iterdir())
    assert names == ["bootc_os-1-0.conf", "bootc_os-2-1.conf", "bootc_os-3-2+3.conf"]
    assert sd.bless(A) is None  # nothing on trial any more


def test_grub_counters_live_in_grubenv(tmp_path: Path) -> None:
    esp = DirEsp(tmp_path)
    g = Grub(esp)
    g.write_menu([_entry(B, "1")])
    assert not (tmp_path / "EFI/BOOT/grubenv").exists()  # nothing counted: no block
    g.write_menu([_entry(A, "2", Tries(2)), *g.menu()])
    [a, b] = g.menu()
    assert a.deployment == A and a.tries is not None and a.tries.key is not None
    assert (a.tries.left, a.tries.done, b.tries) == (2, 0, None)
    env = GrubEnv.parse((tmp_path / "EFI/BOOT/grubenv").read_bytes())
    assert env.counters == ((a.tries.key, "0"),)
    # GRUB counts both tries (save_env); then GRUB's preamble and cfsboot agree: B first.
    envpath = tmp_path / "EFI/BOOT/grubenv"
    envpath.write_bytes(env.with_counters({a.tries.key: "2"}).render())
    assert [m.deployment for m in g.menu()] == [B, A] and g.menu()[1].failed
    assert g.written_order() == [A, B]
    # Staging A again gives it a new trial under a new key; the spent one is dropped.
    g.write_menu([_entry(A, "2", Tries(3)), _entry(B, "1")])
    [a2, _] = g.menu()
    assert a2.tries is not None and a2.tries.key not in (None, a.tries.key)
    # The spent key stays while a menu names it (the live one did, at stage time).
    counters = ((a2.tries.key, "0"), (a.tries.key, "2"))
    assert GrubEnv.parse(envpath.read_bytes()).counters == counters
    assert g.bless(A) == f"EFI/BOOT/grubenv: {a2.tries.key} = good"
    assert g.menu()[0].tries is None and g.bless(A) is None


# -- the GRUB menu, run (cfstest.grubsim: GRUB's manual, not cfsboot's code) ---------------------

ROOT = "hd0,gpt1"
ENV_PATH = f"({ROOT})/EFI/BOOT/grubenv"


def _boots(
    text: str, env: GrubEnv | None, n: int, *, config: str = "/EFI/BOOT/grub.cfg"
) -> tuple[list[str], dict[str, bytes]]:
    from cfstest.grubsim import Grub as GrubSim

    files = {f"({ROOT}){config}": text.encode()}
    if env is not None:
        files[ENV_PATH] = env.render()
    sim = GrubSim(files, config, root=ROOT)
    booted = [sim.boot().entry.id.removeprefix("cfsboot-")[:2] for _ in range(n)]
    return booted, files


def test_grub_tries_the_trial_then_falls_back() -> None:
    menu = GrubMenu((_grub_entry(A, ("k1", 2)), _grub_entry(B, None)))
    booted, files = _boots(menu.render(), GrubEnv((("k1", "0"),)), 4)
    assert booted == ["aa", "aa", "bb", "bb"]
    assert GrubEnv.parse(files[ENV_PATH]).counters == (("k1", "2"),)


def test_grub_keeps_booting_a_blessed_entry_without_counting() -> None:
    menu = GrubMenu((_grub_entry(A, ("k1", 2)), _grub_entry(B, None)))
    env = GrubEnv((("k1", "good"),), ("saved_entry=x",))
    booted, files = _boots(menu.render(), env, 3)
    assert booted == ["aa", "aa", "aa"]
    assert files[ENV_PATH] == env.render()  # nothing written


def test_grub_finds_the_block_on_the_esp_when_the_menu_is_sourced_from_elsewhere() -> None:
    """$config_directory names another directory: the block at cfsboot's place on $root."""
    menu = GrubMenu((_grub_entry(A, ("k1", 1)), _grub_entry(B, None)))
    booted, files = _boots(menu.render(), GrubEnv((("k1", "0"),)), 2, config="/boot/grub.cfg")
    assert booted == ["aa", "bb"]


def test_grub_without_its_environment_block_boots_the_first_entry() -> None:
    menu = GrubMenu((_grub_entry(A, ("k1", 2)), _grub_entry(B, None)))
    assert _boots(menu.render(), None, 3)[0] == ["aa", "aa", "aa"]


def test_grub_counts_a_value_it_cannot_read_as_spent() -> None:
    menu = GrubMenu((_grub_entry(A, ("k1", 2)), _grub_entry(B, ("k2", 3)), _grub_entry(C, None)))
    booted, files = _boots(menu.render(), GrubEnv((("k1", "x"), ("k2", "2"))), 3)
    assert booted == ["bb", "cc", "cc"]  # B's last try, then C
    assert GrubEnv.parse(files[ENV_PATH]).get("k2") == "3"


def test_grub_boots_the_first_entry_when_every_trial_is_spent() -> None:
    menu = GrubMenu((_grub_entry(A, ("k1", 1)), _grub_entry(B, ("k2", 1))))
    booted, files = _boots(menu.render(), GrubEnv((("k1", "1"), ("k2", "1"))), 2)
    assert booted == ["aa", "aa"]
    assert GrubEnv.parse(files[ENV_PATH]).counters == (("k1", "1"), ("k2", "1"))
