"""The mount plan (`--dry-run`), the CLI's one-line errors, and the digest check."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from setuproot import mount
from setuproot.config import Config, EtcMount, VarMount
from setuproot.contract import ComposefsKarg, HashAlg
from setuproot.main import main
from setuproot.mount import Executor, ExitCode, SetupError
from setuproot.plan import Verify, lowerdir_string, make_plan
from setuproot.verity import NoVerity, VerityUnsupported

H = "ab" * 32
H512 = "cd" * 64
KARG = ComposefsKarg(H, HashAlg.SHA256, False)
S = f"/sysroot/state/deploy/{H}"
SS = f"/sysroot/sysroot/state/deploy/{H}"


def test_default_plan() -> None:
    plan = make_plan("/sysroot/", KARG, Config())
    assert plan.describe().splitlines() == [
        f"verify   /sysroot/composefs/images/{H} fs-verity sha256:{H}",
        f"require  {S}",
        f"mkdir    {S}/etc 0755",
        f"mkdir    {S}/etc/upper 0755",
        f"mkdir    {S}/etc/work 0700",
        f"require  {S}/var",
        "mkdir    /run/cfsboot 0700",
        "mkdir    /run/cfsboot/erofs 0700",
        "erofs    image on /run/cfsboot/erofs ro (file-backed, or on a loop device)",
        f"overlay  root: source=composefs:{H} metacopy=on redirect_dir=on verity=require"
        " lowerdir+=/run/cfsboot/erofs datadir+=/sysroot/composefs/objects ro",
        "umount   /run/cfsboot/erofs (detach)",
        "rmdir    /run/cfsboot/erofs",
        "clone    physical-root = /sysroot (recursive)",
        f"clone    var = {S}/var",
        "umount   /sysroot (detach)",
        "attach   root on /sysroot",
        "attach   physical-root on /sysroot/sysroot",
        f"overlay  etc: source=overlay lowerdir+=/sysroot/etc upperdir={SS}/etc/upper"
        f" workdir={SS}/etc/work rw",
        "attach   etc on /sysroot/etc",
        "attach   var on /sysroot/var",
        "rmdir    /run/cfsboot",
        "symlink  /run/systemd/volatile-root -> /dev/block/MAJ:MIN of /dev/gpt-auto-root"
        " (if it exists)",
    ]


def test_plan_for_a_next_root_elsewhere() -> None:
    """A soft reboot's /run/nextroot: the physical root stays; the new root goes to the target."""
    plan = make_plan("/sysroot", KARG, Config(), run_dir="/run/x", target="/run/nextroot/")
    n = "/run/nextroot"
    assert plan.describe().splitlines()[6:] == [
        "mkdir    /run/x 0700",
        "mkdir    /run/x/erofs 0700",
        "erofs    image on /run/x/erofs ro (file-backed, or on a loop device)",
        f"overlay  root: source=composefs:{H} metacopy=on redirect_dir=on verity=require"
        " lowerdir+=/run/x/erofs datadir+=/sysroot/composefs/objects ro",
        "umount   /run/x/erofs (detach)",
        "rmdir    /run/x/erofs",
        "clone    physical-root = /sysroot (recursive)",
        f"clone    var = {S}/var",
        f"attach   root on {n}",
        f"attach   physical-root on {n}/sysroot",
        f"overlay  etc: source=overlay lowerdir+={n}/etc upperdir={n}/sysroot/state/deploy/{H}"
        f"/etc/upper workdir={n}/sysroot/state/deploy/{H}/etc/work rw",
        f"attach   etc on {n}/etc",
        f"attach   var on {n}/var",
        "rmdir    /run/x",
    ]


def test_insecure_no_state_plan() -> None:
    karg = ComposefsKarg(H512, HashAlg.SHA512, True)
    plan = make_plan("/sr", karg, Config(etc=EtcMount.NONE, var=VarMount.NONE), run_dir="/r")
    text = plan.describe()
    assert (
        text.splitlines()[0]
        == f"open     /sr/composefs/images/{H512} (composefs=?: fs-verity not required)"
    )
    assert "verity=require" not in text and "state/deploy" not in text
    assert text.splitlines()[-4:] == [
        "umount   /sr (detach)",
        "attach   root on /sr",
        "attach   physical-root on /sr/sysroot",
        "rmdir    /r",
    ]


