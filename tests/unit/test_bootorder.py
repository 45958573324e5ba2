"""The boot order oracle (cfstest.bootorder, cfstest.grubmenu) against systemd: its
test-bootspec vector and `bootctl list` on copies of ESPs; and cfsboot's own menu order
against the oracle. The version comparison: test_bootorder_versions.py."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from dataclasses import replace
from functools import cmp_to_key
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cfsboot.boot import bls
from cfstest import bootorder
from cfstest.bootorder import Entry, glob_match, systemd_boot_menu
from cfstest.gates import can_mount, missing_capability
from cfstest.grubmenu import grub_menu
from cfstest.pe import make_pe

_version_text = st.text(alphabet="0123456789aAzZ.-^~_+", max_size=10)


# ---------------------------------------------------------------------------------------
# Entries and the menu
# ---------------------------------------------------------------------------------------


def _ids(files: list[tuple[str, str]], conf: str | None = None) -> tuple[list[str], str | None]:
    menu = systemd_boot_menu(files, conf)
    return [e.id for e in menu.entries], menu.default.id if menu.default else None


def test_systemd_bootspec_vector() -> None:
    """systemd's src/test/test-bootspec.c: sort-key first, newest first, then by id."""
    ma, mb = "dd235d00696545768f6f693bfd23b15f", "b75451ad92f94feeab50b0b442768dbd"
    mc, md = "309de666fd5044268a9a26541ac93176", "81c6e3147cf544c19006af023e22b292"
    files = [
        ("a-10.conf", f"title A\nversion 10\nmachine-id {ma}\n"),
        ("a-5.conf", f"title A\nversion 5\nmachine-id {ma}\n"),
        ("b.conf", f"title B\nversion 3\nmachine-id {mb}\n"),
        ("c.conf", f"title C\nsort-key xxxx\nversion 5\nmachine-id {mc}\n"),
        ("cx.conf", f"title C\nsort-key xxxx\nversion 10\nmachine-id {mc}\n"),
        ("d.conf", f"title D\nsort-key kkkk\nversion 100\nmachine-id {md}\n"),
    ]  # fmt: skip
    assert _ids(files) == (
        ["d.conf", "cx.conf", "c.conf", "b.conf", "a-10.conf", "a-5.conf"],
        "d.conf",
    )


def test_boot_counting() -> None:
    files = [
        ("new+3.conf", "sort-key os\nversion 3\n"),
        ("bad+0-3.conf", "sort-key os\nversion 9\n"),
        ("good.conf", "sort-key os\nversion 2\n"),
        ("other+0.conf", "version 1\n"),
    ]
    ids, default = _ids(files)
    assert ids == ["new.conf", "good.conf", "bad.conf", "other.conf"]
    assert default == "new.conf"
    [bad] = [e for e in systemd_boot_menu(files).entries if e.id == "bad.conf"]
    assert (bad.tries_left, bad.tries_done, bad.bad) == (0, 3, True)
    # Names equal but for their counters: more tries left first, then fewer done.
    same = [("a+1-2.conf", ""), ("a+2-5.conf", ""), ("a+2-1.conf", "")]
    assert [e.file for e in systemd_boot_menu(same).entries] == [
        "a+2-1.conf",
        "a+2-5.conf",
        "a+1-2.conf",
    ]


def test_loader_conf_default_glob() -> None:
    files = [("bootc_a-1.conf", "sort-key x\n"), ("bootc_b-2.conf", "sort-key y\n")]
    assert _ids(files, "timeout 5\ndefault BOOTC_B*\n")[1] == "bootc_b-2.conf"
    assert _ids(files, 'default "bootc_?-[2-3].conf"\n')[1] == "bootc_b-2.conf"
    assert _ids(files, "default nothing-matches\n")[1] == "bootc_a-1.conf"
    assert _ids(files, "# default bootc_b*\n")[1] == "bootc_a-1.conf"
    with pytest.raises(NotImplementedError):
        systemd_boot_menu(files, "default @saved\n")


