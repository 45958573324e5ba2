"""`cfsboot container ukify`: seal an image's kernel, initramfs and composefs= digest in a UKI.

The UKI is built by systemd's ukify (Debian package systemd-ukify, which
brings the EFI stub through systemd-boot-efi), inside the image build: the
kernel and initramfs come from the root being sealed, its `.cmdline` is
`composefs=DIGEST` (the digest of that root, `cfsboot.image.rootdigest`; or
`composefs.digest=v1-ALG-12:DIGEST`),
then the root's kargs.d arguments, then the extra ones. The result is read
back and its sealed digest checked before it is kept.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cfsboot.boot.bls import safe_file_name
from cfsboot.boot.uki import read_uki
from cfsboot.errors import die
from cfsboot.image.kargsd import karg_problem, load_kargs_d
from cfsboot.image.lint import MODULES, kernels
from cfsboot.image.osrelease import OsRelease
from cfsboot.image.rootpath import resolve
from cfsboot.linux.run import run
from setuproot.contract import ComposefsKarg, HashAlg, KargStyle

UKIFY = "ukify"


@dataclass(frozen=True)
class UkiInputs:
    kver: str
    linux: Path
    initrd: Path
    os_release: Path | None
    cmdline: str


def uki_inputs(
    root: Path,
    digest: str,
    extra_kargs: Sequence[str] = (),
    *,
    style: KargStyle = KargStyle.COMPOSEFS,
) -> UkiInputs:
    """What goes into the UKI of root: its one kernel, its initramfs, its command line.

    style: how `.cmdline` names the digest (composefs=HEX or composefs.digest=v1-ALG-12:HEX).
    """
    found = kernels(root)
    if len(found) != 1:
        what = ", ".join(found) or "none"
        die(
            f"{root}: a UKI needs exactly one kernel in /{MODULES}/*/vmlinuz (found: {what})",
            hint="see cfsboot container lint",
        )
    kver = found[0]
    linux = resolve(root, f"{MODULES}/{kver}/vmlinuz")
    initrd = resolve(root, f"{MODULES}/{kver}/initramfs.img")
    if linux is None or initrd is None or not initrd.is_file():
        die(
            f"{root}: /{MODULES}/{kver}/initramfs.img is missing", hint="see cfsboot container lint"
        )
    osrel = resolve(root, "usr/lib/os-release") or resolve(root, "etc/os-release")
    alg = HashAlg.from_hex_len(len(digest))
    assert alg is not None, digest
    for arg in extra_kargs:  # kargs.d's are checked as they are read
        problem = karg_problem(arg)
        if problem is not None:
            die(f"kernel argument {arg!r} has {problem}: it cannot go in the UKI's .cmdline")
    karg = ComposefsKarg(digest, alg, insecure=False).to_karg(style)
    cmdline = " ".join([karg, *load_kargs_d(root), *extra_kargs])
    return UkiInputs(kver, linux, initrd, osrel if osrel and osrel.is_file() else None, cmdline)


def default_output(root: Path, kver: str) -> Path:
    """/boot/EFI/Linux/ID-VERSION-KVER.efi of the running system (where an image ships UKIs)."""
    osrel = OsRelease.from_root(root)
    parts = (osrel.os_id, osrel.get("IMAGE_VERSION", "VERSION_ID"), kver)
    # The parts are the image's: a `/` in one must not lead the UKI out of EFI/Linux.
    name = "-".join(safe_file_name(p) for p in parts if p)
    return Path("/boot/EFI/Linux") / f"{name}.efi"


def ukify_argv(inputs: UkiInputs, output: Path) -> list[str]:
    argv = [
        UKIFY,
        "build",
        f"--linux={inputs.linux}",
        f"--initrd={inputs.initrd}",
        f"--cmdline={inputs.cmdline}",
        f"--uname={inputs.kver}",
    ]
    if inputs.os_release is not None:
        argv.append(f"--os-release=@{inputs.os_release}")
    argv.append(f"--output={output}")
    return argv


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p `directory`; the directories made, outermost first."""
    missing = []
    d = directory
    while not d.exists() and d != d.parent:
        missing.append(d)
        d = d.parent
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            continue
        made.append(d)
    return made


def build_uki(inputs: UkiInputs, output: Path, digest: str) -> Path:
    """Run ukify, check the sealed digest, and publish the UKI at output atomically.

    The directories it makes for `output` are removed again when no UKI comes out."""
    made = _make_parents(output.parent)
    tmp = output.with_name(f".{output.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        run(ukify_argv(inputs, tmp))
        read_uki(tmp).check_composefs(digest)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except BaseException:
        tmp.unlink(missing_ok=True)
        for d in reversed(made):  # deepest first; one something else wrote into stays
            try:
                d.rmdir()
            except OSError:
                break
        raise
    finally:
        tmp.unlink(missing_ok=True)
    fd = os.open(output.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return output