def test_transient_plans() -> None:
    plan = make_plan("/s", KARG, Config(root_transient=True, etc=EtcMount.TRANSIENT), run_dir="/r")
    text = plan.describe()
    assert "tmpfs    on /r/root-transient mode=0755" in text
    assert (
        f"overlay  root: source=transient:composefs:{H} metacopy=on redirect_dir=on"
        " verity=require lowerdir+=/r/erofs datadir+=/s/composefs/objects"
        " upperdir=/r/root-transient/upper workdir=/r/root-transient/work rw"
    ) in text
    assert (
        "overlay  etc: source=transient lowerdir+=/s/etc upperdir=/r/etc-transient/upper"
        " workdir=/r/etc-transient/work rw"
    ) in text
    assert "mkdir    /s/state" not in text  # transient /etc needs no upper dir on disk


def test_bind_etc_plan() -> None:
    text = make_plan("/s", KARG, Config(etc=EtcMount.BIND)).describe()
    assert f"clone    etc = /s/state/deploy/{H}/etc\n" in text
    assert "attach   etc on /s/etc\nattach   var on /s/var\nrmdir    /run/cfsboot\n" in text


def test_lowerdir_string_escapes() -> None:
    assert lowerdir_string(("/a",), ("/o",)) == "/a::/o"
    assert lowerdir_string(("/a:b", "/c"), ("/d\\e", "/f")) == "/a\\:b:/c::/d\\\\e::/f"


def test_cli_dry_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text('[etc]\nmount = "none"\n[var]\nmount = "none"\n')
    args = ["--sysroot", "/x", "--config", str(conf), "--dry-run"]
    rc = main([*args, "--cmdline", f'quiet composefs.digest="v1-sha256-12:{H}" composefs={H512}'])
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "")
    assert out.splitlines()[0] == f"verify   /x/composefs/images/{H} fs-verity sha256:{H}"


def test_cli_prefers_karg_whose_image_exists(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "composefs/images").mkdir(parents=True)
    (tmp_path / f"composefs/images/{H512}").write_bytes(b"")
    rc = main(
        ["--sysroot", str(tmp_path), "--dry-run", "--cmdline", f"composefs={H} composefs=?{H512}"]
    )
    assert rc == 0
    assert capsys.readouterr().out.startswith(f"open     {tmp_path}/composefs/images/{H512} ")


def test_cli_several_kargs_none_in_the_repository(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "composefs/images").mkdir(parents=True)
    (tmp_path / f"composefs/images/{'ee' * 64}").write_bytes(b"")
    cmdline = f"composefs={H} composefs.digest=?v1-sha512-12:{H512}"
    rc = main(["--sysroot", str(tmp_path), "--dry-run", "--cmdline", cmdline])
    assert (rc, capsys.readouterr().err) == (
        4,
        f"cfsboot-setup-root: none of the 2 composefs images the kernel command line names"
        f" ({H512[:12]}…, {H[:12]}…) is in {tmp_path}/composefs/images\n",
    )


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (
            ["--cmdline", "root=/dev/sda"],
            2,
            "no composefs= or composefs.digest= kernel argument: nothing to mount",
        ),
        (
            ["--cmdline", "composefs"],
            2,
            "invalid kernel argument composefs: it needs a digest (composefs=HEX)",
        ),
        (["--bogus"], 2, "unrecognized argument: --bogus (see --help)"),
        (
            ["--cmdline", f"composefs={H}", "--config", "/nonexistent.toml"],
            3,
            "/nonexistent.toml: config file not found",
        ),
    ],
)
def test_cli_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    assert main([*argv, "--dry-run"]) == code
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"cfsboot-setup-root: {message}\n")


@pytest.fixture
def image(tmp_path: Path) -> Path:
    p = tmp_path / "img"
    p.write_bytes(b"x")
    return p


