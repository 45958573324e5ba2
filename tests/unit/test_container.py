"""`cfsboot container lint|compute-digest|ukify`: one test per lint finding, digests, argv."""

from __future__ import annotations

import gzip
import json
import os
import socket
from pathlib import Path

import pytest
import zstandard

from cfsboot.boot import ukify
from cfsboot.cli import main
from cfsboot.composefs.tree import lookup
from cfsboot.image.importer import import_image
from cfsboot.image.initramfs import list_files
from cfsboot.image.kargsd import load_kargs_d
from cfsboot.image.lint import INITRAMFS_NEEDS, lint
from cfsboot.image.rootdigest import compute_digest
from cfstest import ocibuild as build
from cfstest.pe import make_pe
from setuproot.contract import HashAlg

KVER = "6.12.48+deb13-amd64"
SHA512 = "ab" * 64
LINUX = (b".linux", b"KERNEL" * 100)


def newc(entries: list[tuple[str, bytes]]) -> bytes:
    """A newc cpio archive of regular files (and the trailer)."""
    out = b""
    for i, (name, data) in enumerate([*entries, ("TRAILER!!!", b"")]):
        raw = name.encode() + b"\0"
        mode = 0o100644 if name != "TRAILER!!!" else 0
        fields = [i + 1, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        head = b"070701" + b"".join(b"%08X" % f for f in fields)
        out += head + raw + b"\0" * ((4 - (len(head) + len(raw)) % 4) % 4)
        out += data + b"\0" * ((4 - len(data) % 4) % 4)
    return out


def dracut_like(names: list[str], compress: str = "zstd") -> bytes:
    """An uncompressed early archive, padding, then the main archive compressed."""
    early = newc([("kernel/x86/microcode/GenuineIntel.bin", b"ucode" * 30)])
    main_ = newc([(n.lstrip("/"), b"x" * 100) for n in names])
    packed = (
        zstandard.ZstdCompressor().compress(main_) if compress == "zstd" else gzip.compress(main_)
    )
    return early + b"\0" * 512 + packed


def good_root(root: Path) -> Path:
    """A root that passes every check."""
    mod = root / "usr/lib/modules" / KVER
    mod.mkdir(parents=True)
    (mod / "vmlinuz").write_bytes(b"KERNEL" * 100)
    (mod / "initramfs.img").write_bytes(dracut_like([*INITRAMFS_NEEDS, "/usr/bin/sh"]))
    efi = root / "usr/lib/systemd/boot/efi"
    efi.mkdir(parents=True)
    (efi / "systemd-bootx64.efi").write_bytes(b"MZ" + b"\0" * 100)
    (root / "boot").mkdir()
    (root / "var/lib").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "etc/fstab").write_text("# empty\nLABEL=data /srv ext4 defaults 0 2\n")
    (root / "usr/lib/os-release").write_text('ID=debian\nVERSION_ID="13"\n')
    kargs = root / "usr/lib/bootc/kargs.d"
    kargs.mkdir(parents=True)
    (kargs / "10-console.toml").write_text('kargs = ["console=ttyS0"]\n')
    (root / "usr/lib/composefs").mkdir(parents=True)
    (root / "usr/lib/composefs/setup-root-conf.toml").write_text('[etc]\nmount = "overlay"\n')
    return root


def lines(root: Path) -> list[str]:
    return [f.line() for f in lint(root)]


@pytest.mark.parametrize("compress", ["zstd", "gzip"])
def test_initramfs_lists_every_archive(tmp_path: Path, compress: str) -> None:
    img = tmp_path / "initramfs.img"
    img.write_bytes(dracut_like(["/usr/lib/a", "usr/bin/b"], compress))
    assert list_files(img) == ["/kernel/x86/microcode/GenuineIntel.bin", "/usr/lib/a", "/usr/bin/b"]


def test_good_root_has_no_findings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = good_root(tmp_path)
    assert lines(root) == []
    assert main(["container", "lint", "--root", str(root)]) == 0
    assert capsys.readouterr().out == ""