@pytest.mark.parametrize(
    ("pattern", "name", "match"),
    [
        ("*", "x.conf", True),
        ("a?c.conf", "abc.conf", True),
        ("a?c.conf", "ac.conf", False),
        ("[a-c]x", "Bx", True),
        ("[a-c]x", "dx", False),
        ("[!a]x", "!x", True),  # no negation: '!' is a member
        ("[!a]x", "bx", False),
        ("a.conf", "A.CONF", True),
        ("a.conf", "a+conf", False),
        ("[ab", "[ab", False),  # no closing bracket: nothing (systemd's efi_fnmatch)
    ],
)
def test_glob(pattern: str, name: str, match: bool) -> None:
    assert glob_match(pattern, name) is match


def test_entry_fields_and_what_it_boots(tmp_path: Path) -> None:
    d = "ab" * 32
    e = bootorder.parse_entry(
        "x+2.conf",
        f"# comment\ntitle  T  1\nlinux /k\ninitrd /i1\ninitrd /i2\n"
        f"options root=UUID=1 rw\noptions composefs=?{d} quiet\n",
    )
    assert (e.id, e.tries_left, e.tries_done, e.title) == ("x.conf", 2, 0, "T  1")
    assert e.initrd == ("/i1", "/i2")
    assert e.options == ("root=UUID=1", "rw", f"composefs=?{d}", "quiet")
    assert bootorder.entry_digest(e) == d
    # A UKI: the digest comes from its .cmdline section on the ESP, case-insensitively.
    uki = make_pe([(b".osrel", b"ID=x\n"), (b".cmdline", f"rw composefs={d}\0".encode())])
    (tmp_path / "EFI" / "Linux" / "bootc").mkdir(parents=True)
    (tmp_path / "EFI/Linux/bootc/X.efi").write_bytes(uki)
    u = bootorder.parse_entry("u.conf", "efi /efi/linux/bootc/x.efi\n")
    assert bootorder.entry_digest(u, tmp_path) == d
    assert bootorder.entry_digest(bootorder.parse_entry("n.conf", "linux /k\n")) is None


def test_read_esp_refuses_type2_entries(tmp_path: Path) -> None:
    (tmp_path / "loader" / "entries").mkdir(parents=True)
    (tmp_path / "loader/entries/a.conf").write_text("title a\n")
    (tmp_path / "loader/entries/.hidden.conf").write_text("title h\n")
    (tmp_path / "loader/entries/notes.txt").write_text("not an entry\n")
    assert [e.id for e in bootorder.read_esp(tmp_path).entries] == ["a.conf"]
    (tmp_path / "EFI" / "Linux").mkdir(parents=True)
    (tmp_path / "EFI/Linux/uki.efi").write_bytes(b"MZ")
    with pytest.raises(NotImplementedError, match="Type #2"):
        bootorder.read_esp(tmp_path)


# ---------------------------------------------------------------------------------------
# GRUB
# ---------------------------------------------------------------------------------------

GRUB_CFG = """# generated
set timeout=0
set default=cfsboot-b

menuentry 'OS 2' --id cfsboot-a {
\tinsmod fat
\tsearch --no-floppy --fs-uuid --set=root 1234-ABCD
\tlinux /EFI/Linux/a/vmlinuz root=UUID=x rw composefs=?%s
\tinitrd /EFI/Linux/a/initrd
}
menuentry "OS 1" --id cfsboot-b {
\tchainloader /EFI/Linux/b.efi
}
""" % ("cd" * 32)


def test_grub_menu_default_by_id_index_title() -> None:
    menu = grub_menu(GRUB_CFG)
    assert [e.id for e in menu.entries] == ["cfsboot-a", "cfsboot-b"]
    assert menu.settings == {"timeout": "0", "default": "cfsboot-b"}
    assert menu.default is menu.entries[1]
    a = menu.entries[0]
    assert (a.title, a.linux, a.initrd) == (
        "OS 2",
        "/EFI/Linux/a/vmlinuz",
        ("/EFI/Linux/a/initrd",),
    )
    assert bootorder.composefs_digest(a.options) == "cd" * 32
    assert menu.entries[1].chainloader == "/EFI/Linux/b.efi"
    for default, want in (("1", 1), ("OS 2", 0), ("nothing", 0), ("7", 0)):
        other = grub_menu(GRUB_CFG.replace("set default=cfsboot-b", f"set default='{default}'"))
        assert other.default is other.entries[want], default
    assert grub_menu(GRUB_CFG.replace("set default=cfsboot-b\n", "")).default is not None


