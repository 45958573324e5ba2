"""Soft reboot: when the next deployment can be soft-rebooted into, and what the command does."""

from __future__ import annotations

from pathlib import Path

import pytest

from cfsboot.composefs.tree import Inode
from cfsboot.deploy import softreboot, status
from cfsboot.deploy.softreboot import BootSpec, SoftRebootMode, why_not, without_composefs
from cfsboot.deploy.sysroot import Sysroot
from cfsboot.errors import CfsbootError
from cfstest.osimages import os_image
from cfstest.sysroots import DirSysroot, make_sysroot

K1 = BootSpec("object:11", ("rw", "console=ttyS0"))


def test_without_composefs_drops_both_spellings_only() -> None:
    args = ["rw", "composefs=?" + "ab" * 32, "composefs.digest=v1-sha512-12:" + "cd" * 64, "quiet"]
    assert without_composefs(args) == ("rw", "quiet")
    assert without_composefs(["composefsx=1"]) == ("composefsx=1",)


@pytest.mark.parametrize(
    ("nxt", "reason"),
    [
        (K1, None),
        (
            BootSpec("object:22", K1.kargs),
            "it boots another kernel (a soft reboot keeps the running one)",
        ),
        (BootSpec(None, K1.kargs), "the next deployment has no kernel to compare"),
        (
            BootSpec("object:11", ("rw", "console=ttyS1", "quiet")),
            "its kernel arguments differ (added console=ttyS1 quiet; removed console=ttyS0)",
        ),
        (BootSpec("object:11", ("console=ttyS0", "rw")), "its kernel arguments differ (in order)"),
    ],
)
def test_the_decision(nxt: BootSpec, reason: str | None) -> None:
    assert why_not(K1, nxt) == reason


def test_an_unknown_booted_kernel_is_no() -> None:
    assert why_not(BootSpec(None, ()), K1) == "the booted deployment's kernel is not known"


def _policy_tree(config: bytes | None, policy: bytes) -> Inode:
    def reg(data: bytes) -> Inode:
        return Inode(0o100644, size=len(data), content=data)

    def d(children: dict[bytes, Inode]) -> Inode:
        node = Inode.directory()
        node.children = children
        return node

    selinux = {b"default": d({b"policy": d({b"policy.33": reg(policy)})})}
    if config is not None:
        selinux[b"config"] = reg(config)
    return d({b"etc": d({b"selinux": d(selinux)})})


def test_selinux_policy_identity() -> None:
    repo = None  # inline files only: the repository is never read
    cfg = b"SELINUX=enforcing\nSELINUXTYPE=default\n"
    a = softreboot.selinux_policy(repo, _policy_tree(cfg, b"policy A"))  # type: ignore[arg-type]
    b = softreboot.selinux_policy(repo, _policy_tree(cfg, b"policy B"))  # type: ignore[arg-type]
    a2 = softreboot.selinux_policy(repo, _policy_tree(cfg, b"policy A"))  # type: ignore[arg-type]
    assert a is not None and a != b and a == a2
    assert softreboot.selinux_policy(repo, _policy_tree(None, b"x")) is None  # type: ignore[arg-type]


# -- on a physical root: v1 and v2 share the kernel (not the initramfs), v3 has another ----------


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DirSysroot:
    v1 = os_image(tmp_path / "v1", "1", kernel="k1")
    v2 = os_image(tmp_path / "v2", "2", kernel="k1", initramfs="i2")
    v3 = os_image(tmp_path / "v3", "3", kernel="k2")
    ds = make_sysroot(tmp_path / "sys", [v1, v2], staged=v3)
    booted = ds.digests[1]
    # As on the running system: v2 booted (from the / mount), systemd 257 (trixie's).
    monkeypatch.setattr(Sysroot, "booted", lambda self: booted)
    monkeypatch.setattr(softreboot, "systemd_version", lambda: 257)
    monkeypatch.setattr(softreboot, "same_mount_namespace_as_pid1", lambda: True)
    return ds


def _live(ds: DirSysroot) -> Sysroot:
    sysroot = ds.sysroot()
    sysroot.live = True
    return sysroot


def test_same_kernel_other_initramfs_is_capable(system: DirSysroot) -> None:
    sysroot, bl = _live(system), system.bootloader()
    v1_entry, v3_entry = bl.menu()[1], bl.menu(staged=True)[0]
    assert v1_entry.deployment == system.digests[0]
    assert softreboot.capable(sysroot, bl, v1_entry)
    assert softreboot.blocker(sysroot, bl, v1_entry) is None
    assert not softreboot.capable(sysroot, bl, v3_entry)
    assert softreboot.blocker(sysroot, bl, v3_entry) == (
        "it boots another kernel (a soft reboot keeps the running one)"
    )
    quiet = v1_entry.with_options([*v1_entry.options, "quiet"])
    assert softreboot.blocker(sysroot, bl, quiet) == "its kernel arguments differ (added quiet)"
    booted_entry = bl.menu()[0]
    assert not softreboot.capable(sysroot, bl, booted_entry)  # it is running already


def test_blocker_systemd_and_offline(system: DirSysroot, monkeypatch: pytest.MonkeyPatch) -> None:
    bl = system.bootloader()
    v1_entry = bl.menu()[1]
    offline = system.sysroot()
    assert softreboot.blocker(offline, bl, v1_entry) == (
        f"{system.root} is not the physical root of the running cfsboot system"
    )
    monkeypatch.setattr(softreboot, "systemd_version", lambda: 252)
    assert softreboot.blocker(_live(system), bl, v1_entry) == (
        "soft reboot into /run/nextroot needs systemd >= 254 (systemd 252)"
    )
    monkeypatch.setattr(softreboot, "same_mount_namespace_as_pid1", lambda: False)
    assert softreboot.blocker(_live(system), bl, v1_entry) == (
        "cfsboot runs in a mount namespace of its own: systemd would not see /run/nextroot"
    )