def test_no_kernel(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    os.unlink(root / "usr/lib/modules" / KVER / "vmlinuz")
    (root / "boot" / f"vmlinuz-{KVER}").write_bytes(b"K")
    assert lines(root)[0] == (
        f"error: kernel: no kernel at /usr/lib/modules/*/vmlinuz (/boot has vmlinuz-{KVER}: the"
        " cfsboot package's kernel hook copies it to /usr/lib/modules/KVER/vmlinuz;"
        " reinstall the kernel after cfsboot)"
    )


def test_two_kernels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = good_root(tmp_path)
    other = root / "usr/lib/modules/6.1.0-1-amd64"
    other.mkdir()
    (other / "vmlinuz").write_bytes(b"K")
    assert lines(root) == [
        "error: kernel: 2 kernels (/usr/lib/modules/6.1.0-1-amd64/vmlinuz,"
        f" /usr/lib/modules/{KVER}/vmlinuz); an image ships exactly one",
        "error: initramfs: /usr/lib/modules/6.1.0-1-amd64/initramfs.img is missing"
        " (dracut --no-hostonly --kver 6.1.0-1-amd64 /usr/lib/modules/6.1.0-1-amd64/initramfs.img)",
    ]
    assert main(["container", "lint", "--root", str(root), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert [(f["level"], f["check"]) for f in out] == [("error", "kernel"), ("error", "initramfs")]


def test_kernel_symlink_resolves_inside_root(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    vmlinuz = root / "usr/lib/modules" / KVER / "vmlinuz"
    os.replace(vmlinuz, root / "boot/vmlinuz-real")
    vmlinuz.symlink_to("/boot/vmlinuz-real")  # absolute: inside root, not the host
    assert lines(root) == [
        "warning: boot-dir: /boot is empty in the booted image and only UKIs in /boot/EFI/Linux"
        " are read from it; 1 files there are never used: /boot/vmlinuz-real"
    ]


def test_initramfs_without_cfsboot(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    rel = f"usr/lib/modules/{KVER}/initramfs.img"
    (root / rel).write_bytes(dracut_like(["/usr/bin/sh", INITRAMFS_NEEDS[1]]))
    assert lines(root) == [
        f"error: initramfs: /{rel} has no {INITRAMFS_NEEDS[0]}: it cannot mount a composefs root"
        " (build it with dracut's cfsboot module: install cfsboot before dracut runs)"
    ]


def test_initramfs_not_cpio(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    rel = f"usr/lib/modules/{KVER}/initramfs.img"
    (root / rel).write_bytes(b"garbage!" * 10)
    assert lines(root) == [
        f"error: initramfs: /{rel}: {root / rel}: neither a cpio archive nor a known"
        " compression at b'garbag'"
    ]


@pytest.mark.parametrize(
    ("data", "found"),
    [
        (
            b"\x1f\x8b\x08\x00" + b"garbage" * 4,
            "its gzip data is corrupt (Error -3 while decompressing data:"
            " invalid code lengths set)",
        ),
        (
            b"\x28\xb5\x2f\xfd" + b"garbage" * 4,
            "its zstd data is corrupt (zstd decompress error: Dictionary mismatch)",
        ),
        (b"\xfd7zXZ\x00" + b"garbage" * 4, "its xz data is corrupt (Corrupt input data)"),
        (b"BZh" + b"garbage" * 4, "its bzip2 data is corrupt (Invalid data stream)"),
        (
            b"070701" + b"z" * 104,
            "a cpio header at offset 0 of an archive has a field that is not hex",
        ),
    ],
)
def test_initramfs_corrupt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, found: str
) -> None:
    """One finding, not an internal error: the decompressors' own errors are named."""
    root = good_root(tmp_path)
    rel = f"usr/lib/modules/{KVER}/initramfs.img"
    (root / rel).write_bytes(data)
    assert main(["container", "lint", "--root", str(root)]) == 1
    assert capsys.readouterr().out == f"error: initramfs: /{rel}: {root / rel}: {found}\n"


def test_initramfs_in_a_compression_the_kernel_reads_is_a_warning(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    rel = f"usr/lib/modules/{KVER}/initramfs.img"
    (root / rel).write_bytes(b"\x02\x21\x4c\x18" + b"lz4 frames")
    assert lines(root) == [
        f"warning: initramfs: /{rel} is lz4-compressed, which cfsboot cannot read: whether it"
        " has the cfsboot module is not checked (zstd, gzip and xz can be)"
    ]


def test_no_bootloader(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    os.unlink(root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi")
    assert lines(root) == [
        "error: bootloader: no boot loader: neither"
        " /usr/lib/systemd/boot/efi/systemd-bootx64.efi nor"
        " /usr/lib/grub/x86_64-efi/monolithic/grubx64.efi"
        " (apt-get install systemd-boot-efi or grub-efi-amd64-bin)"
    ]


def test_grub_is_a_bootloader(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    os.unlink(root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi")
    grub = root / "usr/lib/grub/x86_64-efi/monolithic"
    grub.mkdir(parents=True)
    (grub / "grubx64.efi").write_bytes(b"MZ")
    assert lines(root) == []


def test_files_in_boot(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    (root / "boot/EFI/Linux").mkdir(parents=True)
    (root / "boot/EFI/Linux/os.efi").write_bytes(b"MZ")  # a UKI: read from /boot, fine
    (root / "boot/initrd.img-6.12").write_bytes(b"I")
    assert lines(root) == [
        "warning: boot-dir: /boot is empty in the booted image and only UKIs in /boot/EFI/Linux"
        " are read from it; 1 files there are never used: /boot/initrd.img-6.12"
    ]


def test_files_in_var(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    for i in range(7):
        (root / f"var/lib/f{i}").write_text("x")
    assert lines(root) == [
        "warning: var: 7 files in /var are copied once, at install, and never updated by switch"
        " or upgrade: /var/lib/f0, /var/lib/f1, /var/lib/f2, /var/lib/f3, /var/lib/f4 and 2 more"
        " (ship them in /usr and create them at boot with tmpfiles.d)"
    ]


def test_bad_setup_root_conf(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    (root / "usr/lib/composefs/setup-root-conf.toml").write_text('[etc]\nmount = "copy"\n')
    assert lines(root) == [
        "error: setup-root-conf: /usr/lib/composefs/setup-root-conf.toml: etc.mount must be one"
        " of overlay | bind | transient | none, not 'copy'"
    ]


def test_bad_kargs(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    (root / "usr/lib/bootc/kargs.d/20-bad.toml").write_text('kargs = "quiet"\n')
    assert lines(root) == [
        "error: kargs: usr/lib/bootc/kargs.d/20-bad.toml: 'kargs' must be a list of strings"
    ]


def test_kargs_links_resolve_inside_root(tmp_path: Path) -> None:
    """kargs.d is read as the import reads it: links resolved inside the image, only regular
    files; `ukify`'s command line (load_kargs_d) takes the same files."""
    root = good_root(tmp_path / "root")
    kargs = root / "usr/lib/bootc/kargs.d"
    host = tmp_path / "host.toml"  # outside the image: the image has no such file
    host.write_text("kargs = 5\n")
    (kargs / "20-host.toml").symlink_to(host)
    (root / "usr/lib/in-image.toml").write_text('kargs = ["from-link=1"]\n')
    (kargs / "30-abs.toml").symlink_to("/usr/lib/in-image.toml")
    (kargs / "40-dir.toml").mkdir()
    (kargs / "50-dangling.toml").symlink_to("/nowhere.toml")
    assert lines(root) == []
    assert load_kargs_d(root, arch="x86_64") == ["console=ttyS0", "from-link=1"]


def test_files_not_utf8_are_named(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    (root / "usr/lib/bootc/kargs.d/20-bad.toml").write_bytes(b"kargs = []\n\xff")
    (root / "usr/lib/composefs/setup-root-conf.toml").write_bytes(b"\xfe")
    assert lines(root) == [
        "error: setup-root-conf: /usr/lib/composefs/setup-root-conf.toml: config is not UTF-8",
        "error: kargs: usr/lib/bootc/kargs.d/20-bad.toml: not UTF-8 text (byte 11)",
    ]


def test_fstab_mounts_root(tmp_path: Path) -> None:
    root = good_root(tmp_path)
    (root / "etc/fstab").write_text("# c\nUUID=1234 / ext4 errors=remount-ro 0 1\n")
    assert lines(root) == [
        "error: fstab: /etc/fstab:2 mounts / (UUID=1234): the composefs image is the root;"
        " remove the line"
    ]


def test_skip_and_unknown_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = good_root(tmp_path)
    (root / "etc/fstab").write_text("/dev/sda1 / ext4 defaults 0 1\n")
    assert main(["container", "lint", "--root", str(root), "--skip", "fstab"]) == 0
    assert main(["container", "lint", "--root", str(root), "--skip", "nope"]) == 1
    assert capsys.readouterr().err.startswith("cfsboot: no lint check 'nope'; checks: kernel, ")


@pytest.mark.parametrize("alg", [HashAlg.SHA256, HashAlg.SHA512])
def test_compute_digest_equals_import_digest(tmp_path: Path, alg: HashAlg) -> None:
    """The digest of a tree is the digest `image import` gives the image made from it."""
    root = good_root(tmp_path / "root")
    (root / "usr/bin").mkdir()
    (root / "usr/bin/tool").write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    os.link(root / "usr/bin/tool", root / "usr/bin/tool2")
    (root / "usr/bin/sh").symlink_to("dash")
    (root / "run/lock").mkdir(parents=True)
    (root / "run/lock/x").write_text("emptied for the image")
    (root / "boot/EFI/Linux").mkdir(parents=True)
    (root / "boot/EFI/Linux/os.efi").write_bytes(b"MZ" * 100)
    # An SELinux policy: both sides label the boot image from it (file_contexts is over
    # 64 bytes, so its content is read from the directory, not from the tree).
    policy = root / "etc/selinux/targeted/contexts/files"
    policy.mkdir(parents=True)
    (root / "etc/selinux/config").write_text("SELINUX=permissive\nSELINUXTYPE=targeted\n")
    (policy / "file_contexts").write_text(
        "/.*\tsystem_u:object_r:default_t:s0\n"
        "/usr(/.*)?\tsystem_u:object_r:usr_t:s0\n"
        "/usr/bin(/.*)?\tsystem_u:object_r:bin_t:s0\n"
    )
    os.chmod(root / "usr/bin/tool", 0o4755)
    os.setxattr(root / "usr/bin/tool", "user.dropped", b"1")
    layout = build.Layout(tmp_path / "layout")
    layer = layout.add_layer(build.tar_chunks(build.entries_from_directory(root)))
    layout.add_image([layer], tag="t")
    imported = import_image(f"oci:{tmp_path / 'layout'}:t", None, algorithm=alg)
    computed = compute_digest(root, alg=alg)
    assert computed.digest == imported.image_digest
    assert computed.boot.to_json() == imported.boot.to_json()
    usr_bin = lookup(computed.tree, b"usr/bin")
    assert usr_bin is not None
    assert usr_bin.xattrs[b"security.selinux"] == b"system_u:object_r:bin_t:s0"


def test_compute_digest_leaves_sockets_out_as_layers_do(tmp_path: Path) -> None:
    """tar cannot carry a socket (build tools skip them when they commit a layer)."""
    root = good_root(tmp_path / "root")
    (root / "run").mkdir()
    for path in (root / "run/daemon.sock", root / "var/lib/agent.sock"):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))
    layout = build.Layout(tmp_path / "layout")
    layer = layout.add_layer(build.tar_chunks(build.entries_from_directory(root)))
    layout.add_image([layer], tag="t")
    imported = import_image(f"oci:{tmp_path / 'layout'}:t", None)
    assert compute_digest(root).digest == imported.image_digest


def test_compute_digest_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = good_root(tmp_path)
    assert main(["container", "compute-digest", "--root", str(root), "--hash", "sha256"]) == 0
    assert capsys.readouterr().out == compute_digest(root, alg=HashAlg.SHA256).digest + "\n"


def test_ukify_argv_and_sealed_digest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = good_root(tmp_path / "root")
    digest = compute_digest(root).digest
    calls: list[list[str]] = []

    def fake_run(argv: list[str]) -> None:
        calls.append(argv)
        out = next(a for a in argv if a.startswith("--output=")).removeprefix("--output=")
        cmdline = next(a for a in argv if a.startswith("--cmdline=")).removeprefix("--cmdline=")
        Path(out).write_bytes(make_pe([(b".cmdline", cmdline.encode() + b"\0"), LINUX]))

    monkeypatch.setattr(ukify, "run", fake_run)
    out = tmp_path / "out/os.efi"
    argv = ["container", "ukify", "--root", str(root), "--output", str(out), "--karg", "rw"]
    assert main(argv) == 0
    mod = root / "usr/lib/modules" / KVER
    assert calls == [
        [
            "ukify",
            "build",
            f"--linux={mod / 'vmlinuz'}",
            f"--initrd={mod / 'initramfs.img'}",
            f"--cmdline=composefs={digest} console=ttyS0 rw",
            f"--uname={KVER}",
            f"--os-release=@{root / 'usr/lib/os-release'}",
            f"--output={out.with_name('.os.efi.tmp')}",
        ]
    ]
    assert out.exists() and not out.with_name(".os.efi.tmp").exists()
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert ukify.default_output(root, KVER) == Path(f"/boot/EFI/Linux/debian-13-{KVER}.efi")


def test_ukify_digest_karg_style(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = good_root(tmp_path / "root")
    digest = compute_digest(root, alg=HashAlg.SHA256).digest
    cmdlines: list[str] = []

    def fake_run(argv: list[str]) -> None:
        out = next(a for a in argv if a.startswith("--output=")).removeprefix("--output=")
        cmdline = next(a for a in argv if a.startswith("--cmdline=")).removeprefix("--cmdline=")
        cmdlines.append(cmdline)
        Path(out).write_bytes(make_pe([(b".cmdline", cmdline.encode() + b"\0"), LINUX]))

    monkeypatch.setattr(ukify, "run", fake_run)
    out = tmp_path / "os.efi"
    argv = ["container", "ukify", "--root", str(root), "--output", str(out), "--hash", "sha256"]
    assert main([*argv, "--karg-style", "digest"]) == 0
    assert cmdlines == [f"composefs.digest=v1-sha256-12:{digest} console=ttyS0"]


@pytest.mark.parametrize(
    ("karg", "problem"),
    [
        ('a="b', "an unbalanced double quote"),
        ("a\nb", "a control or white space character ('\\n')"),
    ],
)
def test_ukify_refuses_a_karg_that_would_break_the_cmdline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], karg: str, problem: str
) -> None:
    root = good_root(tmp_path / "root")
    out = tmp_path / "os.efi"
    argv = ["container", "ukify", "--root", str(root), "--output", str(out), "--karg", karg]
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"cfsboot: kernel argument {karg!r} has {problem}: it cannot go in the UKI's .cmdline\n"
    )
    assert not out.exists()


def test_ukify_refuses_a_wrong_seal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = good_root(tmp_path / "root")

    def fake_run(argv: list[str]) -> None:
        out = next(a for a in argv if a.startswith("--output=")).removeprefix("--output=")
        Path(out).write_bytes(make_pe([(b".cmdline", f"composefs={SHA512}\0".encode()), LINUX]))

    monkeypatch.setattr(ukify, "run", fake_run)
    out = tmp_path / "os.efi"
    assert main(["container", "ukify", "--root", str(root), "--output", str(out)]) == 1
    assert not out.exists() and not (tmp_path / ".os.efi.tmp").exists()
    # The directories it made for --output go too; one that was there stays.
    (tmp_path / "there").mkdir()
    deep = tmp_path / "there/new/er/os.efi"
    assert main(["container", "ukify", "--root", str(root), "--output", str(deep)]) == 1
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == []


def test_ukify_needs_one_kernel(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = good_root(tmp_path)
    os.unlink(root / "usr/lib/modules" / KVER / "vmlinuz")
    assert main(["container", "ukify", "--root", str(root), "--output", "x.efi"]) == 1
    assert capsys.readouterr().err == (
        f"cfsboot: {root}: a UKI needs exactly one kernel in /usr/lib/modules/*/vmlinuz"
        " (found: none); see cfsboot container lint\n"
    )


def test_bootcs_lint_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`bootc container lint --rootfs R --fatal-warnings --no-truncate` and `--list`, which
    were refused as unrecognized arguments."""
    root = good_root(tmp_path)
    (root / "boot/initrd.img-6.12").write_bytes(b"I")  # a warning (boot-dir)
    assert main(["container", "lint", "--rootfs", str(root), "--no-truncate"]) == 0
    assert capsys.readouterr().out.startswith("warning: boot-dir: ")
    assert main(["container", "lint", "--rootfs", str(root), "--fatal-warnings"]) == 1
    assert main(["container", "lint", "--list"]) == 0
    assert capsys.readouterr().out.splitlines()[-8:] == [
        "kernel", "initramfs", "bootloader", "boot-dir", "var", "setup-root-conf", "kargs",
        "fstab",
    ]  # fmt: skip
