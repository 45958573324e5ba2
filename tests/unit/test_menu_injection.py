"""Image metadata that reaches the boot menu cannot add to it (issue 15).

An image's os-release (NAME, VERSION, ID, VERSION_ID, PRETTY_NAME), its kargs.d,
its kernel directory name and the reference it is installed from are the image
author's. Each is given newlines, quotes, `$`, `;`, backslashes, `../` and the
like, installed, and the menu read back: a BLS entry has exactly the lines cfsboot
writes, the GRUB menu passes `grub-script-check` and boots (cfstest.grubsim) the one
entry with the same title and arguments, and every file lands in the deployment's
own directory under EFI/Linux.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from cfstest.cli import run as cfsboot
from cfstest.dirsystem import System, install
from cfstest.gates import missing_capability
from cfstest.grubsim import Grub as GrubSim
from cfstest.osimages import os_image

HOSTILE = "a\"b'c$(reboot)${x};d\\e../../f`g`#h{i}j"
OS_RELEASE = (
    # Double quotes: \" \$ \\ \` are escapes; a tab and spaces at the ends, an ESC.
    b'PRETTY_NAME="  Evil\\" OS\\$(reboot);\\\\x \'q\' {}\t../../x  "\n'
    b"NAME='Evil ${NAME}; ../..'\n"
    b'ID="evil/../../id;$x"\n'
    b'VERSION_ID="1.0\\"\\\\;$(id)/../..\x1b[2J"\n'
    b'VERSION="1 \\"two\\" ; three"\n'
)
# What the menu shows: one line each, runs of blanks and controls as one blank.
TITLE = "Evil\" OS$(reboot);\\x 'q' {} ../../x"
VERSION = '1.0"\\;$(id)/../.. [2J'
KVER = "6.12$(reboot);'\"\\x..y\nz\tw"
KARGS = "x=$y;z", "w=../../..", "v=a}b{c", "u=#t"


def _image(tmp: Path, **kw: object) -> str:
    return os_image(tmp / "img", "1", **kw)  # type: ignore[arg-type]


def _kargs_toml(*args: str) -> str:
    return f"kargs = [{', '.join(json.dumps(a) for a in args)}]\n"  # JSON strings are TOML's


def _digest(system: System) -> str:
    deployments = os.listdir(system.root / "state" / "deploy")
    assert len(deployments) == 1, deployments
    return deployments[0]


def _esp_files(esp: Path) -> list[str]:
    out = []
    for dirpath, _dirs, files in os.walk(esp):
        out += [os.path.relpath(os.path.join(dirpath, f), esp) for f in files]
    return sorted(out)


def _check_esp_paths(system: System, digest: str, *, grub: bool) -> None:
    """Every file is the bootloader's, the menu's, or in the deployment's own directory."""
    own = f"EFI/Linux/bootc_composefs-{digest}/"
    for path in _esp_files(system.esp):
        assert (
            path.startswith(own)
            or path.startswith("EFI/BOOT/")
            or path.startswith("EFI/systemd/")
            or (not grub and path.startswith("loader/"))
        ), path
    assert sorted(p for p in _esp_files(system.esp) if p.startswith("EFI/Linux/")) == [
        own + "initrd",
        own + "vmlinuz",
    ]


def test_hostile_os_release_and_kernel_name_stay_in_one_bls_entry(tmp_path: Path) -> None:
    imgref = _image(tmp_path, os_release=OS_RELEASE, kver=KVER, kargs=_kargs_toml(*KARGS))
    system = install(tmp_path / "sys", imgref)
    digest = _digest(system)
    entries = sorted((system.esp / "loader" / "entries").iterdir())
    # vfat's forbidden characters (and `/`) as `_`: a name in loader/entries, nothing else.
    assert [e.name for e in entries] == ["bootc_evil_.._.._id;$x-1.0__;$(id)_.._.. [2J-0.conf"]
    own = f"/EFI/Linux/bootc_composefs-{digest}"
    assert entries[0].read_text().splitlines() == [
        f"title {TITLE}",
        f"version {VERSION}",
        f"linux {own}/vmlinuz",
        f"initrd {own}/initrd",
        f"options rw composefs=?{digest} {' '.join(KARGS)}",
        "sort-key bootc-evil/../../id;$x-0",
    ]
    _check_esp_paths(system, digest, grub=False)
    for command in (["fsck"], ["status"], ["status", "--json"]):
        proc = system.cfs(*command)
        assert (proc.returncode, proc.stderr) == (0, ""), command


