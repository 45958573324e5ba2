"""The VM harness without QEMU: command lines, verdict protocol, failure messages."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

VM_TESTS = Path(__file__).resolve().parents[2] / "vm-tests"


def _load(name: str, path: Path) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(f"vmharness_{name}", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module  # dataclasses look their module up
    loader.exec_module(module)
    return module


qemu = _load("qemu", VM_TESTS / "qemu.py")
diskimage = _load("diskimage", VM_TESTS / "diskimage.py")
testos = _load("testos", VM_TESTS / "testos.py")
guest = _load("guest", VM_TESTS / "guest" / "cfsboot_check.py")


def test_qemu_argv_direct_kernel_boot() -> None:
    config = qemu.VmConfig(
        disks=(
            qemu.Disk(Path("/w/root.qcow2"), qemu.DiskFormat.QCOW2),
            qemu.Disk(Path("/w/data.raw")),
        ),
        kernel=Path("/w/vmlinuz"),
        initrd=Path("/w/initrd"),
        append="root=LABEL=x quiet",
    )
    assert qemu.qemu_argv(config, verdict_file=Path("/r/verdict.txt")) == [
        "qemu-system-x86_64",
        "-accel", "tcg",
        "-machine", "q35",
        "-cpu", "max",
        "-smp", "2",
        "-m", "2048",
        "-nodefaults",
        "-display", "none",
        "-monitor", "none",
        "-serial", "stdio",
        "-no-reboot",
        "-device", "virtio-rng-pci",
        "-drive", "file=/w/root.qcow2,format=qcow2,if=virtio,cache=unsafe,index=0",
        "-drive", "file=/w/data.raw,format=raw,if=virtio,cache=unsafe,index=1",
        "-device", "virtio-serial",
        "-chardev", "file,id=verdict,path=/r/verdict.txt",
        "-device", "virtserialport,chardev=verdict,name=cfsboot.verdict",
        "-kernel", "/w/vmlinuz",
        "-initrd", "/w/initrd",
        "-append", "root=LABEL=x quiet",
    ]  # fmt: skip


def test_qemu_argv_uefi_uses_pflash_and_a_vars_copy() -> None:
    config = qemu.VmConfig(
        disks=(qemu.Disk(Path("/w/disk.raw")),),
        mode=qemu.BootMode.UEFI,
        smp=1,
        memory_mib=1024,
        extra_args=("-nic", "user"),
    )
    argv = qemu.qemu_argv(config, verdict_file=Path("/r/v"), ovmf_vars=Path("/r/vars.fd"))
    assert argv[argv.index("-smp") + 1] == "1"
    assert argv[argv.index("-m") + 1] == "1024"
    assert "-kernel" not in argv
    assert argv[-6:] == [
        "-drive", "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
        "-drive", "if=pflash,format=raw,unit=1,file=/r/vars.fd",
        "-nic", "user",
    ]  # fmt: skip


def test_qemu_argv_refuses_incomplete_configs() -> None:
    with pytest.raises(ValueError, match="needs a kernel"):
        qemu.qemu_argv(qemu.VmConfig(disks=()), verdict_file=Path("/v"))
    uefi = qemu.VmConfig(disks=(), mode=qemu.BootMode.UEFI)
    with pytest.raises(ValueError, match="OVMF variables"):
        qemu.qemu_argv(uefi, verdict_file=Path("/v"))


def test_overlay_argv() -> None:
    assert qemu.overlay_argv(Path("/base.raw"), Path("/o.qcow2")) == [
        "qemu-img", "create", "-q", "-f", "qcow2", "-b", "/base.raw", "-F", "raw", "/o.qcow2",
    ]  # fmt: skip


def test_parse_verdicts() -> None:
    text = (
        "BEGIN smoke\n"
        "DATA smoke root_fstype ext4\n"
        "DATA smoke note two words\n"
        "DATA smoke empty\n"
        "PASS smoke\n"
        "BEGIN tamper\n"
        "FAIL tamper: exit code 1: read did not fail: got 4096 bytes\n"
        "FAIL bare:\n"
        "noise here\n"
        "\n"
        "DONE\n"
    )
    report = qemu.parse_verdicts(text)
    assert report.verdicts == (
        qemu.Verdict("smoke", True),
        qemu.Verdict("tamper", False, "exit code 1: read did not fail: got 4096 bytes"),
        qemu.Verdict("bare", False, ""),
    )
    assert report.data == {"smoke": {"root_fstype": "ext4", "note": "two words", "empty": ""}}
    assert report.begun == ("smoke", "tamper")
    assert report.done
    assert report.garbage == ("noise here",)
    assert report.verdict("smoke") == qemu.Verdict("smoke", True)
    assert report.verdict("absent") is None


def test_parse_verdicts_last_verdict_wins_and_empty_input() -> None:
    report = qemu.parse_verdicts("FAIL a: first\nPASS a\n")
    assert report.verdict("a") == qemu.Verdict("a", True)
    empty = qemu.parse_verdicts("")
    assert empty.verdicts == () and not empty.done


def _result(tmp_path: Path, exit_code: int | None, verdicts: str, log_lines: int = 80) -> Any:
    log = tmp_path / "serial.log"
    log.write_text("".join(f"line {i}\n" for i in range(log_lines)))
    return qemu.BootResult(
        exit_code=exit_code,
        report=qemu.parse_verdicts(verdicts),
        serial_log=log,
        results_dir=tmp_path,
        wall_seconds=12.0,
        markers={},
    )


def test_check_passed_accepts_all_pass(tmp_path: Path) -> None:
    qemu.check_passed(_result(tmp_path, 0, "PASS a\nPASS b\nDONE\n"), ["a", "b"])


def test_check_passed_failure_carries_last_50_log_lines(tmp_path: Path) -> None:
    result = _result(tmp_path, 0, "BEGIN a\nFAIL b: boom\n")
    with pytest.raises(qemu.VmError) as info:
        qemu.check_passed(result, ["a", "b"])
    message = str(info.value)
    first = message.splitlines()[0]
    assert first == "no verdict for a (it began but never finished); FAIL b: boom"
    assert f"serial log: {tmp_path / 'serial.log'}" in message
    tail = message.split("--- last 50 lines ---\n", 1)[1].splitlines()
    assert tail == [f"line {i}" for i in range(30, 80)]


def test_check_passed_timeout_and_exit_status(tmp_path: Path) -> None:
    with pytest.raises(qemu.VmError, match="did not power off within the timeout"):
        qemu.check_passed(_result(tmp_path, None, "PASS a\n"), ["a"])
    (tmp_path / "qemu.stderr").write_text("warning\nqemu: could not open disk\n")
    with pytest.raises(qemu.VmError, match="QEMU exited with status 1 qemu: could not open disk"):
        qemu.check_passed(_result(tmp_path, 1, "PASS a\n"), ["a"])


def test_guest_runner_speaks_the_host_protocol(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verdict lines written by the guest runner parse into the expected report."""
    scenarios = tmp_path / "scenarios"
    scenarios.mkdir()
    (scenarios / "good").write_text(
        "#!/bin/sh\necho 'DATA answer 42'\necho 'DATA none '\necho fine\n"
    )
    (scenarios / "bad").write_text("#!/bin/sh\necho 'first'\necho 'it broke' >&2\nexit 3\n")
    for script in scenarios.iterdir():
        script.chmod(0o755)
    monkeypatch.setattr(guest, "SCENARIOS", str(scenarios))
    port = io.StringIO()
    for name in ["good", "bad", "missing", "../good"]:
        guest.run_scenario(port, name)
    report = qemu.parse_verdicts(port.getvalue())
    assert report.verdicts == (
        qemu.Verdict("good", True),
        qemu.Verdict("bad", False, "exit code 3: it broke"),
        qemu.Verdict("missing", False, f"no such scenario {scenarios}/missing"),
        qemu.Verdict("../good", False, f"no such scenario {scenarios}/../good"),
    )
    assert report.data == {"good": {"answer": "42", "none": ""}}
    assert report.garbage == ()


