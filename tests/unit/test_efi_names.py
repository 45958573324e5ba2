"""Boot loader file names by architecture: the one table (cfsboot.linux.arch), install
taking the image's architecture from its OCI config, detect and lint.

The names: UEFI 2.10 section 3.5.1.1 (removable media: BOOTX64.EFI, BOOTIA32.EFI,
BOOTAA64.EFI, BOOTARM.EFI, BOOTRISCV64.EFI, BOOTLOONGARCH64.EFI); systemd's
`systemd-boot<efi>.efi` and `linux<efi>.efi.stub` (EFI_MACHINE_TYPE_NAME, lower case);
Debian's GRUB packages (`grub-efi-<deb>-bin`, `/usr/lib/grub/<cpu>-efi/monolithic/grub<efi>.efi`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cfsboot.boot.bootloader import BootloaderKind, SystemdBoot, detect
from cfsboot.boot.esp import DirEsp
from cfsboot.composefs.repository import Repository
from cfsboot.deploy.install import InstallOptions, _install_loader, image_efi_names
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.deploy.target import import_target
from cfsboot.errors import CfsbootError
from cfsboot.image import lint
from cfsboot.linux import arch
from cfsboot.linux.arch import EfiNames, NoUefi, all_efi_names, efi_names
from cfstest.ocibuild import Entry, build_layout
from cfstest.osimages import os_entries
from setuproot.contract import REPO_DIR

X64 = EfiNames(
    efi="x64",
    removable="EFI/BOOT/BOOTX64.EFI",
    systemd_boot="EFI/systemd/systemd-bootx64.efi",
    systemd_boot_in_image="usr/lib/systemd/boot/efi/systemd-bootx64.efi",
    stub_in_image="usr/lib/systemd/boot/efi/linuxx64.efi.stub",
    grub_in_image="usr/lib/grub/x86_64-efi/monolithic/grubx64.efi",
    grub_package="grub-efi-amd64-bin",
)


def _names(efi: str, grub_cpu: str, deb: str) -> EfiNames:
    return EfiNames(
        efi=efi,
        removable=f"EFI/BOOT/BOOT{efi.upper()}.EFI",
        systemd_boot=f"EFI/systemd/systemd-boot{efi}.efi",
        systemd_boot_in_image=f"usr/lib/systemd/boot/efi/systemd-boot{efi}.efi",
        stub_in_image=f"usr/lib/systemd/boot/efi/linux{efi}.efi.stub",
        grub_in_image=f"usr/lib/grub/{grub_cpu}-efi/monolithic/grub{efi}.efi",
        grub_package=f"grub-efi-{deb}-bin",
    )


AA64 = _names("aa64", "arm64", "arm64")


@pytest.mark.parametrize(
    ("name", "removable", "names"),
    [
        ("x86_64", "EFI/BOOT/BOOTX64.EFI", X64),
        ("amd64", "EFI/BOOT/BOOTX64.EFI", X64),  # OCI / Debian
        ("aarch64", "EFI/BOOT/BOOTAA64.EFI", AA64),
        ("arm64", "EFI/BOOT/BOOTAA64.EFI", AA64),
        ("i686", "EFI/BOOT/BOOTIA32.EFI", _names("ia32", "i386", "ia32")),
        ("i386", "EFI/BOOT/BOOTIA32.EFI", _names("ia32", "i386", "ia32")),
        ("386", "EFI/BOOT/BOOTIA32.EFI", _names("ia32", "i386", "ia32")),  # OCI
        ("armv7l", "EFI/BOOT/BOOTARM.EFI", _names("arm", "arm", "arm")),
        ("arm", "EFI/BOOT/BOOTARM.EFI", _names("arm", "arm", "arm")),  # OCI
        ("riscv64", "EFI/BOOT/BOOTRISCV64.EFI", _names("riscv64", "riscv64", "riscv64")),
        (
            "loongarch64",
            "EFI/BOOT/BOOTLOONGARCH64.EFI",
            _names("loongarch64", "loongarch64", "loong64"),
        ),
        (
            "loong64",  # OCI
            "EFI/BOOT/BOOTLOONGARCH64.EFI",
            _names("loongarch64", "loongarch64", "loong64"),
        ),
    ],
)
def test_efi_names(name: str, removable: str, names: EfiNames) -> None:
    assert efi_names(name) == names
    assert names.removable == removable


@pytest.mark.parametrize("name", ["s390x", "ppc64le", "ppc64", "pdp11"])
def test_no_uefi(name: str) -> None:
    with pytest.raises(NoUefi, match=f"^no UEFI boot loader names for architecture {name}$"):
        efi_names(name)


def test_the_host_and_the_list() -> None:
    assert efi_names() == efi_names(arch.machine())
    assert [n.efi for n in all_efi_names()] == [
        "x64",
        "aa64",
        "ia32",
        "arm",
        "riscv64",
        "loongarch64",
    ]


def test_detect_finds_systemd_boot_of_any_architecture(tmp_path: Path) -> None:
    (tmp_path / "EFI/systemd").mkdir(parents=True)
    (tmp_path / "EFI/systemd/systemd-bootaa64.efi").write_bytes(b"MZ")
    assert isinstance(detect(DirEsp(tmp_path)), SystemdBoot)
    (tmp_path / "EFI/systemd/systemd-bootaa64.efi").unlink()
    with pytest.raises(CfsbootError, match="no boot menu of cfsboot's on the ESP"):
        detect(DirEsp(tmp_path))


def _arm64_image(tmp_path: Path) -> str:
    loaders = [
        Entry("usr/lib/systemd/boot/efi/systemd-bootaa64.efi", "file", mode=0o644, data=b"sd-aa64"),
        Entry("usr/lib/grub/arm64-efi", "dir"),
        Entry("usr/lib/grub/arm64-efi/monolithic", "dir"),
        Entry("usr/lib/grub/arm64-efi/monolithic/grubaa64.efi", "file", mode=0o644, data=b"g-aa64"),
    ]
    build_layout(tmp_path / "oci", [os_entries("1"), loaders], arch="arm64")
    return f"oci:{tmp_path / 'oci'}:latest"


@pytest.mark.parametrize("kind", ["systemd-boot", "grub"])
def test_install_takes_the_images_architecture(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    repo = Repository.init(root / REPO_DIR, insecure=True)
    sysroot = Sysroot(root)
    sysroot.__dict__["repo"] = repo
    with repo.lock():
        target = import_target(sysroot, _arm64_image(tmp_path), arch="arm64")
    assert image_efi_names(repo, target) == AA64
    esp = DirEsp(tmp_path / "esp")
    (tmp_path / "esp").mkdir()
    _install_loader(esp, sysroot, target, InstallOptions(bootloader=BootloaderKind(kind)))
    files = sorted(
        p.relative_to(tmp_path / "esp").as_posix() for p in (tmp_path / "esp").rglob("*.*")
    )
    if kind == "systemd-boot":
        assert files == ["EFI/BOOT/BOOTAA64.EFI", "EFI/systemd/systemd-bootaa64.efi"]
        assert (tmp_path / "esp/EFI/BOOT/BOOTAA64.EFI").read_bytes() == b"sd-aa64"
    else:
        assert files == ["EFI/BOOT/BOOTAA64.EFI"]
        assert (tmp_path / "esp/EFI/BOOT/BOOTAA64.EFI").read_bytes() == b"g-aa64"


def test_lint_wants_the_boot_loader_of_the_build_architecture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    efi = tmp_path / "usr/lib/systemd/boot/efi"
    efi.mkdir(parents=True)
    (efi / "systemd-bootaa64.efi").write_bytes(b"MZ")
    monkeypatch.setattr(arch, "machine", lambda name=None: name or "aarch64")
    assert list(lint.check_bootloader(tmp_path)) == []
    monkeypatch.setattr(arch, "machine", lambda name=None: name or "x86_64")
    [finding] = lint.check_bootloader(tmp_path)
    assert finding.message == (
        "no boot loader: neither /usr/lib/systemd/boot/efi/systemd-bootx64.efi nor"
        " /usr/lib/grub/x86_64-efi/monolithic/grubx64.efi"
        " (apt-get install systemd-boot-efi or grub-efi-amd64-bin)"
    )
    monkeypatch.setattr(arch, "machine", lambda name=None: name or "s390x")
    assert list(lint.check_bootloader(tmp_path)) == []