@pytest.mark.parametrize("line", ["load_env", "if [ x ]; then", "set default=${saved_entry}"])
def test_grub_menu_refuses_what_it_does_not_model(line: str) -> None:
    with pytest.raises(NotImplementedError):
        grub_menu(GRUB_CFG + line + "\n")


# ---------------------------------------------------------------------------------------
# bootctl list on a copy of an ESP
# ---------------------------------------------------------------------------------------

CACHE = Path(os.environ.get("CFSBOOT_CACHE", "/var/cache/cfsboot"))


@pytest.fixture(scope="module")
def bootctl() -> str:
    """systemd-boot's bootctl (tests/reftools/bootctl.sh) and a mount for the ESP copy."""
    found = os.environ.get("CFSBOOT_BOOTCTL") or shutil.which("bootctl")
    path = Path(found) if found else CACHE / "bootctl" / "usr" / "bin" / "bootctl"
    if not path.is_file():
        missing_capability(f"bootctl not found at {path} (run `make setup`)")
    if not can_mount():
        missing_capability("bootctl needs the ESP copy at a mount point (needs root)")
    return str(path)


def bootctl_list(bootctl: str, esp: Path) -> tuple[list[str], str | None]:
    """Entry ids in bootctl's order and the one it marks as the default.

    bootctl wants the ESP at the root of a filesystem: a tmpfs in a private mount
    namespace gets a copy; SYSTEMD_RELAX_ESP_CHECKS lets it be something else than vfat.
    """
    script = (
        'mount -t tmpfs cfsboot-esp "$1" && cp -a "$2/." "$1/" && '
        'exec "$3" list --esp-path="$1" --boot-path="$1" --no-pager'
    )
    mnt = esp.parent / (esp.name + "-mnt")
    mnt.mkdir()
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", mnt, esp, bootctl],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**os.environ, "SYSTEMD_RELAX_ESP_CHECKS": "1", "SYSTEMD_LOG_LEVEL": "err"},
        check=False,
    )
    mnt.rmdir()
    assert proc.returncode == 0, proc.stderr
    ids: list[str] = []
    default = None
    is_default = False
    for line in proc.stdout.splitlines():
        key, _, value = line.strip().partition(": ")
        if key == "title":
            is_default = "(default)" in value
        elif key == "id":
            ids.append(value)
            if is_default:
                default = value
    return ids, default


def _esp(root: Path, files: list[tuple[str, str]], conf: str | None) -> Path:
    (root / "loader" / "entries").mkdir(parents=True)
    for name, text in files:
        (root / "loader" / "entries" / name).write_text(text)
    if conf is not None:
        (root / "loader" / "loader.conf").write_text(conf)
    return root


