"""`--karg-style digest` (composefs-rs's `composefs.digest=v1-ALG-12:HEX`) through a system's
life, and UKIs that seal several composefs digests.

Entries are read back with cfstest.bootorder (systemd-boot's rules, its own karg parser),
and what install wrote is booted by setup-root against the installed root (ext4 image,
loop-mounted in a private namespace: cfstest.setuprootboot).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from cfsboot.image.importer import import_image
from cfstest.cli import one_line_error
from cfstest.cli import run as cfsboot
from cfstest.dirsystem import System, install
from cfstest.ocibuild import build_layout
from cfstest.osimages import os_entries, os_image
from cfstest.pe import make_pe
from cfstest.setuprootboot import Sysroot, boot
from setuproot.contract import HashAlg

pytestmark = [pytest.mark.integration]

OTHER256 = "8b7df143d91c716ecfa5fc1730022f6b421b05cedee8fd52b1fc65a96030ad52"


def digest(ref: str, alg: HashAlg = HashAlg.SHA512) -> str:
    return import_image(ref, None, algorithm=alg).image_digest


@pytest.fixture(scope="module")
def refs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    base = tmp_path_factory.mktemp("img")
    return {v: os_image(base / v, v[1], kernel=f"k{v[1]}") for v in ("v1", "v2", "v3")}


def _options(sys_: System, staged: bool = False) -> list[list[str]]:
    d = "loader/entries.staged" if staged else "loader/entries"
    return [list(e.options) for e in sys_.entries(d)]


def _digest_karg(d: str, alg: str = "sha512") -> str:
    return f"composefs.digest=?v1-{alg}-12:{d}"


def test_digest_style_through_switch_rollback_gc_fsck(tmp_path: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp_path, refs["v1"], "--karg-style", "digest")
    d1, d2, d3 = (digest(refs[v]) for v in ("v1", "v2", "v3"))
    # This host has no fs-verity: the entry allows its absence ("?").
    assert _options(sys_) == [["rw", _digest_karg(d1), "console=ttyS0,115200"]]
    assert sys_.menu() == [d1]
    booted = sys_.status()["status"]["booted"]
    assert booted["composefs"]["verity"] == d1
    assert booted["composefs"]["missingVerityAllowed"] is True

    # switch keeps the booted entry's spelling.
    sys_.cfs("switch", refs["v2"], "-q")
    assert _options(sys_, staged=True)[0] == ["rw", _digest_karg(d2), "console=ttyS0,115200"]
    assert sys_.status()["status"]["staged"]["composefs"]["verity"] == d2
    sys_.cfs("finalize-staged")
    assert sys_.menu() == [d2, d1]
    assert [o[1] for o in _options(sys_)] == [_digest_karg(d2), _digest_karg(d1)]
    st = sys_.status()["status"]
    assert (st["booted"]["composefs"]["verity"], st["rollback"]["composefs"]["verity"]) == (d2, d1)

    sys_.cfs("rollback")
    assert sys_.menu() == [d1, d2]
    sys_.cfs("rollback")
    assert sys_.menu() == [d2, d1]

    # Told otherwise, the new entry says composefs=; the others keep theirs.
    sys_.cfs("switch", refs["v3"], "--karg-style", "composefs", "-q")
    sys_.cfs("finalize-staged")
    assert sys_.menu() == [d3, d2, d1]
    assert [o[1] for o in _options(sys_)] == [
        f"composefs=?{d3}",
        _digest_karg(d2),
        _digest_karg(d1),
    ]
    # gc reads both spellings: the booted and the rollback deployment stay, the third goes.
    sys_.cfs("gc")
    assert sys_.menu() == [d3, d2]
    assert [o[1] for o in _options(sys_)] == [f"composefs=?{d3}", _digest_karg(d2)]
    assert sorted(p.name for p in (sys_.root / "state/deploy").iterdir()) == sorted([d2, d3])
    images = sys_.root / "composefs/images"
    assert sorted(p.name for p in images.iterdir() if p.is_file()) == sorted([d2, d3])
    out = sys_.cfs("fsck", "--json", check=False)
    doc = json.loads(out.stdout)
    assert (out.returncode, [p for s in doc["sections"] for p in s["problems"]]) == (0, [])


def test_digest_style_sha256_repository(tmp_path: Path, refs: dict[str, str]) -> None:
    sys_ = install(tmp_path, refs["v1"], "--hash", "sha256", "--karg-style", "digest")
    d1 = digest(refs["v1"], HashAlg.SHA256)
    assert len(d1) == 64
    assert _options(sys_) == [["rw", _digest_karg(d1, "sha256"), "console=ttyS0,115200"]]
    assert sys_.status()["status"]["booted"]["composefs"]["verity"] == d1


def test_install_entry_boots_with_setup_root(
    tmp_path: Path, refs: dict[str, str], can_mount: None
) -> None:
    """The command line install wrote, and a multi-digest one, mount the deployment."""
    sys_ = install(tmp_path / "s", refs["v1"], "--karg-style", "digest")
    d1 = digest(refs["v1"])
    image = tmp_path / "root.ext4"
    subprocess.run(
        ["mkfs.ext4", "-q", "-F", "-d", str(sys_.root), str(image), "256M"],
        check=True,
        capture_output=True,
    )
    sr = Sysroot(image, {"v1": d1}, HashAlg.SHA512)
    [options] = _options(sys_)
    after = 'cat "$M/usr/share/version"'
    for cmdline in (
        " ".join(options),
        # Two digests, as composefs-rs seals them: the one the repository has is mounted.
        f"composefs.digest=v1-sha256-12:{OTHER256} {_digest_karg(d1)} rw",
        # composefs.digest= is tried first, but the repository has the composefs= one.
        f"composefs.digest=?v1-sha512-12:{'ab' * 64} composefs=?{d1}",
    ):
        b = boot(sr, tmp_path, cmdline, after=after)
        assert (b.rc, b.stderr, b.stdout) == (0, "", "1" * 40), cmdline
        assert b.mounts[str(tmp_path / "mnt")]["source"] == f"composefs:{d1}"


def _uki_image(path: Path, version: str, cmdline: str) -> str:
    uki = make_pe(
        [
            (b".osrel", f'NAME="UKI OS"\nVERSION_ID={version}\n'.encode()),
            (b".cmdline", cmdline.encode()),
            (b".linux", b"KERNEL" + version.encode() * 1000),
            (b".initrd", b"INITRD" + version.encode() * 500),
        ]
    )
    build_layout(path, [os_entries(version, kargs=None, uki=uki)])
    return f"oci:{path}:latest"


def test_uki_with_several_digests(tmp_path: Path) -> None:
    # The UKI does not change the digest (/boot is emptied in the boot image).
    d1 = digest(os_image(tmp_path / "p1", "1", kargs=None))
    d2 = digest(os_image(tmp_path / "p2", "2", kargs=None))
    u1 = _uki_image(
        tmp_path / "u1",
        "1",
        f"composefs.digest=v1-sha256-12:{OTHER256} composefs.digest=?v1-sha512-12:{d1} rw",
    )
    u2 = _uki_image(
        tmp_path / "u2", "2", f"composefs=?{d2} composefs.digest=?v1-sha256-12:{OTHER256}"
    )
    assert digest(u1) == d1
    refused = cfsboot_install(tmp_path / "r", u1, "--insecure", "--karg-style", "digest")
    assert one_line_error(refused) == (
        "cfsboot: --karg-style digest: a UKI's sealed command line spells its composefs karg"
        " (build it with cfsboot container ukify --karg-style)"
    )
    sys_ = install(tmp_path / "s", u1)
    [e] = sys_.entries()
    assert e.efi == f"/EFI/Linux/bootc/bootc_composefs-{d1}.efi" and not e.options
    st = sys_.status()["status"]
    assert st["booted"]["composefs"]["bootType"] == "Uki"
    assert st["booted"]["composefs"]["missingVerityAllowed"] is True

    sys_.cfs("switch", u2, "-q")
    sys_.cfs("finalize-staged")
    assert [e.efi for e in sys_.entries()] == [
        f"/EFI/Linux/bootc/bootc_composefs-{d2}.efi",
        f"/EFI/Linux/bootc/bootc_composefs-{d1}.efi",
    ]
    out = sys_.cfs("fsck", "--json", check=False)
    doc = json.loads(out.stdout)
    assert (out.returncode, [p for s in doc["sections"] for p in s["problems"]]) == (0, [])

    # None of the sealed digests is the image's: refused, nothing staged.
    bad = _uki_image(
        tmp_path / "bad",
        "3",
        f"composefs.digest=v1-sha256-12:{OTHER256} composefs=?{'ab' * 64}",
    )
    out = sys_.cfs("switch", bad, "-q", check=False)
    assert "the UKI has the wrong composefs= digest (is " + OTHER256 + ", " + "ab" * 64 in (
        one_line_error(out)
    )
    assert not (sys_.esp / "loader/entries.staged").exists()


def cfsboot_install(tmp: Path, ref: str, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp / "root").mkdir(parents=True)
    (tmp / "esp").mkdir()
    return cfsboot(
        "install", "to-filesystem", ref, tmp / "root", "--esp", tmp / "esp", *extra, check=False
    )
