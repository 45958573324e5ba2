"""How setup-root meets kernels older than the host's: fallbacks and one-line refusals.

The syscalls are faked (the calls are recorded; chosen ones fail with the errno
an older kernel gives), so these run anywhere without root.
"""

from __future__ import annotations

import errno
import os

import pytest

from setuproot import syscalls
from setuproot.config import Config
from setuproot.contract import ComposefsKarg, HashAlg
from setuproot.mount import Executor, ExitCode, SetupError
from setuproot.plan import Overlay, make_plan

H = "ab" * 32
KARG = ComposefsKarg(H, HashAlg.SHA256, False)
ROOT = Overlay(
    "root",
    f"composefs:{H}",
    lowers=("/run/cfsboot/erofs",),
    datas=("/sysroot/composefs/objects",),
    composefs=True,
    verity=True,
    readonly=True,
)


class FakeKernel:
    """Records fsopen/fsconfig/fsmount calls; `refuse` maps a key to the errno it fails with."""

    def __init__(self, refuse: dict[str, int] | None = None, fsopen_errno: int = 0) -> None:
        self.refuse = refuse or {}
        self.fsopen_errno = fsopen_errno
        self.calls: list[tuple[object, ...]] = []
        self.opened = 0

    def install(self, mp: pytest.MonkeyPatch) -> None:
        mp.setattr(syscalls, "fsopen", self.fsopen)
        mp.setattr(syscalls, "fsconfig", self.fsconfig)
        mp.setattr(
            syscalls, "fsconfig_create", lambda fs, path=None: self.calls.append(("create",))
        )
        mp.setattr(syscalls, "fsmount", lambda fs, attrs=0: self._fd(("fsmount", attrs)))

    def _fd(self, call: tuple[object, ...]) -> int:
        self.calls.append(call)
        return os.open(os.devnull, os.O_RDONLY)  # a real fd: setup-root closes it

    def fsopen(self, fstype: str) -> int:
        if self.fsopen_errno:
            raise OSError(self.fsopen_errno, os.strerror(self.fsopen_errno), fstype)
        self.opened += 1
        return self._fd(("fsopen", fstype))

    def fsconfig(self, fs: int, key: str, value: str | None = None) -> None:
        if key in self.refuse:
            code = self.refuse[key]
            raise OSError(code, f"fsconfig {key}={value}: {os.strerror(code)}", value)
        self.calls.append((key, value))


def _executor() -> Executor:
    return Executor(make_plan("/sysroot", KARG, Config()))


def test_new_kernel_uses_lowerdir_plus(monkeypatch: pytest.MonkeyPatch) -> None:
    k = FakeKernel()
    k.install(monkeypatch)
    os.close(_executor().mount_overlay(ROOT))
    assert k.calls == [
        ("fsopen", "overlay"),
        ("source", f"composefs:{H}"),
        ("metacopy", "on"),
        ("redirect_dir", "on"),
        ("verity", "require"),
        ("lowerdir+", "/run/cfsboot/erofs"),
        ("datadir+", "/sysroot/composefs/objects"),
        ("create",),
        ("fsmount", syscalls.MOUNT_ATTR_RDONLY),
    ]


def test_no_lowerdir_plus_falls_back_to_the_classic_string(monkeypatch: pytest.MonkeyPatch) -> None:
    k = FakeKernel(refuse={"lowerdir+": errno.EINVAL})  # Linux < 6.7
    k.install(monkeypatch)
    os.close(_executor().mount_overlay(ROOT))
    assert k.opened == 2  # a fresh context: the failed one may be half-configured
    assert k.calls[-3:] == [
        ("lowerdir", "/run/cfsboot/erofs::/sysroot/composefs/objects"),
        ("create",),
        ("fsmount", syscalls.MOUNT_ATTR_RDONLY),
    ]


@pytest.mark.parametrize(
    ("kernel", "message"),
    [
        (
            FakeKernel(fsopen_errno=errno.ENOSYS),
            "the kernel has no new mount API (fsopen); Linux >= 6.6 is needed",
        ),
        (
            FakeKernel(fsopen_errno=errno.ENODEV),
            "the kernel has no overlay filesystem (module missing from the initramfs?)",
        ),
        (
            FakeKernel(refuse={"verity": errno.EINVAL}),
            "the kernel's overlayfs cannot enforce fs-verity (verity=require needs Linux >= 6.6"
            " with fs-verity): fsconfig verity=require: Invalid argument",
        ),
    ],
)
def test_missing_kernel_features_are_one_line(
    monkeypatch: pytest.MonkeyPatch, kernel: FakeKernel, message: str
) -> None:
    kernel.install(monkeypatch)
    with pytest.raises(SetupError) as e:
        _executor().mount_overlay(ROOT)
    assert (e.value.code, str(e.value)) == (ExitCode.KERNEL, message)


def test_other_layer_errors_are_not_mistaken_for_an_old_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    k = FakeKernel(refuse={"datadir+": errno.ENOENT})
    k.install(monkeypatch)
    with pytest.raises(SetupError) as e:
        _executor().mount_overlay(ROOT)
    assert e.value.code == ExitCode.MOUNT_FAILED
    assert str(e.value) == (
        "cannot set up the root overlay (/sysroot/composefs/objects):"
        " fsconfig datadir+=/sysroot/composefs/objects: No such file or directory"
    )
    assert k.opened == 1