def test_sfdisk_script_and_mkfs_argv() -> None:
    parts = [
        diskimage.Partition(Path("esp"), diskimage.ESP_TYPE, "esp", 256),
        diskimage.Partition(Path("root"), diskimage.ROOT_X86_64_TYPE, "root", 2048),
    ]
    assert diskimage.sfdisk_script(parts) == (
        "label: gpt\n"
        'start=1MiB, size=256MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"\n'
        'start=257MiB, size=2048MiB, type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, name="root"\n'
    )
    assert diskimage.mkfs_ext4_argv("/m", Path("/o.img"), 2048, "cfsroot") == [
        "mkfs.ext4", "-q", "-F", "-O", "verity", "-L", "cfsroot", "-E", "root_owner=0:0",
        "-d", "/m", "/o.img", "2048M",
    ]  # fmt: skip


def test_check_unit_files_follow_the_target() -> None:
    files, links = diskimage.check_unit_files("basic.target")
    unit = files["/usr/lib/systemd/system/cfsboot-check.service"].content
    assert isinstance(unit, bytes)
    assert b"After=basic.target" in unit and b"multi-user" not in unit
    assert links == {
        "/etc/systemd/system/basic.target.wants/cfsboot-check.service": (
            "/usr/lib/systemd/system/cfsboot-check.service"
        )
    }
    assert files["/usr/lib/cfsboot-check/cfsboot-check"].mode == 0o755
    assert "/usr/lib/cfsboot-check/scenarios/smoke" in files


