from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest

from cfsboot.boot.uki import UKIError, boot_digest, parse_uki, read_uki, uki_file_name
from cfstest.gates import missing_capability
from cfstest.pe import make_pe
from setuproot.contract import HashAlg

SHA512 = "c0" * 64
OSREL = 'NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 13 (trixie)"\nVERSION_ID="13"\n'
STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")


def uki_bytes(cmdline: str = f"rw composefs={SHA512} quiet") -> bytes:
    return make_pe(
        [
            (b".osrel", OSREL.encode()),
            (b".cmdline", cmdline.encode() + b"\0"),
            (b".uname", b"6.12.48+deb13-amd64\n"),
            (b".linux", b"KERNEL" * 100),
            (b".initrd", b"INITRD" * 50),
        ]
    )


def test_reads_sections_and_text() -> None:
    u = parse_uki(uki_bytes())
    assert [s.name for s in u.sections] == [".osrel", ".cmdline", ".uname", ".linux", ".initrd"]
    assert u.machine == 0x8664
    assert u.cmdline == f"rw composefs={SHA512} quiet"
    assert u.uname == "6.12.48+deb13-amd64"
    assert u.osrel == OSREL.strip()
    assert u.boot_label() == "Debian GNU/Linux 13 (trixie) 13"
    linux = u.section(".linux")
    assert linux is not None and (linux.size, linux.raw_size) == (600, 0x400)
    (k,) = u.composefs_kargs()
    assert (k.digest, k.algorithm, k.insecure) == (SHA512, HashAlg.SHA512, False)


def test_pe32_and_versioned_digest() -> None:
    data = make_pe(
        [
            (b".linux", b"K"),
            (b".cmdline", f"composefs.digest=?v1-sha256-12:{'ab' * 32}".encode()),
        ],
        opt_magic=0x10B,
        opt_size=224,
    )
    (k,) = parse_uki(data).composefs_kargs()
    assert (k.digest, k.algorithm, k.insecure) == (
        "ab" * 32,
        HashAlg.SHA256,
        True,
    )


def test_check_composefs_digest() -> None:
    u = parse_uki(uki_bytes(), name="x.efi")
    assert u.check_composefs(SHA512.upper()).digest == SHA512
    with pytest.raises(UKIError) as e:
        u.check_composefs("d1" * 64)
    assert str(e.value).startswith(
        f"x.efi: the UKI has the wrong composefs= digest (is {SHA512}, should be {'d1' * 64})"
    )
    with pytest.raises(UKIError, match="has no composefs= argument"):
        parse_uki(uki_bytes("rw quiet"), name="x.efi").check_composefs(SHA512)
    assert parse_uki(uki_bytes("rw")).composefs_kargs() == []
    with pytest.raises(UKIError, match="x.efi: invalid kernel argument composefs=12"):
        parse_uki(uki_bytes("composefs=12"), name="x.efi").composefs_kargs()


# composefs-rs's test digests (crates/composefs-boot/src/cmdline.rs).
RS_SHA256 = "8b7df143d91c716ecfa5fc1730022f6b421b05cedee8fd52b1fc65a96030ad52"
RS_SHA512 = (
    "6f06b5e82420abec546d6e6d3ddd612c50cfa9b707c129345b7ec16f456b92fe"
    "35df68999b042e1a6a70dfe75f2fed8cf9f67afd0bf08d2374678d75e2f65a02"
)


@pytest.mark.parametrize(
    ("cmdline", "expected", "insecure"),
    [
        # Two composefs.digest= entries, one per hash algorithm: either names the image.
        (f"rw composefs.digest=v1-sha256-12:{RS_SHA256} composefs.digest=v1-sha512-12:{RS_SHA512}",
         RS_SHA512, False),
        (f"rw composefs.digest=v1-sha256-12:{RS_SHA256} composefs.digest=v1-sha512-12:{RS_SHA512}",
         RS_SHA256, False),
        # bootc's composefs= plus composefs-rs's spelling of another digest.
        (f"composefs={RS_SHA512} composefs.digest=?v1-sha256-12:{RS_SHA256} quiet",
         RS_SHA512, False),
        (f"composefs={RS_SHA512} composefs.digest=?v1-sha256-12:{RS_SHA256} quiet",
         RS_SHA256, True),
        # The same digest twice: the first (as setup-root reads them) decides.
        (f"composefs={SHA512} composefs.digest=?v1-sha512-12:{SHA512}", SHA512, True),
    ],
)  # fmt: skip
def test_check_composefs_several_digests(cmdline: str, expected: str, insecure: bool) -> None:
    k = parse_uki(uki_bytes(cmdline), name="x.efi").check_composefs(expected.upper())
    assert (k.digest, k.insecure) == (expected, insecure)


