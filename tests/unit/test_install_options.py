"""install's pieces that need no root: the target checks on a fake sysfs, the image's
install config, the initrd listing, DPS, SSH keys and the emptiness of a root."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
from pathlib import Path

import pytest

from cfsboot.boot import targetcheck
from cfsboot.composefs.tree import Inode
from cfsboot.deploy import installprep
from cfsboot.deploy.install import gpt_auto_in_initrd
from cfsboot.errors import CfsbootError
from cfsboot.image import initramfs, installconfig
from cfsboot.linux import blockdev, mountinfo
from cfstest.gates import require_tools
from setuproot.config import Config, EtcMount

LOOP0, LOOP0P1, DM0, VDA = (os.makedev(*d) for d in ((7, 0), (259, 0), (253, 0), (254, 0)))


def _dev(sys: Path, real: str, dev: int, *, partition: bool = False) -> Path:
    node = sys / real
    node.mkdir(parents=True)
    (node / "dev").write_text(f"{os.major(dev)}:{os.minor(dev)}\n")
    if partition:
        (node / "partition").write_text("1\n")
    link = sys / "dev" / "block" / f"{os.major(dev)}:{os.minor(dev)}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(node)
    return node


def fake_sys(tmp_path: Path) -> Path:
    """loop0 -> loop0p1 -> dm-0 (a holder), and vda alone."""
    sys = tmp_path / "sys"
    loop0 = _dev(sys, "devices/virtual/block/loop0", LOOP0)
    p1 = _dev(sys, "devices/virtual/block/loop0/loop0p1", LOOP0P1, partition=True)
    dm0 = _dev(sys, "devices/virtual/block/dm-0", DM0)
    _dev(sys, "devices/pci/block/vda", VDA)
    (p1 / "holders").mkdir()
    (p1 / "holders" / "dm-0").symlink_to(dm0)
    (dm0 / "slaves").mkdir()
    (dm0 / "slaves" / "loop0p1").symlink_to(p1)
    (sys / "block").mkdir()
    (sys / "block" / "loop0").symlink_to(loop0)
    return sys


def mount(point: str, dev: int) -> mountinfo.Mount:
    line = f"30 1 {os.major(dev)}:{os.minor(dev)} / {point} rw - ext4 /dev/x rw"
    return mountinfo.parse_line(line.encode())


def test_stacked_devices_and_the_running_root(tmp_path: Path) -> None:
    sys = fake_sys(tmp_path)
    devs = blockdev.stacked_on([LOOP0], sys)
    assert devs == {LOOP0, LOOP0P1, DM0}
    assert blockdev.underneath(DM0, sys) == {DM0, LOOP0P1, LOOP0}
    used = targetcheck.usage(devs, [mount("/", DM0), mount("/srv", VDA)], [], sys)
    assert used.describe() == ["is mounted at / (/dev/dm-0)", "backs the running root"]
    other = targetcheck.usage({VDA}, [mount("/", DM0), mount("/srv", VDA)], [], sys)
    assert other.describe() == ["is mounted at /srv (/dev/vda)"]
    assert targetcheck.usage({VDA}, [mount("/", DM0)], [], sys).describe() == []


def test_parse_swaps_unescapes_and_drops_deleted() -> None:
    text = (
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/loop3                              partition\t65532\t\t0\t\t-2\n"
        "/var/swap\\040file\\040(deleted)          file\t\t1024\t\t0\t\t-3\n"
    )
    assert blockdev.parse_swaps(text) == [
        blockdev.Swap("/dev/loop3", "partition"),
        blockdev.Swap("/var/swap file", "file"),
    ]


def test_wipefs_output_described_once_per_kind() -> None:
    text = (
        '{"signatures": [{"type": "gpt", "usage": "partition-table", "offset": "0x200"},'
        '{"type": "gpt", "usage": "partition-table", "offset": "0x3fffe00"},'
        '{"type": "PMBR", "usage": "partition-table", "offset": "0x1fe"},'
        '{"type": "ext4", "usage": "filesystem", "offset": "0x438"}]}'
    )
    found = targetcheck.parse_wipefs(text)
    assert found[0] == targetcheck.Signature("gpt", "partition-table", 0x200)
    assert targetcheck.describe_signatures(found) == [
        "a gpt partition table",
        "an ext4 filesystem",
    ]
    assert targetcheck.parse_wipefs("") == []


def merge(files: dict[str, str], arch: str = "x86_64") -> installconfig.InstallConfig:
    return installconfig.merge({k: v.encode() for k, v in files.items()}, arch=arch)


def test_install_config_merges_in_name_order() -> None:
    cfg = merge(
        {
            "usr/lib/bootc/install/20-b.toml": '[install]\nkargs = ["b"]\nroot-fs-type = "xfs"\n',
            "usr/lib/bootc/install/10-a.toml": (
                '[install]\nkargs = ["a=1"]\n[install.filesystem.root]\ntype = "btrfs"\n'
            ),
            # etc/ replaces usr/lib's file of the same name
            "usr/lib/bootc/install/30-c.toml": '[install]\nkargs = ["lost"]\n',
            "etc/bootc/install/30-c.toml": '[install]\nkargs = ["c"]\nstateroot = "default"\n',
            "usr/lib/bootc/install/README": "not a toml file",
        }
    )
    assert cfg.kargs == ("a=1", "b", "c")
    assert cfg.root_fs_type == "xfs"
    assert cfg.stateroot == "default"
    assert cfg.files == (
        "/usr/lib/bootc/install/10-a.toml",
        "/usr/lib/bootc/install/20-b.toml",
        "/etc/bootc/install/30-c.toml",
    )


def test_install_config_filesystem_root_type_wins_within_a_file() -> None:
    text = '[install]\nroot-fs-type = "xfs"\n[install.filesystem.root]\ntype = "ext4"\n'
    assert merge({"usr/lib/bootc/install/a.toml": text}).root_fs_type == "ext4"


def test_install_config_match_architectures() -> None:
    files = {
        "usr/lib/bootc/install/a.toml": '[install]\nkargs = ["all"]\n',
        "usr/lib/bootc/install/b.toml": (
            '[install]\nkargs = ["arm"]\nmatch-architectures = ["aarch64"]\n'
        ),
    }
    assert merge(files).kargs == ("all",)
    assert merge(files, arch="aarch64").kargs == ("all", "arm")


def test_install_config_block_bootloader_and_root_spec() -> None:
    text = (
        '[install]\nblock = ["tpm2-luks"]\nbootloader = "none"\nroot-mount-spec = ""\n'
        "discoverable-partitions = false\n"
    )
    cfg = merge({"usr/lib/bootc/install/a.toml": text})
    assert (cfg.block, cfg.bootloader, cfg.root_mount_spec) == (("tpm2-luks",), "none", "")
    assert cfg.discoverable_partitions is False


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[install]\nroot-fs-type = "zfs"\n', "'root-fs-type' is 'zfs'; expected one of ext4"),
        ('[install]\nkargs = "quiet"\n', "'kargs' must be a list of strings"),
        ("[install\n", "invalid TOML"),
        ("[install.filesystem]\nroot = 1\n", "needs [install.filesystem.root] with 'type'"),
    ],
)
def test_install_config_errors(text: str, error: str) -> None:
    with pytest.raises(CfsbootError, match="^/usr/lib/bootc/install/a.toml: ") as e:
        merge({"usr/lib/bootc/install/a.toml": text})
    assert error in str(e.value)


def test_install_config_unknown_key_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        cfg = merge({"usr/lib/bootc/install/a.toml": "[install]\nfoo = 1\n[ostree]\n"})
    assert cfg == installconfig.InstallConfig()
    assert [r.getMessage() for r in caplog.records] == [
        "/usr/lib/bootc/install/a.toml: unknown table or key 'ostree' (bootc knows only [install])",
        "/usr/lib/bootc/install/a.toml: unknown key install.foo",
    ]


@pytest.mark.parametrize(
    ("kargs", "on"),
    [
        ([], True),
        (["rw", "quiet"], True),
        (["systemd.gpt_auto=0"], False),
        (["systemd.gpt_auto=0", "rd.systemd.gpt_auto=1"], True),
        (["rd.systemd.gpt_auto=off"], False),
        (["systemd.gpt_auto"], True),
        (["root=UUID=1234"], False),
        (["root=gpt-auto"], True),
    ],
)
def test_gpt_auto_in_initrd(kargs: list[str], on: bool) -> None:
    assert gpt_auto_in_initrd(kargs) is on


@pytest.mark.parametrize("compress", ["zstd", "gzip", "xz", None])
def test_initrd_names_through_early_and_compressed_archives(
    tmp_path: Path, compress: str | None
) -> None:
    require_tools({"cpio": "cpio", "zstd": "zstd", "xz": "xz-utils"})
    for d in ("early/kernel/x86", "main/usr/lib/systemd/system-generators"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "early/kernel/x86/microcode.bin").write_bytes(b"u" * 5)
    (tmp_path / "main/usr/lib/systemd/system-generators/systemd-gpt-auto-generator").write_bytes(
        b"\x7fELF" * 300
    )

    def cpio(top: str) -> bytes:
        names = sh(f"cd {tmp_path / top} && find . | sort").encode()
        return subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet"],
            input=names,
            cwd=tmp_path / top,
            capture_output=True,
            check=True,
        ).stdout

    main = cpio("main")
    if compress is not None:
        main = subprocess.run([compress, "-c"], input=main, capture_output=True, check=True).stdout
    image = tmp_path / "initrd.img"
    image.write_bytes(cpio("early") + main)
    with open(image, "rb") as f:
        names = list(initramfs.names(f, "initrd"))
    assert "kernel/x86/microcode.bin" in names
    assert "usr/lib/systemd/system-generators/systemd-gpt-auto-generator" in names
    with open(image, "rb") as f:
        assert initramfs.contains(
            f, "/usr/lib/systemd/system-generators/systemd-gpt-auto-generator", "i"
        )
    with open(image, "rb") as f:
        assert not initramfs.contains(f, "/usr/bin/missing", "i")


def sh(cmd: str) -> str:
    return subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, check=True).stdout


def tree(root: Inode | None) -> Inode:
    top = Inode.directory()
    assert top.children is not None
    if root is not None:
        top.children[b"root"] = root
    return top


KEYS = b"ssh-ed25519 AAAAC3Nza example@host\n"


def test_ssh_keys_go_where_root_home_symlink_leads() -> None:
    link = Inode(mode=0o120777, payload=b"var/roothome")
    files = installprep.ssh_keys_tmpfiles(KEYS, tree(link), Config(), where="keys")
    text = files["tmpfiles.d/cfsboot-root-ssh.conf"].decode()
    assert text.splitlines()[2:] == [
        "d /var/roothome/.ssh 0700 root root -",
        f"f~ /var/roothome/.ssh/authorized_keys 0600 root root - {base64.b64encode(KEYS).decode()}",
    ]


def test_ssh_keys_refused_on_a_read_only_root_home() -> None:
    with pytest.raises(CfsbootError, match="root's home /root is on the read-only image"):
        installprep.ssh_keys_tmpfiles(KEYS, tree(Inode.directory()), Config(), where="keys")
    transient = Config(root_transient=True)
    files = installprep.ssh_keys_tmpfiles(KEYS, tree(Inode.directory()), transient, where="k")
    assert b"f~ /root/.ssh/authorized_keys 0600" in files["tmpfiles.d/cfsboot-root-ssh.conf"]
    with pytest.raises(CfsbootError, match="the image's /etc is transient"):
        link = Inode(mode=0o120777, payload=b"/var/roothome")
        installprep.ssh_keys_tmpfiles(KEYS, tree(link), Config(etc=EtcMount.TRANSIENT), where="k")


def test_empty_root_allows_lost_found_and_empty_dirs_only(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "lost+found").mkdir(parents=True)
    assert installprep.contents(root) == []
    installprep.prepare_root(root, None)
    (root / "boot").mkdir()
    (root / "etc").mkdir()
    (root / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    assert installprep.contents(root) == [root / "boot", root / "etc"]
    with pytest.raises(CfsbootError, match=f"^{root} is not empty: it has boot, etc; "):
        installprep.prepare_root(root, None)
    installprep.prepare_root(root, installprep.Replace.ALONGSIDE)
    assert (root / "etc" / "passwd").exists()
    installprep.prepare_root(root, installprep.Replace.WIPE)
    assert sorted(p.name for p in root.iterdir()) == ["lost+found"]


def test_wipe_refuses_the_running_root() -> None:
    with pytest.raises(CfsbootError, match="^/ is the running system's root"):
        installprep.prepare_root(Path("/"), installprep.Replace.WIPE)


def test_existing_system_refused_even_alongside(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    with pytest.raises(CfsbootError, match="already has deployment state"):
        installprep.prepare_root(tmp_path, installprep.Replace.ALONGSIDE)
