"""The files that make the Debian base a cfsboot test OS, besides the cfsboot package.

The guest check scenarios (and the runner, which the package ships too), an
empty /etc/fstab, systemd-networkd with DHCP, the host's registry marked
insecure, kargs.d, and each variant's own files. ``osimage.py`` puts them in
the build context that ``containers/testos.Containerfile`` copies to ``/``.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import diskimage
import images

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ROOT_LABEL = images.ROOT_LABEL
# The kernel arguments of the test OS, for kargs.d (boot entries written by
# `cfsboot install`) and for the UKI's sealed command line. systemd.gpt_auto=0:
# see images.NO_GPT_AUTO.
KARGS = ("rw", "console=ttyS0,115200", "quiet", "panic=-1", images.NO_GPT_AUTO)
KARGS_FILE = "/usr/lib/bootc/kargs.d/10-cfsboot-testos.toml"
REGISTRY = "10.0.2.2:5000"  # the host's registry as the guest sees it (registry.py)
# The trimmed initramfs of the test OS (osimage.dracut_conf), read when the package's
# postinst runs dracut.
DRACUT_CONF = "/etc/dracut.conf.d/90-cfsboot-testos.conf"


@dataclass(frozen=True)
class Variant:
    """One test OS image: what distinguishes it from the others."""

    name: str
    version_id: str  # /usr/lib/os-release VERSION_ID
    # /usr/lib/composefs/setup-root-conf.toml (None: absent, setup-root's defaults)
    setup_root_conf: str | None = None
    uki_of: str | None = None  # a UKI layer over this variant's layers
    # Debian packages the Containerfile installs (apt-get, in the image build), and
    # kernel arguments added to KARGS.
    packages: tuple[str, ...] = ()
    kargs: tuple[str, ...] = ()
    # A health check that always fails (/usr/lib/cfsboot/health.d), and the tries its
    # boot-assessment.toml gives it: the image a rollback test tries and gives up on.
    failing_health_check: bool = False
    boot_tries: int | None = None


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
    if variant.failing_health_check:
        files["/usr/lib/cfsboot/health.d/50-cfsboot-test-fails"] = (
            b"#!/bin/sh\necho 'this image fails its health check on purpose'\nexit 1\n",
            0o755,
        )
    if variant.boot_tries is not None:
        files["/usr/lib/cfsboot/boot-assessment.toml"] = (
            f"tries = {variant.boot_tries}\n".encode(),
            0o644,
        )
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


def skipped(rel: Path) -> bool:
    """Build and cache litter that is not part of the sources."""
    return any(
        part == "__pycache__" or part.startswith(".") or part.endswith(".egg-info")
        for part in rel.parts
    ) or (rel.suffix == ".pyc")
