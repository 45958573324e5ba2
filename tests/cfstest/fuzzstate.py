"""Fuzz targets for what cfsboot reads back at run time: EFI variables and its state files.

`efivars`: the fuzzed bytes, cut at each `|` into up to four values, are the efivarfs
files LoaderEntryOneShot, LoaderEntryDefault, LoaderEntryLastBooted and
LoaderBootCountPath (raw: the 4 attribute bytes, then what should be UTF-16LE, so odd
lengths, lone surrogates, NULs and globs with many `*` or an unclosed `[` all come
through), the same bytes as loader.conf's `default` too, read against a small menu of
three Type #1 entries (one counted) and a Type #2 UKI: what status shows as nextBoot
(next_boot and its warning, the live and the staged menu), what fsck notes as an
unmatched variable (unmatched) and LoaderBootCountPath (boot_count_path).

`state-files`: the fuzzed bytes are each file cfsboot wrote and reads back: the cached
update of `upgrade --check`, the health-check results of this boot, the boot-assessment
record of a deployment, the staged marker in the run directory, and (as a file name)
a pin; then the reader status, fsck and upgrade use. Each reader documents a bad file
as ignored (with a warning) or, for the marker, a one-line DocumentError.
"""

from __future__ import annotations

import os
from pathlib import Path

from cfsboot.boot import loadervars
from cfsboot.boot.bootloader import SystemdBoot
from cfsboot.boot.esp import DirEsp
from cfsboot.deploy import assessrecord, health, pins, updatecache
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import CfsbootError
from cfsboot.linux import efivars
from cfstest.fuzzing import Target

DIGEST = "0" * 62 + "ab"
OTHER = "1" * 64
ATTRS = b"\x07\x00\x00\x00"  # non-volatile, boot service and runtime access
VARS = (
    efivars.LOADER_ENTRY_ONESHOT,
    efivars.LOADER_ENTRY_DEFAULT,
    efivars.LOADER_ENTRY_LAST_BOOTED,
    efivars.LOADER_BOOT_COUNT_PATH,
)
_ENTRY = "title {t}\nversion 1\nlinux /vmlinuz\ninitrd /initrd.img\noptions composefs={d}\n"


def _menu(esp: Path) -> SystemdBoot:
    entries = esp / "loader" / "entries"
    entries.mkdir(parents=True, exist_ok=True)
    (entries / "bootc_debian-13-2.conf").write_text(_ENTRY.format(t="Debian A", d=DIGEST))
    (entries / "bootc_debian-13-1+2-1.conf").write_text(_ENTRY.format(t="Debian B", d=OTHER))
    (entries / "arch.conf").write_text("title Arch\nlinux /arch/vmlinuz\n")
    (esp / "EFI" / "Linux").mkdir(parents=True, exist_ok=True)
    (esp / "EFI" / "Linux" / "uki-6.1+3.efi").write_bytes(b"MZ")
    return SystemdBoot(DirEsp(esp))


def _efivars(data: bytes, tmp: Path) -> None:
    vardir = tmp / "efivars"
    vardir.mkdir(exist_ok=True)
    for name, value in zip(VARS, data.split(b"|"), strict=False):
        (vardir / f"{name}-{efivars.LOADER_GUID}").write_bytes(value)
    esp = tmp / "esp"
    bl = _menu(esp)
    (esp / "loader" / "loader.conf").write_bytes(b"timeout 3\ndefault " + data[4:] + b"\n")
    lv = loadervars.read_loader_vars(vardir)
    for staged in (False, True):
        nb = loadervars.next_boot(bl, lv, staged=staged)
        line = nb.warning()
        assert line is None or line.isprintable(), line  # one line of the log
        nb.chosen.clear, nb.chosen.deployment  # noqa: B018 (status prints both)
        loadervars.unmatched(bl, lv, staged=staged)
    efivars.boot_count_path(vardir)


def _utf16(*values: str) -> bytes:
    return b"|".join(ATTRS + v.encode("utf-16-le") + b"\0\0" for v in values)


_EFIVARS_SEEDS = (
    _utf16("bootc_debian-13-1.conf", "@saved", "arch.conf", "\\loader\\entries\\a+2-1.conf"),
    _utf16("", "bootc_*", "uki-6.1.efi"),
    _utf16("auto-windows", "*[a-c]?.conf", "x"),
    _utf16("*" * 40 + "x", "[" + "a" * 30, "\\"),
    ATTRS + b"\x00\xd8a\x00" + b"|" + ATTRS + b"b",  # a lone surrogate; an odd length
)


def _state_files(data: bytes, tmp: Path) -> None:
    root = tmp / "root"
    run = tmp / "run"
    state = root / "state" / "cfsboot"
    (state / "pinned").mkdir(parents=True, exist_ok=True)
    (state / "cached-update.json").write_bytes(data)
    name = os.fsdecode(data.replace(b"/", b"").replace(b"\0", b"")[:255])
    if name not in ("", ".", ".."):
        try:
            (state / "pinned" / name).write_bytes(b"")
        except OSError:  # a name the filesystem refuses (too long in UTF-8, ...)
            pass
    (state / "pinned" / DIGEST).write_bytes(b"")
    sysroot = Sysroot(root, run_dir=run)
    record = assessrecord.record_path(sysroot, DIGEST)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_bytes(data)
    sysroot.marker_path.parent.mkdir(parents=True, exist_ok=True)
    sysroot.marker_path.write_bytes(data)
    results = run / "cfsboot" / "health-checks.json"
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_bytes(data)

    assert DIGEST in pins.pinned(sysroot)
    updatecache.read_cached_update(sysroot)
    doc = assessrecord.read_record(sysroot, DIGEST) or {}
    assert all(line.isprintable() for line in doc.get("failed", [])), doc
    for line in health.read_results(results):
        assert line.isprintable(), line  # one line of the log and the record
    sysroot.staged()
    Sysroot(root, run_dir=run, read_once=True).staged()


_STATE_SEEDS = (
    b'{"deployment": "' + DIGEST.encode() + b'", "image": {"image": {"image": "quay.io/a/b:1",'
    b' "transport": "registry"}, "version": "1", "timestamp": null, "imageDigest": "sha256:'
    + b"2" * 64
    + b'"}}',
    b'[{"name": "10-disk", "status": 1, "seconds": 0.5, "last_line": "full"},'
    b' {"name": "20-net", "status": null, "seconds": 30.0}]',
    b'{"depl_id": "' + DIGEST.encode() + b'", "finalization_locked": true}',
    b'{"deployment": "' + DIGEST.encode() + b'", "failed": ["10-disk"], "boot": 3}',
    DIGEST.encode(),
)


def state_targets() -> list[Target]:
    return [
        Target(
            "efivars", _efivars, (CfsbootError,), _EFIVARS_SEEDS, (b"*", b"[", b"\\", b"@saved")
        ),
        Target("state-files", _state_files, (CfsbootError,), _STATE_SEEDS, (b"{", b"[", b'"')),
    ]