def test_testos_argv_and_key() -> None:
    argv = testos.mmdebstrap_argv(Path("/c/t"), "http://m/debian")
    assert argv[:3] == ["mmdebstrap", "--variant=minbase", "--mode=root"]
    assert '--aptopt=APT::Default-Release "trixie"' in argv
    include = next(a for a in argv if a.startswith("--include="))
    assert "composefs/sid" in include and "linux-image-amd64" in include
    assert argv[-4:] == [
        "trixie", "/c/t", "deb http://m/debian trixie main", "deb http://m/debian sid main",
    ]  # fmt: skip
    key = testos.cache_key()
    assert len(key) == 16 and key == testos.cache_key()
    assert testos.dracut_argv("6.12", "/o")[-3:] == ["--kver", "6.12", "/o"]


FAKE_QEMU = """#!/bin/sh
# Stands in for qemu-system-x86_64: console on stdout, verdicts to the chardev file.
for a; do case $a in file,id=verdict,path=*) v=${a#file,id=verdict,path=};; esac; done
echo "SeaBIOS"
case $FAKE_MODE in
ok) printf 'BEGIN t\\nPASS t\\nDONE\\n' > "$v"; echo "cfsboot-check: DONE"; exit 0;;
emergency) echo "You are in emergency mode. After logging in..."; exec sleep 30;;
hang) exec sleep 30;;
esac
"""


@pytest.fixture
def fake_qemu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    script = tmp_path / "fake-qemu"
    script.write_text(FAKE_QEMU)
    script.chmod(0o755)
    monkeypatch.setattr(qemu, "QEMU", str(script))
    return qemu.VmConfig(disks=(), kernel=Path("/k"), timeout=10)


def test_boot_collects_console_markers_and_verdicts(
    fake_qemu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "ok")
    result = qemu.boot(fake_qemu, tmp_path / "r", watch=["cfsboot-check: DONE", "never"])
    qemu.check_passed(result, ["t"])
    assert result.exit_code == 0 and result.stopped_on is None
    assert list(result.markers) == ["cfsboot-check: DONE"]
    lines = result.serial_log.read_text().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == ["SeaBIOS", "cfsboot-check: DONE"]
    assert (tmp_path / "r" / "qemu.argv").read_text().splitlines()[0] == qemu.QEMU


def test_boot_stops_at_emergency_mode(
    fake_qemu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "emergency")
    result = qemu.boot(fake_qemu, tmp_path / "r")
    assert result.stopped_on == "You are in emergency mode"
    assert result.wall_seconds < 10
    with pytest.raises(qemu.VmError, match="console showed 'You are in emergency mode'"):
        qemu.check_passed(result, ["t"])


def test_boot_kills_a_guest_at_the_timeout(
    fake_qemu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MODE", "hang")
    config = qemu.VmConfig(disks=(), kernel=Path("/k"), timeout=0.5)
    result = qemu.boot(config, tmp_path / "r")
    assert result.exit_code is None
    with pytest.raises(qemu.VmError, match=r"did not power off within the timeout \(\d+ s\)"):
        qemu.check_passed(result, ["t"])


def test_only_an_early_kernel_panic_is_booted_again(tmp_path: Path) -> None:
    panic = "[   9.00] [    2.037287] Kernel panic - not syncing: Fatal exception in interrupt\n"
    r = _result(tmp_path, None, "")
    r.serial_log.write_text("[   1.00] booting\n" + panic)
    assert qemu._early_panic(r)
    late = "[  90.00] [   61.5] Kernel panic - not syncing: Attempted to kill init!\n"
    r.serial_log.write_text(late)
    assert not qemu._early_panic(r)
    # Once a scenario began, the guest may have changed its disk: never again.
    r2 = _result(tmp_path, None, "BEGIN a\n")
    r2.serial_log.write_text(panic)
    assert not qemu._early_panic(r2)
    r.serial_log.write_text("[   1.00] all fine\n")
    assert not qemu._early_panic(r)
