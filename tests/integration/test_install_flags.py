"""install's flags bootc users type, one test each: --root-ssh-authorized-keys, the image's
install config (command line winning), --bootloader none, --stateroot, --replace, and
DPS (no root= where systemd-boot and the initrd's gpt-auto generator find the root)."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from cfsboot.boot.disk import read_layout
from cfsboot.image.importer import import_image
from cfstest import bootorder
from cfstest.cli import one_line_error
from cfstest.cli import run as cfsboot
from cfstest.gates import require_tools
from cfstest.ocibuild import Entry, build_layout
from cfstest.osimages import KVER, MTIME, os_entries

pytestmark = [pytest.mark.integration]

KEYS = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests root@test\n"
GENERATOR = "usr/lib/systemd/system-generators/systemd-gpt-auto-generator"
CONFIG = '[install]\nkargs = ["from.install.config=1"]\nroot-fs-type = "btrfs"\n'


def _initrd(tmp: Path, with_generator: bool) -> bytes:
    require_tools({"cpio": "cpio", "zstd": "zstd"})
    top = tmp / ("gen" if with_generator else "plain")
    (top / "usr/lib/systemd/system-generators").mkdir(parents=True)
    (top / "init").write_bytes(b"#!/bin/sh\n")
    if with_generator:
        (top / GENERATOR).write_bytes(b"\x7fELF" * 100)
    names = "\n".join(sorted(str(p.relative_to(top)) for p in top.rglob("*"))) + "\n"
    archive = subprocess.run(
        ["cpio", "-o", "-H", "newc", "--quiet"],
        input=names.encode(),
        cwd=top,
        capture_output=True,
        check=True,
    ).stdout
    return subprocess.run(
        ["zstd", "-q", "-c"], input=archive, capture_output=True, check=True
    ).stdout


def image(path: Path, *, initrd: bytes | None = None, config: str | None = CONFIG) -> str:
    """The tests' OS image, with /root -> var/roothome, an install config and a real initrd."""

    def f(p: str, data: bytes) -> Entry:
        return Entry(p, "file", mode=0o644, data=data, mtime=MTIME)

    extra = [
        Entry("root", "symlink", linkname="var/roothome", mtime=MTIME),
        Entry("var/roothome", "dir", mode=0o700, mtime=MTIME),
    ]
    if config is not None:
        extra += [
            Entry("usr/lib/bootc/install", "dir", mtime=MTIME),
            f("usr/lib/bootc/install/50-test.toml", config.encode()),
        ]
    if initrd is not None:
        extra.append(f(f"usr/lib/modules/{KVER}/initramfs.img", initrd))
    build_layout(path, [os_entries("1"), extra])
    return f"oci:{path}:latest"


def entry_options(esp: Path) -> list[str]:
    [entry] = bootorder.read_esp(esp).entries
    return list(entry.options)