def _script_check(path: Path) -> None:
    tool = shutil.which("grub-script-check")
    if tool is None:
        missing_capability("grub-script-check not found (apt-get install grub-common)")
        raise AssertionError("unreachable")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_hostile_os_release_and_kernel_name_stay_in_one_grub_entry(tmp_path: Path) -> None:
    imgref = _image(tmp_path, os_release=OS_RELEASE, kver=KVER, kargs=_kargs_toml(*KARGS))
    system = install(tmp_path / "sys", imgref, "--bootloader", "grub")
    digest = _digest(system)
    cfg = system.esp / "EFI" / "BOOT" / "grub.cfg"
    _script_check(cfg)
    text = cfg.read_text()
    assert text.count("menuentry ") == 1
    files = {"(hd0,gpt1)/EFI/BOOT/grub.cfg": text.encode()}
    boot = GrubSim(files, "/EFI/BOOT/grub.cfg", root="hd0,gpt1").boot()
    assert boot.entry.title == f"{TITLE} {VERSION}"
    own = f"/EFI/Linux/bootc_composefs-{digest}"
    assert [c for c in boot.loaded if c[0] in ("linux", "initrd")] == [
        ("linux", f"{own}/vmlinuz", "rw", f"composefs=?{digest}", *KARGS),
        ("initrd", f"{own}/initrd"),
    ]
    _check_esp_paths(system, digest, grub=True)


def _refused(tmp: Path, imgref: str, *extra: str) -> str:
    root, esp = tmp / "sys" / "root", tmp / "sys" / "esp"
    root.mkdir(parents=True)
    esp.mkdir()
    proc = cfsboot(
        "install", "to-filesystem", imgref, root, "--esp", esp, "-q", *extra, check=False
    )
    assert proc.returncode == 1 and proc.stdout == "", proc
    assert _esp_files(esp) == []  # refused before anything reached the ESP
    *warnings, last = proc.stderr.splitlines(keepends=True)
    assert all(w.startswith("WARNING: fs-verity is not supported") for w in warnings)
    assert not (root / "state" / "deploy").exists() or not os.listdir(root / "state" / "deploy")
    return last


@pytest.mark.parametrize(
    ("karg", "problem"),
    [
        ('a="b\nc"', "a control or white space character ('\\n')"),
        ('a="b\rtitle x"', "a control or white space character ('\\r')"),
        ('a="b', "an unbalanced double quote"),
        ('a="b c" d="', "an unbalanced double quote"),
        ("a=\x1b[2J", "a control or white space character ('\\x1b')"),
    ],
)
def test_kargs_d_argument_that_would_change_the_line_is_refused(
    tmp_path: Path, karg: str, problem: str
) -> None:
    imgref = _image(tmp_path, kargs=_kargs_toml("quiet", karg))
    shown = karg.split()[-1] if karg.startswith('a="b c"') else karg
    assert _refused(tmp_path, imgref) == (
        f"cfsboot: usr/lib/bootc/kargs.d/10-test.toml: kernel argument {shown!r} has {problem}\n"
    )


def test_setup_root_config_not_utf8_is_refused_naming_it(tmp_path: Path) -> None:
    conf = {"usr/lib/composefs/setup-root-conf.toml": b'[etc]\nmount = "overlay\xff"\n'}
    imgref = _image(tmp_path, extra=conf)
    assert _refused(tmp_path, imgref) == (
        "cfsboot: the image's setup-root config is invalid:"
        " image:/usr/lib/composefs/setup-root-conf.toml: config is not UTF-8\n"
    )


def test_kargs_d_newline_outside_quotes_separates_arguments(tmp_path: Path) -> None:
    imgref = _image(tmp_path, kargs=_kargs_toml("a\nb", "c\r\nd"))
    system = install(tmp_path / "sys", imgref)
    [entry] = (system.esp / "loader" / "entries").iterdir()
    digest = _digest(system)
    assert f"options rw composefs=?{digest} a b c d\n" in entry.read_text()


def test_command_line_karg_with_a_newline_is_an_argument_error(tmp_path: Path) -> None:
    imgref = _image(tmp_path)
    proc = cfsboot("install", "to-filesystem", imgref, tmp_path, "--karg", "a\nb", check=False)
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (
        "cfsboot install to-filesystem: argument --karg: 'a\\nb' has a control or white space"
        " character ('\\n') (see --help)\n"
    )