CASES: dict[str, tuple[list[tuple[str, str]], str | None]] = {
    "cfsboot": (
        [
            ("bootc_testos-2-1.conf", "title T\nversion 2\nsort-key bootc-testos-0\nlinux /a\n"),
            ("bootc_testos-1-0.conf", "title T\nversion 1\nsort-key bootc-testos-1\nlinux /b\n"),
            ("other-os.conf", "title O\nsort-key zzz\nlinux /o\n"),
            ("plain.conf", "title P\nlinux /p\n"),
        ],
        "timeout 5\n",
    ),
    "counting": (
        [
            ("a+3.conf", "title A\nversion 2\nsort-key a\nlinux /a\n"),
            ("b+0-2.conf", "title B\nversion 10\nsort-key a\nlinux /b\n"),
            ("c.conf", "title C\nversion 1\nsort-key a\nlinux /c\n"),
        ],
        None,
    ),
    "glob-picks-a-bad-entry": (
        [("a+3.conf", "sort-key a\nlinux /a\n"), ("b+0.conf", "sort-key a\nlinux /b\n")],
        "default B*\n",
    ),
    "glob-matches-nothing": (
        [("a.conf", "sort-key a\nlinux /a\n"), ("b.conf", "sort-key b\nlinux /b\n")],
        "default zz*\n",
    ),
    "suffix-kept": ([("a-1.conf", "linux /a\n"), ("a.conf", "linux /b\n")], None),
    "machine-id": (
        [
            ("x.conf", "sort-key s\nmachine-id bb\nversion 1\nlinux /x\n"),
            ("y.conf", "sort-key s\nmachine-id aa\nversion 1\nlinux /y\n"),
            ("z.conf", "sort-key s\nversion 9\nlinux /z\n"),
        ],
        None,
    ),
    "versions": (
        [
            ("p.conf", "sort-key s\nversion 1.0~rc1\nlinux /p\n"),
            ("q.conf", "sort-key s\nversion 1.0\nlinux /q\n"),
            ("r.conf", "sort-key s\nversion 1.0^git1\nlinux /r\n"),
            ("t.conf", "sort-key s\nversion 1.01\nlinux /t\n"),
        ],
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_like_bootctl(bootctl: str, tmp_path: Path, case: str) -> None:
    files, conf = CASES[case]
    esp = _esp(tmp_path / "esp", files, conf)
    assert _ids(files, conf) == bootctl_list(bootctl, esp)


_names = st.text(alphabet="ab-1_.", min_size=1, max_size=5)
_entry_files = st.lists(
    st.tuples(
        _names,
        st.one_of(st.none(), st.integers(0, 2)),  # tries left
        st.one_of(st.none(), st.sampled_from(["k", "j"])),  # sort-key
        st.one_of(st.none(), _version_text),  # version
        st.one_of(st.none(), st.sampled_from(["aa", "bb"])),  # machine-id
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda t: t[0],
)


def _files(
    specs: list[tuple[str, int | None, str | None, str | None, str | None]],
) -> list[tuple[str, str]]:
    out = []
    for name, tries, key, version, machine in specs:
        text = f"title {name}\nlinux /{name}\n"
        for k, v in (("sort-key", key), ("version", version), ("machine-id", machine)):
            if v:
                text += f"{k} {v}\n"
        out.append((f"{name}{'' if tries is None else f'+{tries}'}.conf", text))
    return out


def _defined_for_bootctl(a: Entry, b: Entry) -> bool:
    if a.bad != b.bad:
        return True
    return bootorder.compare_entries(replace(a, file=a.id), replace(b, file=b.id)) != 0


@pytest.mark.usefixtures("bootctl")
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(_entry_files)
def test_random_menus_like_bootctl(
    bootctl: str,
    tmp_path_factory: pytest.TempPathFactory,
    specs: list[tuple[str, int | None, str | None, str | None, str | None]],
) -> None:
    files = _files(specs)
    # Entries the rules find equal ("_.conf" and "__.conf": `_` only separates) have no
    # defined order: bootctl shows them as its sort left them. The cached bootctl
    # (systemd 252) does not break ties on boot counters as systemd-boot does, so names
    # equal but for their counters ("1+1.conf", "1_+2.conf") are such a tie there too.
    menu = systemd_boot_menu(files).entries
    assume(all(_defined_for_bootctl(a, b) for a, b in itertools.combinations(menu, 2)))
    esp = _esp(tmp_path_factory.mktemp("esp"), files, None)
    assert _ids(files) == bootctl_list(bootctl, esp)


@settings(max_examples=500)
@given(_entry_files)
def test_cfsboot_menu_order_agrees_with_the_oracle(
    specs: list[tuple[str, int | None, str | None, str | None, str | None]],
) -> None:
    # Hidden names left out: systemd-boot skips them, bls.parse_entries does not (cfsboot
    # never writes one: its temporary names do not end in .conf).
    files = [(n, t) for n, t in _files(specs) if not n.startswith(".")]
    ours = bls.sort_entries(bls.parse_entries(files))
    assert [e.name for e in ours] == [e.file for e in systemd_boot_menu(files).entries]


def test_entries_sort_stably_by_the_comparison() -> None:
    """The comparison is a total order on these: sorting any permutation gives one menu."""
    files = _files(
        [("a", 1, "k", "2", None), ("b", None, "k", "10", "aa"), ("c", 0, None, None, None)]
    )
    entries = [bootorder.parse_entry(n, t) for n, t in files]
    orders = {
        tuple(e.file for e in sorted(p, key=cmp_to_key(bootorder.compare_entries)))
        for p in itertools.permutations(entries)
    }
    assert orders == {("a+1.conf", "b.conf", "c+0.conf")}  # no machine-id sorts first
    assert isinstance(entries[0], Entry)