def to_filesystem(
    tmp: Path, ref: str, *extra: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    root, esp = tmp / "root", tmp / "esp"
    root.mkdir(exist_ok=True)
    esp.mkdir(exist_ok=True)
    return cfsboot("install", "to-filesystem", ref, root, "--esp", esp, "-q", *extra, check=check)


def test_root_ssh_keys_and_install_config_kargs(tmp_path: Path) -> None:
    ref = image(tmp_path / "img")
    keys = tmp_path / "authorized_keys"
    keys.write_bytes(KEYS)
    to_filesystem(tmp_path, ref, "--root-ssh-authorized-keys", str(keys), "--karg", "from.cli=1")
    root, esp = tmp_path / "root", tmp_path / "esp"
    digest = import_image(ref, None).image_digest
    # rw, the install config's kargs, then --karg's; composefs=, then kargs.d
    assert entry_options(esp) == [
        "rw",
        "from.install.config=1",
        "from.cli=1",
        f"composefs=?{digest}",
        "console=ttyS0,115200",
    ]
    conf = root / "state/deploy" / digest / "etc/upper/tmpfiles.d/cfsboot-root-ssh.conf"
    lines = conf.read_text().splitlines()
    assert lines[2] == "d /var/roothome/.ssh 0700 root root -"
    assert lines[3].startswith("f~ /var/roothome/.ssh/authorized_keys 0600 root root - ")
    assert base64.b64decode(lines[3].rsplit(" ", 1)[1]) == KEYS


def test_no_image_config(tmp_path: Path) -> None:
    to_filesystem(tmp_path, image(tmp_path / "img"), "--no-image-config")
    assert "from.install.config=1" not in entry_options(tmp_path / "esp")


def test_ssh_keys_refused_for_a_root_home_on_the_image(tmp_path: Path) -> None:
    path = tmp_path / "img"
    build_layout(path, [os_entries("1", extra={"root/.profile": b"# root\n"})])
    keys = tmp_path / "keys"
    keys.write_bytes(KEYS)
    proc = to_filesystem(
        tmp_path, f"oci:{path}:latest", "--root-ssh-authorized-keys", str(keys), check=False
    )
    # Found once the image is imported (after the "insecure repository" warning).
    assert proc.returncode == 1
    assert "cfsboot: root's home /root is on the read-only image" in proc.stderr.splitlines()[-1]


def test_bootloader_none_writes_no_entries_and_prints_the_kargs(tmp_path: Path) -> None:
    ref = image(tmp_path / "img")
    root = tmp_path / "root"
    root.mkdir()
    proc = cfsboot(
        "install", "to-filesystem", ref, root, "--bootloader", "none", "--stateroot", "default"
    )
    digest = import_image(ref, None).image_digest
    assert proc.stdout == f"{digest}\n"
    assert proc.stderr.splitlines()[-1].endswith(
        "boot the image's kernel with: rw from.install.config=1"
        f" composefs=?{digest} console=ttyS0,115200"
    )
    assert (root / "state/deploy" / digest / f"{digest}.origin").is_file()
    assert (root / "composefs/images" / digest).exists()


def test_stateroot_other_than_default_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    proc = cfsboot(
        "install", "to-filesystem", image(tmp_path / "img"), root, "--stateroot", "os2",
        "--bootloader", "none", check=False,
    )  # fmt: skip
    line = one_line_error(proc)
    assert line == (
        "cfsboot: stateroot 'os2' is not supported: cfsboot keeps one, 'default';"
        " leave out --stateroot, or give --stateroot default"
    )
    assert list(root.iterdir()) == []


def test_to_filesystem_not_empty_then_alongside(tmp_path: Path) -> None:
    ref = image(tmp_path / "img")
    root = tmp_path / "root"
    (root / "home/user").mkdir(parents=True)
    (root / "home/user/data").write_text("keep me\n")
    proc = to_filesystem(tmp_path, ref, check=False)
    assert f"{root} is not empty: it has home;" in one_line_error(proc)
    assert not (root / "composefs").exists()
    to_filesystem(tmp_path, ref, "--replace", "alongside")
    assert (root / "home/user/data").read_text() == "keep me\n"
    assert (root / "composefs/meta.json").is_file()


def test_to_filesystem_replace_wipe(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "old/os").mkdir(parents=True)
    (root / "old/os/file").write_text("old\n")
    to_filesystem(tmp_path, image(tmp_path / "img"), "--replace", "wipe")
    assert sorted(p.name for p in root.iterdir()) == ["composefs", "state"]


@pytest.mark.usefixtures("can_mount")
@pytest.mark.parametrize(
    ("bootloader", "generator", "root_arg"),
    [("systemd-boot", True, False), ("grub", True, True), ("systemd-boot", False, True)],
)
def test_to_disk_dps_and_install_config_filesystem(
    tmp_path: Path, bootloader: str, generator: bool, root_arg: bool
) -> None:
    """systemd-boot + gpt-auto in the initrd: no root= (DPS); GRUB or no generator: root=UUID=.
    The install config's root-fs-type (btrfs) is used without --filesystem."""
    ref = image(tmp_path / "img", initrd=_initrd(tmp_path, generator))
    disk = tmp_path / "disk.img"
    cfsboot("install", "to-disk", ref, disk, "--size", "3G", "-q", "--bootloader", bootloader)
    layout = read_layout(disk)
    probe = subprocess.run(
        ["blkid", "-p", "-O", str(layout.root().start), "-o", "export", disk],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    found = dict(line.split("=", 1) for line in probe.stdout.split())
    assert found["TYPE"] == "btrfs"
    text = esp_text(disk, layout.esp.start)
    assert (f"root=UUID={found['UUID']}" in text) is root_arg
    assert " rw " in text


@pytest.mark.usefixtures("can_mount")
def test_to_disk_dps_after_karg_delete_of_gpt_auto(tmp_path: Path) -> None:
    """kargs.d's systemd.gpt_auto=0 keeps root=UUID=; --karg-delete of it gives a DPS entry
    (how the VM test OS, whose kargs.d turns gpt-auto off, is installed to boot that way)."""
    gen = _initrd(tmp_path, True)
    kargs = b'kargs = ["systemd.gpt_auto=0"]\n'
    extra = [
        Entry("usr/lib/bootc/kargs.d/20-gpt.toml", "file", mode=0o644, data=kargs, mtime=MTIME),
        Entry(f"usr/lib/modules/{KVER}/initramfs.img", "file", mode=0o644, data=gen, mtime=MTIME),
    ]
    build_layout(tmp_path / "img", [os_entries("1"), extra])
    ref = f"oci:{tmp_path / 'img'}:latest"
    for name, delete, root_arg in (
        ("off", (), True),
        ("on", ("--karg-delete", "systemd.gpt_auto"), False),
    ):
        disk = tmp_path / f"{name}.img"
        cfsboot("install", "to-disk", ref, disk, "--size", "2G", "-q", *delete)
        text = esp_text(disk, read_layout(disk).esp.start)
        assert ("root=UUID=" in text) is root_arg, text
        assert ("systemd.gpt_auto=0" in text) is root_arg, text


def esp_text(disk: Path, offset: int) -> str:
    """Every .conf and .cfg file on the ESP, concatenated (read through mtools)."""
    env = {"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"}
    image = f"{disk}@@{offset}"
    mdir = ["mdir", "-/", "-b", "-i", image, "::/"]
    listing = subprocess.run(mdir, env=env, capture_output=True, text=True, check=True).stdout
    # 8.3 names show in upper case
    names = [n for n in listing.split() if n.lower().endswith((".conf", ".cfg"))]
    assert names
    out = []
    for n in names:
        mtype = ["mtype", "-i", image, n]
        out.append(subprocess.run(mtype, env=env, capture_output=True, text=True).stdout)
    return "".join(out)


def test_image_config_stateroot_refused_unless_the_command_line_says_default(
    tmp_path: Path,
) -> None:
    ref = image(tmp_path / "img", config='[install]\nstateroot = "os2"\n')
    root = tmp_path / "root"
    root.mkdir()
    proc = cfsboot("install", "to-filesystem", ref, root, "--bootloader", "none", check=False)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        "cfsboot: the image's install config asks for stateroot 'os2': cfsboot keeps one,"
        " 'default'; install with --no-image-config"
    )
    # The refusal came after the import: what it had made is gone, and a second try on
    # the same root is no "already has a composefs repository".
    assert list(root.iterdir()) == []
    cfsboot("install", "to-filesystem", ref, root, "--bootloader", "none", "--stateroot", "default")


def test_failed_install_to_filesystem_leaves_the_root_as_it_was(tmp_path: Path) -> None:
    """A mistyped IMGREF: the repository made for it is removed, other files stay."""
    root, esp = tmp_path / "root", tmp_path / "esp"
    root.mkdir()
    esp.mkdir()
    (root / "old-os").write_text("kept\n")
    missing = tmp_path / "nothing"
    proc = cfsboot("install", "to-filesystem", f"oci:{missing}", root, "--esp", esp,
                   "--replace=alongside", check=False)  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == (
        f"cfsboot: {missing} is not a directory (oci: expects an OCI image layout)"
    )
    assert sorted(p.name for p in root.iterdir()) == ["old-os"]
    assert list(esp.iterdir()) == []
    ref = image(tmp_path / "img", config=None)
    cfsboot("install", "to-filesystem", ref, root, "--esp", esp, "--replace=alongside", "-q")
    assert sorted(p.name for p in root.iterdir()) == ["composefs", "old-os", "state"]