@pytest.mark.parametrize("bootloader", ["systemd-boot", "grub"])
def test_quoted_composefs_karg_from_kargs_d_is_dropped(tmp_path: Path, bootloader: str) -> None:
    """`"composefs.digest=?…"` is a composefs karg to setup-root (it drops the quotes): the
    image cannot name another image to boot, or turn fs-verity off."""
    evil = '"composefs.digest=?v1-sha512-12:' + "ab" * 64 + '"'
    also = 'com"pose"fs=?' + "cd" * 64
    imgref = _image(tmp_path, kargs=_kargs_toml("quiet", evil, also))
    system = install(tmp_path / "sys", imgref, "--bootloader", bootloader)
    digest = _digest(system)
    status = system.status()
    booted_entry = status["status"]["staged"] or status["status"]["booted"] or {}
    del booted_entry
    if bootloader == "grub":
        text = (system.esp / "EFI" / "BOOT" / "grub.cfg").read_text()
        files = {"(hd0,gpt1)/EFI/BOOT/grub.cfg": text.encode()}
        boot = GrubSim(files, "/EFI/BOOT/grub.cfg", root="hd0,gpt1").boot()
        [linux] = [c for c in boot.loaded if c[0] == "linux"]
        cmdline = " ".join(linux[2:])
    else:
        [entry] = (system.esp / "loader" / "entries").iterdir()
        [options] = [ln for ln in entry.read_text().splitlines() if ln.startswith("options ")]
        cmdline = options.removeprefix("options ")
    assert cmdline == f"rw composefs=?{digest} quiet"
    from setuproot.contract import parse_cmdline

    assert [k.digest for k in parse_cmdline(cmdline)] == [digest]


def test_hostile_image_reference_reaches_no_menu(tmp_path: Path) -> None:
    """The reference is the admin's, but it is shown back: a path with a newline, quotes,
    `$` and `;` in it installs, and stays out of the entry and the GRUB menu."""
    place = tmp_path / "we$ird;'\"\\dir\nname"
    imgref = os_image(place, "1")
    system = install(tmp_path / "sys", imgref, "--bootloader", "grub")
    cfg = system.esp / "EFI" / "BOOT" / "grub.cfg"
    _script_check(cfg)
    text = cfg.read_text()
    assert "we$ird" not in text and text.count("menuentry ") == 1
    status = system.status()
    assert status["spec"]["image"]["image"] == f"{place}:latest"


def test_hostile_uki_label_is_one_line_of_text(tmp_path: Path) -> None:
    """A UKI's menu label comes from its .osrel section: the same rules as os-release."""
    from cfsboot.image.importer import import_image
    from cfstest.ocibuild import build_layout
    from cfstest.osimages import os_entries
    from cfstest.pe import make_pe

    plain = os_image(tmp_path / "plain", "1", kargs=None)
    digest = import_image(plain, None).image_digest
    uki = make_pe(
        [
            (b".osrel", b'NAME="  Evil\tUKI\x1b[2J "\nVERSION_ID="2;$(x)\x7f"\n'),
            (b".cmdline", f"rw composefs=?{digest}".encode()),
            (b".linux", b"KERNEL" * 1000),
            (b".initrd", b"INITRD" * 500),
        ]
    )
    build_layout(tmp_path / "img", [os_entries("1", kargs=None, uki=uki)])
    system = install(tmp_path / "sys", f"oci:{tmp_path / 'img'}:latest")
    [entry] = (system.esp / "loader" / "entries").iterdir()
    assert entry.read_text().splitlines() == [
        "title Evil UKI [2J 2;$(x)",
        "version 1",
        f"efi /EFI/Linux/bootc/bootc_composefs-{digest}.efi",
        "sort-key bootc-testos-0",
    ]


def test_ukify_default_output_stays_in_efi_linux(tmp_path: Path) -> None:
    """`cfsboot container ukify` names the UKI after ID, VERSION_ID and the kernel."""
    from cfsboot.boot.ukify import default_output

    osrel = tmp_path / "usr/lib/os-release"
    osrel.parent.mkdir(parents=True)
    osrel.write_text('ID="../../../etc/x"\nVERSION_ID="1/../.. 2"\n')
    out = default_output(tmp_path, "6.12.0")
    assert out == Path("/boot/EFI/Linux/_.._.._etc_x-1_.._.. 2-6.12.0.efi")
    osrel.write_text("ID=..\n")
    assert default_output(tmp_path, "..") == Path("/boot/EFI/Linux/_-_.efi")