def test_status_field(system: DirSysroot, tmp_path: Path) -> None:
    sysroot, bl = _live(system), system.bootloader()
    doc = status.host_status(sysroot, bl, usr=tmp_path / "no-usr")["status"]
    assert doc["staged"] is not None and doc["rollback"] is not None and doc["booted"] is not None
    assert doc["staged"]["softRebootCapable"] is False  # kernel k2
    assert doc["rollback"]["softRebootCapable"] is True  # kernel k1, as booted
    assert doc["booted"]["softRebootCapable"] is False
    offline = status.host_status(system.sysroot(), bl, usr=tmp_path / "no-usr")["status"]
    assert offline["rollback"] is not None and offline["rollback"]["softRebootCapable"] is False


class _Calls:
    def __init__(self) -> None:
        self.argv: list[list[str]] = []
        self.prepared: list[str] = []
        self.said: list[str] = []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> _Calls:
    c = _Calls()
    monkeypatch.setattr(softreboot, "run", lambda argv, **kw: c.argv.append(list(argv)))
    # The fallback detaches a /run/nextroot first: here there is none (EINVAL/ENOENT).
    import setuproot.nextroot

    monkeypatch.setattr(setuproot.nextroot, "NEXTROOT", "/nonexistent/cfsboot-test-nextroot")
    monkeypatch.setattr(
        softreboot,
        "prepare",
        lambda sysroot, entry, target=None, tree=None: c.prepared.append(entry.deployment),
    )
    return c


def test_required_fails_with_nothing_changed(system: DirSysroot, calls: _Calls) -> None:
    sysroot, bl = _live(system), system.bootloader()
    v3 = system.digests[2]
    with pytest.raises(CfsbootError) as e:
        softreboot.soft_reboot(
            sysroot, bl, SoftRebootMode.REQUIRED, staged=True, say=calls.said.append
        )
    assert str(e.value) == (
        f"cannot soft-reboot into deployment {v3[:12]}…: it boots another kernel (a soft"
        " reboot keeps the running one); it stays staged: reboot to boot it (--apply), or use"
        " --soft-reboot=auto"
    )
    assert (calls.argv, calls.prepared) == ([], [])
    assert sysroot.staged() is not None and bl.menu()[0].deployment == system.digests[1]


def test_auto_falls_back_to_a_reboot(system: DirSysroot, calls: _Calls) -> None:
    sysroot, bl = _live(system), system.bootloader()
    softreboot.soft_reboot(sysroot, bl, SoftRebootMode.AUTO, staged=True, say=calls.said.append)
    assert calls.argv == [["systemctl", "reboot"]]
    assert calls.prepared == []
    v3 = system.digests[2]
    assert calls.said == [
        f"no soft reboot into deployment {v3[:12]}…: it boots another kernel (a soft reboot"
        " keeps the running one); rebooting"
    ]
    assert sysroot.staged() is not None  # finalized at the shutdown, as without soft reboot


def test_rollback_soft_reboot(system: DirSysroot, calls: _Calls) -> None:
    """Rolled back to v1 (same kernel): the live menu's default is prepared, then soft-reboot."""
    from cfsboot.deploy.stage import rollback

    sysroot, bl = _live(system), system.bootloader()
    rollback(sysroot, bl)
    v1 = system.digests[0]
    softreboot.soft_reboot(
        sysroot, bl, SoftRebootMode.REQUIRED, staged=False, say=calls.said.append
    )
    assert calls.prepared == [v1]
    assert calls.argv == [["systemctl", "soft-reboot"]]
    assert calls.said[0].startswith(f"soft-rebooting into deployment {v1[:12]}… (")


def test_staged_is_finalized_before_the_soft_reboot(
    tmp_path: Path, calls: _Calls, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = os_image(tmp_path / "v1", "1", kernel="k1")
    v2 = os_image(tmp_path / "v2", "2", kernel="k1", initramfs="i2")
    ds = make_sysroot(tmp_path / "sys", [v1], staged=v2)
    booted = ds.digests[0]
    monkeypatch.setattr(Sysroot, "booted", lambda self: booted)
    monkeypatch.setattr(softreboot, "systemd_version", lambda: 257)
    monkeypatch.setattr(softreboot, "same_mount_namespace_as_pid1", lambda: True)
    sysroot, bl = _live(ds), ds.bootloader()
    softreboot.soft_reboot(sysroot, bl, SoftRebootMode.REQUIRED, staged=True, say=calls.said.append)
    v2d = ds.digests[1]
    assert [m.deployment for m in bl.menu()] == [v2d, booted]  # the menu was exchanged
    assert sysroot.staged() is None and not bl.has_staged()
    assert calls.prepared == [v2d]
    assert calls.argv == [["systemctl", "soft-reboot"]]


def test_soft_rebooted_reads_the_kernel_command_line(tmp_path: Path) -> None:
    from cfsboot.deploy.assessment import soft_rebooted

    a, b = "aa" * 64, "bb" * 64
    cmdline = tmp_path / "cmdline"
    cmdline.write_text(f"root=UUID=x rw composefs=?{a} quiet\n")
    assert not soft_rebooted(a, str(cmdline))
    assert soft_rebooted(b, str(cmdline))
    cmdline.write_text("root=/dev/sda1\n")
    assert not soft_rebooted(b, str(cmdline))  # not a composefs boot at all
