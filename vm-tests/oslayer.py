"""The second layer of the test OS images: what makes the Debian base a cfsboot test OS.

The stager in python3's dist-packages with ``/usr/bin/cfsboot`` and its systemd
units, the dracut module with a frozen setup-root, the kernel and a dracut
initramfs at /usr/lib/modules/KVER, the guest check framework, an empty
/etc/fstab, systemd-networkd with DHCP, the host's registry marked insecure,
kargs.d, and each variant's own files. ``osimage.py`` packs it.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import diskimage
import images
import testos

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROOT_LABEL = images.ROOT_LABEL
# The kernel arguments of the test OS, for kargs.d (boot entries written by
# `cfsboot install`) and for the UKI's sealed command line. systemd.gpt_auto=0:
# see images.NO_GPT_AUTO.
KARGS = ("rw", "console=ttyS0,115200", "quiet", "panic=-1", images.NO_GPT_AUTO)
KARGS_FILE = "/usr/lib/bootc/kargs.d/10-cfsboot-testos.toml"
STAGER_UNITS = REPO / "stager" / "systemd"
REGISTRY = "10.0.2.2:5000"  # the host's registry as the guest sees it (registry.py)
DIST_PACKAGES = "/usr/lib/python3/dist-packages"
UNIT_SUFFIXES = (".service", ".socket", ".timer", ".path", ".target", ".mount")
# mtime of every file the cfsboot layer adds: the same inputs give the same layer bytes.
EPOCH = 1_735_689_600  # 2025-01-01


@dataclass(frozen=True)
class Variant:
    """One test OS image: what distinguishes it from the others."""

    name: str
    version_id: str  # /usr/lib/os-release VERSION_ID
    # /usr/lib/composefs/setup-root-conf.toml (None: absent, setup-root's defaults)
    setup_root_conf: str | None = None
    uki_of: str | None = None  # a UKI layer over this variant's layers
    # Debian packages installed (apt-get, in an overlay of the rootfs and the cfsboot
    # layer) into a layer of their own, and kernel arguments added to KARGS.
    packages: tuple[str, ...] = ()
    kargs: tuple[str, ...] = ()


@dataclass(frozen=True)
class Link:
    target: str


Content = bytes | Path | Link


def layer_files(
    variant: Variant, rootfs: Path, guest: Path = diskimage.GUEST
) -> dict[str, tuple[Content, int]]:
    """Everything the cfsboot layer adds, except the stager, dracut module and boot files.

    Keys are absolute image paths; values (content, mode), content a host file,
    bytes, or a Link (symlink target).
    """
    files: dict[str, tuple[Content, int]] = {}
    for path, spec in diskimage.test_os_files(rootfs, ROOT_LABEL).items():
        files[path] = (spec.content, spec.mode)
    # The composefs root is set up by the initramfs; an fstab entry for / would remount it.
    files["/etc/fstab"] = (b"# Empty: the initramfs (cfsboot setup-root) mounts the root.\n", 0o644)
    check_files, check_links = diskimage.check_unit_files(guest=guest)
    for path, spec in check_files.items():
        files[path] = (spec.content, spec.mode)
    for path, target in {**check_links, **images.MASKED}.items():
        files[path] = (Link(target), 0o777)
    files["/etc/systemd/network/80-cfsboot-test-dhcp.network"] = (
        b"# QEMU user networking (-nic user): DHCP on every wired NIC.\n"
        b"[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n",
        0o644,
    )
    # networkd only (no wait-online, which would delay any boot that pulls in
    # network-online.target without a NIC: scenarios wait for the network themselves).
    for unit in ("systemd-networkd.service", "systemd-networkd.socket"):
        for path, target in enable_links(unit, _unit_text(rootfs, unit)).items():
            files[path] = (Link(target), 0o777)
    files["/etc/containers/registries.conf.d/50-cfsboot-test-registry.conf"] = (
        f"# The host's test registry (vm-tests/registry.py) speaks plain HTTP.\n"
        f'[[registry]]\nlocation = "{REGISTRY}"\ninsecure = true\n'.encode(),
        0o644,
    )
    kargs = ", ".join(f'"{k}"' for k in (*KARGS, *variant.kargs))
    files[KARGS_FILE] = (f"kargs = [{kargs}]\n".encode(), 0o644)
    files["/usr/lib/os-release"] = (os_release(rootfs, variant).encode(), 0o644)
    files["/usr/share/cfsboot-test/version"] = (f"{variant.name}\n".encode(), 0o644)
    # /etc: one file that changes, one that does not, one in each version only, for
    # the /etc merge of an upgrade.
    etc = "/etc/cfsboot-test"
    files[f"{etc}/version"] = (f"{variant.name}\n".encode(), 0o644)
    files[f"{etc}/unchanged"] = (b"the same in every variant\n", 0o644)
    files[f"{etc}/only-{variant.name}"] = (f"only in {variant.name}\n".encode(), 0o644)
    if variant.setup_root_conf is not None:
        files["/usr/lib/composefs/setup-root-conf.toml"] = (
            variant.setup_root_conf.encode(),
            0o644,
        )
    return files


def os_release(rootfs: Path, variant: Variant) -> str:
    """Debian's os-release with the variant's VERSION_ID (ID stays debian)."""
    lines = []
    for line in (rootfs / "usr/lib/os-release").read_text().splitlines():
        key = line.partition("=")[0]
        if key == "VERSION_ID":
            line = f'VERSION_ID="{variant.version_id}"'
        elif key == "PRETTY_NAME":
            line = f'PRETTY_NAME="Debian GNU/Linux {variant.version_id} (cfsboot test OS)"'
        elif key in ("IMAGE_ID", "IMAGE_VERSION"):
            continue
        lines.append(line)
    lines += ["IMAGE_ID=cfsboot-testos", f"IMAGE_VERSION={variant.name}"]
    return "\n".join(lines) + "\n"


def _unit_text(rootfs: Path, unit: str) -> str:
    return (rootfs / "usr/lib/systemd/system" / unit).read_text()


def install_section(text: str) -> dict[str, list[str]]:
    """The [Install] section of a unit file: key -> values (space-separated lists joined)."""
    out: dict[str, list[str]] = {}
    section = ""
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        if section != "Install" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if value.strip():
            out.setdefault(key.strip(), []).extend(value.split())
        else:
            out.pop(key.strip(), None)  # an empty assignment resets the list
    return out


def enable_links(unit: str, text: str, unit_dir: str = "/usr/lib/systemd/system") -> dict[str, str]:
    """The symlinks `systemctl enable unit` makes (WantedBy, RequiredBy, UpheldBy, Alias).

    Also= is not followed: the caller enables what it wants. A template is enabled
    with its DefaultInstance (and not at all without one).
    """
    install = install_section(text)
    name = unit
    if "@." in unit:
        instance = (install.get("DefaultInstance") or [""])[-1]
        if not instance:
            return {}
        name = unit.replace("@.", f"@{instance}.")
    target = f"{unit_dir}/{unit}"
    links: dict[str, str] = {}
    for key, suffix in (("WantedBy", "wants"), ("RequiredBy", "requires"), ("UpheldBy", "upholds")):
        for dep in install.get(key, []):
            links[f"/etc/systemd/system/{dep}.{suffix}/{name}"] = target
    for alias in install.get("Alias", []):
        links[f"/etc/systemd/system/{alias}"] = target
    return links


def stager_units(units_dir: Path = STAGER_UNITS) -> dict[str, tuple[Content, int]]:
    """The stager's systemd units, installed and enabled as their [Install] sections say."""
    files: dict[str, tuple[Content, int]] = {}
    if not units_dir.is_dir():
        return files
    for path in sorted(units_dir.iterdir()):
        if not path.is_file() or path.suffix not in UNIT_SUFFIXES:
            continue
        files[f"/usr/lib/systemd/system/{path.name}"] = (path, 0o644)
        for link, target in enable_links(path.name, path.read_text()).items():
            files[link] = (Link(target), 0o777)
    return files


