"""Disk images for the VM tests, built without loop devices or host mounts of vfat.

- ext4 root images: ``mkfs.ext4 -O verity -d`` from a read-only overlay of the
  pristine base rootfs plus a layer of added files (private mount namespace),
  so the cached rootfs is never copied or changed;
- FAT32 ESPs: ``mkfs.vfat`` + mtools (the host kernel has no vfat);
- GPT disks: ``sfdisk`` on a sparse file, partitions copied in with ``dd``.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GUEST = HERE / "guest"

# GPT partition type GUIDs (Discoverable Partitions Specification).
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
ROOT_X86_64_TYPE = "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709"
MIB = 1024 * 1024


@dataclass(frozen=True)
class FileSpec:
    """A file to add to an image: its bytes (or a host file) and mode."""

    content: bytes | Path
    mode: int = 0o644


def _run(argv: Sequence[str], env: Mapping[str, str] | None = None) -> None:
    proc = subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        env=None if env is None else {**os.environ, **env},
        check=False,
    )
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise RuntimeError(
            f"{' '.join(argv[:3])} … failed with exit code {proc.returncode}: "
            f"{lines[-1] if lines else '(no output)'}"
        )


def write_layer(layer: Path, files: Mapping[str, FileSpec], symlinks: Mapping[str, str]) -> None:
    """Materialise files (absolute image paths) and symlinks under layer, root-owned."""
    for dest, spec in files.items():
        target = layer / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = spec.content.read_bytes() if isinstance(spec.content, Path) else spec.content
        target.write_bytes(data)
        os.chmod(target, spec.mode)
    for dest, link_target in symlinks.items():
        link = layer / dest.lstrip("/")
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(link_target)


def check_unit_files(
    target: str = "multi-user.target", guest: Path = GUEST
) -> tuple[dict[str, FileSpec], dict[str, str]]:
    """The guest check framework (unit, runner, scenarios) as image files and symlinks.

    target: the unit runs after it (and is pulled in by it); guest: where the
    framework's sources are (this tree's vm-tests/guest by default).
    """
    unit = (guest / "cfsboot-check.service").read_text()
    if target != "multi-user.target":
        unit = unit.replace("multi-user.target", target)
    files = {
        "/usr/lib/systemd/system/cfsboot-check.service": FileSpec(unit.encode()),
        "/usr/lib/cfsboot-check/cfsboot-check": FileSpec(guest / "cfsboot_check.py", 0o755),
    }
    for script in sorted((guest / "scenarios").iterdir()):
        files[f"/usr/lib/cfsboot-check/scenarios/{script.name}"] = FileSpec(script, 0o755)
    links = {
        f"/etc/systemd/system/{target}.wants/cfsboot-check.service": (
            "/usr/lib/systemd/system/cfsboot-check.service"
        )
    }
    return files, links


def test_os_files(rootfs: Path, label: str, hostname: str = "cfsboot-test") -> dict[str, FileSpec]:
    """Small customisations that make the base rootfs a bootable test guest."""
    # Empty root password: the serial console can be used to debug a guest by hand.
    shadow = []
    for line in (rootfs / "etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == "root":
            fields[1] = ""
        shadow.append(":".join(fields))
    return {
        "/etc/fstab": FileSpec(f"LABEL={label} / ext4 rw,relatime 0 1\n".encode()),
        "/etc/hostname": FileSpec(f"{hostname}\n".encode()),
        "/etc/shadow": FileSpec(("\n".join(shadow) + "\n").encode(), 0o640),
    }


# Private mount namespace: a read-only overlay (added layer over the base
# rootfs) that mkfs.ext4 -d copies from. Nothing is mounted on the host.
_MKFS_FROM_OVERLAY = """set -eu
layer=$1 rootfs=$2 merged=$3; shift 3
mount -t overlay overlay -o "ro,lowerdir=$layer:$rootfs" "$merged"
exec "$@"
"""


def mkfs_ext4_argv(source: str, output: Path, size_mib: int, label: str) -> list[str]:
    return [
        "mkfs.ext4",
        "-q",
        "-F",
        "-O", "verity",
        "-L", label,
        "-E", "root_owner=0:0",
        "-d", source,
        str(output),
        f"{size_mib}M",
    ]  # fmt: skip


def ext4_root_image(
    rootfs: Path,
    output: Path,
    *,
    files: Mapping[str, FileSpec] | None = None,
    symlinks: Mapping[str, str] | None = None,
    size_mib: int = 2048,
    label: str = "cfsroot",
    layers: Sequence[Path] = (),
) -> Path:
    """An ext4 (with the verity feature) image of rootfs plus files; rootfs is not modified.

    layers: read-only trees between the files and rootfs (the first one on top).
    """
    output.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="cfsboot-img.", dir=output.parent) as tmp:
        layer = Path(tmp) / "layer"
        merged = Path(tmp) / "merged"
        layer.mkdir()
        merged.mkdir()
        write_layer(layer, files or {}, symlinks or {})
        _run(
            [
                "unshare", "--mount", "--propagation", "private",
                "sh", "-c", _MKFS_FROM_OVERLAY, "mkfs-from-overlay",
                str(layer), ":".join(str(p) for p in (*layers, rootfs)), str(merged),
                *mkfs_ext4_argv(str(merged), output, size_mib, label),
            ]
        )  # fmt: skip
    return output


def esp_image(output: Path, files: Mapping[str, Path | bytes], size_mib: int = 256) -> Path:
    """A FAT32 ESP holding files (keys are paths like /EFI/BOOT/BOOTX64.EFI), built with mtools."""
    output.unlink(missing_ok=True)
    with open(output, "wb") as f:
        f.truncate(size_mib * MIB)
    _run(["mkfs.vfat", "-F", "32", "-n", "ESP", str(output)])
    env = {"MTOOLS_SKIP_CHECK": "1"}
    dirs: set[str] = set()
    for dest in files:
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    for d in sorted(dirs, key=lambda d: (d.count("/"), d)):
        _run(["mmd", "-i", str(output), f"::/{d}"], env)
    with tempfile.TemporaryDirectory(prefix="cfsboot-esp.", dir=output.parent) as tmp:
        for n, (dest, src) in enumerate(sorted(files.items())):
            if isinstance(src, bytes):
                path = Path(tmp) / str(n)
                path.write_bytes(src)
                src = path
            _run(["mcopy", "-i", str(output), str(src), f"::/{dest.strip('/')}"], env)
    return output


@dataclass(frozen=True)
class Partition:
    image: Path
    type_guid: str
    name: str
    size_mib: int  # at least the image's size


def sfdisk_script(partitions: Sequence[Partition]) -> str:
    """GPT layout: partitions back to back from 1 MiB, each size_mib long."""
    lines = ["label: gpt"]
    start = 1
    for p in partitions:
        lines.append(f'start={start}MiB, size={p.size_mib}MiB, type={p.type_guid}, name="{p.name}"')
        start += p.size_mib
    return "\n".join(lines) + "\n"


def gpt_disk(output: Path, partitions: Sequence[Partition]) -> Path:
    """A sparse raw disk with a GPT and the partition images copied in."""
    total = 1 + sum(p.size_mib for p in partitions) + 1  # + backup GPT
    output.unlink(missing_ok=True)
    with open(output, "wb") as f:
        f.truncate(total * MIB)
    proc = subprocess.run(
        ["sfdisk", "--quiet", str(output)],
        input=sfdisk_script(partitions).encode(),
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sfdisk failed: {proc.stderr.decode(errors='replace').strip()}")
    start = 1
    for p in partitions:
        if p.image.stat().st_size > p.size_mib * MIB:
            raise ValueError(f"{p.image} is larger than its {p.size_mib} MiB partition")
        _run(
            [
                "dd", f"if={p.image}", f"of={output}", "bs=1M", f"seek={start}",
                "conv=notrunc,sparse", "status=none",
            ]
        )  # fmt: skip
        start += p.size_mib
    return output


def systemd_boot_esp(
    rootfs: Path,
    output: Path,
    *,
    kernel: Path,
    initrd: Path,
    options: str,
    entry: str = "cfsboot-test",
    title: str = "cfsboot test",
) -> Path:
    """An ESP with systemd-boot (from rootfs) and one BLS type 1 entry."""
    sdboot = rootfs / "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    loader_conf = f"default {entry}.conf\ntimeout 0\nconsole-mode keep\neditor no\n"
    bls = f"title {title}\nlinux /{entry}/vmlinuz\ninitrd /{entry}/initrd\noptions {options}\n"
    files: dict[str, Path | bytes] = {
        "/EFI/BOOT/BOOTX64.EFI": sdboot,
        "/EFI/systemd/systemd-bootx64.efi": sdboot,
        "/loader/loader.conf": loader_conf.encode(),
        f"/loader/entries/{entry}.conf": bls.encode(),
        f"/{entry}/vmlinuz": kernel,
        f"/{entry}/initrd": initrd,
    }
    return esp_image(output, files)