def test_check_composefs_several_digests_none_matches() -> None:
    u = parse_uki(
        uki_bytes(f"composefs={SHA512} composefs={'d1' * 64} composefs={SHA512}"), name="x.efi"
    )
    with pytest.raises(UKIError) as e:
        u.check_composefs("e2" * 64)
    assert str(e.value) == (
        f"x.efi: the UKI has the wrong composefs= digest (is {SHA512}, {'d1' * 64}, should be"
        f" {'e2' * 64}); rebuild the UKI from this image (was the image changed after sealing?)"
    )


def test_boot_digest_hashes_linux_then_initrd(tmp_path: Path) -> None:
    p = tmp_path / "u.efi"
    p.write_bytes(uki_bytes())
    u = read_uki(p)
    assert boot_digest(p, u) == hashlib.sha256(b"KERNEL" * 100 + b"INITRD" * 50).hexdigest()
    assert uki_file_name(SHA512) == f"bootc_composefs-{SHA512}.efi"


def _corrupt(data: bytes, at: int, new: bytes) -> bytes:
    return data[:at] + new + data[at + len(new) :]


GOOD = uki_bytes()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"MZ", "file too short (2 bytes)"),
        (_corrupt(GOOD, 0, b"ZM"), "no MZ signature (not a PE/EFI binary)"),
        (_corrupt(GOOD, 0x80, b"PX"), "no PE signature at offset 0x80"),
        (_corrupt(GOOD, 0x3C, struct.pack("<I", 1 << 30)), "PE signature lies past the end"),
        (_corrupt(GOOD, 0x86, struct.pack("<H", 0)), "0 sections (expected 1 to 96)"),
        (_corrupt(GOOD, 0x86, struct.pack("<H", 97)), "97 sections (expected 1 to 96)"),
        (_corrupt(GOOD, 0x94, struct.pack("<H", 0)), "no optional header"),
        (_corrupt(GOOD, 0x98, struct.pack("<H", 0x107)), "unknown optional header magic 0x107"),
        (GOOD[:0x180], "section table lies past the end of the file"),
        (GOOD[:-0x300], "section .initrd lies past the end of the file"),
        (make_pe([(b".cmdline", b"x")]), "no .linux section (a plain EFI binary, not a UKI)"),
        (make_pe([(b".linux", b"K"), (b".osrel", b"\xff\xfe")]), "section .osrel is not UTF-8"),
    ],
)
def test_malformed_files_are_one_clear_error(data: bytes, reason: str) -> None:
    with pytest.raises(UKIError) as e:
        parse_uki(data, name="bad.efi")
    assert str(e.value).startswith(f"bad.efi: not a valid UKI: {reason}")


def test_addon_needs_no_kernel() -> None:
    u = parse_uki(make_pe([(b".cmdline", b"console=ttyS0")]), addon=True)
    assert u.cmdline == "console=ttyS0"


def test_first_profile_wins() -> None:
    data = make_pe(
        [(b".linux", b"K"), (b".cmdline", b"base"), (b".profile", b"ID=2"), (b".cmdline", b"p2")]
    )
    assert parse_uki(data).cmdline == "base"


def test_real_systemd_stub_parses_as_pe() -> None:
    if not STUB.exists():
        missing_capability(f"{STUB} not installed (apt-get install systemd-boot-efi)")
    u = parse_uki(STUB.read_bytes(), name=str(STUB), addon=True)
    assert any(s.name == ".text" for s in u.sections)