def _verify(image: Path, karg: ComposefsKarg) -> None:
    ex = Executor(make_plan("/s", karg, Config()))
    try:
        ex.verify(Verify(str(image), karg))
    finally:
        if ex.image_fd >= 0:
            os.close(ex.image_fd)


def _measuring(monkeypatch: pytest.MonkeyPatch, result: object) -> None:
    def fake(fd: int, *, path: str | None = None) -> tuple[HashAlg, bytes]:
        if isinstance(result, BaseException):
            raise result
        assert isinstance(result, tuple)
        return result

    monkeypatch.setattr(mount, "measure_verity", fake)


def test_verify_accepts_matching_digest(monkeypatch: pytest.MonkeyPatch, image: Path) -> None:
    _measuring(monkeypatch, (HashAlg.SHA256, bytes.fromhex(H)))
    _verify(image, KARG)


@pytest.mark.parametrize(
    ("result", "code", "needle"),
    [
        (
            (HashAlg.SHA256, bytes(32)),
            ExitCode.WRONG_DIGEST,
            f"expected sha256:{H}, found sha256:{'00' * 32}",
        ),
        ((HashAlg.SHA512, bytes.fromhex(H512)), ExitCode.WRONG_DIGEST, f"found sha512:{H512}"),
        (
            NoVerity(errno.ENODATA, "x"),
            ExitCode.NO_VERITY,
            f"has no fs-verity digest; boot with composefs=?{H}",
        ),
        (VerityUnsupported(errno.ENOTTY, "x"), ExitCode.NO_VERITY, "has no fs-verity support"),
    ],
)
def test_verify_refuses(
    monkeypatch: pytest.MonkeyPatch, image: Path, result: object, code: ExitCode, needle: str
) -> None:
    _measuring(monkeypatch, result)
    with pytest.raises(SetupError) as e:
        _verify(image, KARG)
    assert e.value.code == code
    assert needle in str(e.value)


def test_verify_skips_measuring_when_insecure(monkeypatch: pytest.MonkeyPatch, image: Path) -> None:
    _measuring(monkeypatch, AssertionError("must not measure"))
    _verify(image, ComposefsKarg(H, HashAlg.SHA256, True))


def test_missing_repo_and_missing_image(tmp_path: Path) -> None:
    with pytest.raises(SetupError) as e:
        _verify(tmp_path / "composefs/images" / H, KARG)
    assert (e.value.code, str(e.value)) == (
        ExitCode.IMAGE_MISSING,
        f"no composefs repository at {tmp_path}/composefs:"
        " is the right root filesystem mounted at /sysroot?",
    )
    (tmp_path / "composefs/images").mkdir(parents=True)
    with pytest.raises(SetupError) as e:
        _verify(tmp_path / "composefs/images" / H, KARG)
    assert str(e.value).startswith(f"composefs image {H} not found")


def test_record_is_a_frozen_value() -> None:
    a = ComposefsKarg(H, HashAlg.SHA256, insecure=False)
    assert a == KARG and hash(a) == hash(KARG) and a != ComposefsKarg(H, HashAlg.SHA256, True)
    assert repr(a) == f"ComposefsKarg(digest='{H}', algorithm={HashAlg.SHA256!r}, insecure=False)"
    assert Config() == Config(False, EtcMount.OVERLAY, VarMount.BIND)
    with pytest.raises(AttributeError, match="cannot assign to field 'digest'"):
        setattr(a, "digest", "x")  # noqa: B010 - mypy sees a plain dataclass
    with pytest.raises(TypeError, match="missing argument 'insecure'"):
        ComposefsKarg(H, HashAlg.SHA256)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected or repeated argument 'digest'"):
        ComposefsKarg(H, HashAlg.SHA256, False, digest=H)  # type: ignore[misc]
    match make_plan("/s", KARG, Config()).ops[0]:
        case Verify(image, karg):
            assert (image, karg) == (f"/s/composefs/images/{H}", KARG)
        case _:
            raise AssertionError("the plan starts with Verify")