LAUNCHER = """#!/usr/bin/python3
# cfsboot, the stager (installed by vm-tests/osimage.py from the source tree).
import sys

from cfsboot.cli import main

sys.exit(main())
"""


def write_tree(layer: Path, files: Mapping[str, tuple[Content, int]], rootfs: Path) -> None:
    """Materialise files under layer; a file that replaces one of rootfs keeps its owner."""
    for dest, (content, mode) in sorted(files.items()):
        target = layer / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            target.unlink()
        if isinstance(content, Link):
            target.symlink_to(content.target)
            continue
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_bytes(content)
        os.chmod(target, mode)
        try:
            st = os.lstat(rootfs / dest.lstrip("/"))
        except FileNotFoundError:
            continue
        os.chown(target, st.st_uid, st.st_gid)


def copy_package(src: Path, dest: Path) -> None:
    """A pure-Python package without byte code: dirs 0755, files 0644."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if skipped(rel):
            continue
        target = dest / rel
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            os.chmod(target, 0o644)


def freeze_setup_root(out: Path, src: Path = REPO) -> Path:
    """A freshly frozen setup-root (setup-root/freeze.py); returns its directory."""
    _run([sys.executable, str(src / "setup-root" / "freeze.py"), "--out", str(out)])
    return out / "cfsboot-setup-root"


def install_dracut_module(layer: Path, frozen: Path, src: Path = REPO) -> None:
    _run(
        [
            "make",
            "-s",
            "-C",
            str(src / "dracut-module"),
            "install",
            f"DESTDIR={layer}",
            f"FROZEN={frozen}",
        ]
    )


def normalise(layer: Path, rootfs: Path) -> None:
    """Directories that exist in rootfs keep its metadata; everything new gets EPOCH.

    So the layer changes nothing but what it adds, and the same inputs give the same
    bytes (the UKI layer relies on it: /boot's own metadata is part of the digest).
    """
    for dirpath, dirnames, filenames in os.walk(layer):
        for name in [*dirnames, *filenames]:
            path = Path(dirpath) / name
            rel = path.relative_to(layer)
            base = rootfs / rel
            st = os.lstat(path)
            if stat.S_ISDIR(st.st_mode) and base.is_dir() and not base.is_symlink():
                bst = os.lstat(base)
                os.chown(path, bst.st_uid, bst.st_gid)
                os.chmod(path, stat.S_IMODE(bst.st_mode))
                os.utime(path, ns=(bst.st_atime_ns, bst.st_mtime_ns))
            else:
                os.utime(path, (EPOCH, EPOCH), follow_symlinks=False)


def build_cfsboot_layer(
    variant: Variant, rootfs: Path, layer: Path, scratch: Path, frozen: Path, src: Path = REPO
) -> None:
    """Fill layer (an empty directory) with the cfsboot layer of variant, from sources src.

    frozen: the frozen setup-root directory (freeze_setup_root).
    """
    kver = testos.kernel_version(rootfs)
    site = layer / DIST_PACKAGES.lstrip("/")
    copy_package(src / "stager" / "cfsboot", site / "cfsboot")
    copy_package(src / "setup-root" / "setuproot", site / "setuproot")
    files = layer_files(variant, rootfs, src / "vm-tests" / "guest")
    files["/usr/bin/cfsboot"] = (LAUNCHER.encode(), 0o755)
    files.update(stager_units(src / "stager" / "systemd"))
    modules = f"/usr/lib/modules/{kver}"
    files[f"{modules}/vmlinuz"] = (testos.kernel_image(rootfs), 0o644)
    write_tree(layer, files, rootfs)
    install_dracut_module(layer, frozen, src)
    # dracut runs over rootfs + this layer: it sees the module and the config file.
    initrd = testos.build_initramfs(
        rootfs, scratch / "initramfs.img", extra_args=("--add", "cfsboot"), layers=(layer,)
    )
    shutil.move(initrd, layer / modules.lstrip("/") / "initramfs.img")
    os.chmod(layer / modules.lstrip("/") / "initramfs.img", 0o644)
    normalise(layer, rootfs)


# apt-get in an overlay of the rootfs and the cfsboot layer: what it changes is the layer.
APT_INSTALL = (
    "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q"
    ' --no-install-recommends "$@" && apt-get clean && rm -rf /var/lib/apt/lists/*'
    " /var/log/apt /var/log/dpkg.log /var/cache/debconf/*-old"
)


def build_packages_layer(variant: Variant, rootfs: Path, cfsboot_layer: Path, layer: Path) -> None:
    """Fill layer (absent or empty) with what installing variant.packages changes.

    Overlay whiteouts (files apt removed from below) are dropped: the lower
    files stay, which is harmless for the caches and backups apt removes.
    """
    testos.run_in_overlay(
        rootfs,
        ["sh", "-c", APT_INSTALL, "apt-install", *variant.packages],
        upper=layer,
        layers=(cfsboot_layer,),
        timeout=1200,
    )
    for dirpath, dirnames, filenames in os.walk(layer):
        for name in filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                path.unlink()
        for name in dirnames:
            try:
                os.removexattr(Path(dirpath) / name, "trusted.overlay.opaque")
            except OSError:
                pass


def skipped(rel: Path) -> bool:
    """Build and cache litter that is not part of the sources."""
    return any(part == "__pycache__" or part.startswith(".") for part in rel.parts) or (
        rel.suffix == ".pyc"
    )


def _run(argv: Sequence[str]) -> None:
    proc = subprocess.run(list(argv), stdin=subprocess.DEVNULL, capture_output=True, check=False)
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"{' '.join(argv[:4])} … failed with exit code {proc.returncode}: "
            f"{lines[-1] if lines else '(no output)'}"
        )
