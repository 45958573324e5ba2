"""bootc's flags without a system: switch references and --transport, upgrade --tag,
--karg-delete, status --format-version, and their one-line refusals.

The flags at work on installed systems: tests/integration/test_bootc_parity.py.
"""

from __future__ import annotations

import pytest

from cfsboot import cli
from cfsboot.boot.kargs import check_karg_deletes, delete_kargs
from cfsboot.commands import deploy as deploy_cmd
from cfsboot.errors import CfsbootError
from cfsboot.oci.reference import (
    SWITCH_TRANSPORTS,
    Transport,
    canonical,
    parse,
    switch_reference,
    with_tag,
)


@pytest.mark.parametrize(
    ("target", "transport", "expected"),
    [
        # bootc: a bare name is a registry image (skopeo's docker://).
        ("registry.example/os:1", None, "docker://registry.example/os:1"),
        ("localhost:5000/os:1", None, "docker://localhost:5000/os:1"),
        ("quay.io/x/y@sha256:" + "a" * 64, None, "docker://quay.io/x/y@sha256:" + "a" * 64),
        # Our TRANSPORT:DETAILS still works, and bootc's `registry:` spelling too.
        ("docker://q.io/os:2", None, "docker://q.io/os:2"),
        ("registry:q.io/os:2", None, "docker://q.io/os:2"),
        ("oci:/srv/os:1", None, "oci:/srv/os:1"),
        ("containers-storage:localhost/os", None, "containers-storage:localhost/os"),
        # --transport T IMAGE: IMAGE without the transport.
        ("registry.example/os:1", "registry", "docker://registry.example/os:1"),
        ("/srv/os:1", "oci", "oci:/srv/os:1"),
        ("/srv/os.tar", "oci-archive", "oci-archive:/srv/os.tar"),
        ("localhost/os:1", "containers-storage", "containers-storage:localhost/os:1"),
        ("/srv/os-dir", "dir", "dir:/srv/os-dir"),
        # The image's own transport, when it is the one --transport names: said twice.
        ("docker://q.io/os:2", "registry", "docker://q.io/os:2"),
        ("registry:q.io/os:2", "registry", "docker://q.io/os:2"),
        ("oci:/srv/os:1", "oci", "oci:/srv/os:1"),
    ],
)
def test_switch_reference(target: str, transport: str | None, expected: str) -> None:
    assert str(switch_reference(target, transport)) == expected


@pytest.mark.parametrize(
    ("target", "transport", "message"),
    [
        (
            "oci:/srv/os",
            "registry",
            "image 'oci:/srv/os' names transport oci and --transport registry names another;"
            " give the image without its transport, or leave out --transport",
        ),
        (
            "docker://q.io/os",
            "oci",
            "image 'docker://q.io/os' names transport docker and --transport oci names another;"
            " give the image without its transport, or leave out --transport",
        ),
        ("/srv/os", None, "'/srv/os' is not a registry image name; e.g. registry.example/os:1"),
        ("os 1", "registry", "'os 1' is not a registry image name; e.g. registry.example/os:1"),
        ("x", "ftp", "unknown transport 'ftp'; use one of " + ", ".join(SWITCH_TRANSPORTS)),
    ],
)
def test_switch_reference_refusals(target: str, transport: str | None, message: str) -> None:
    with pytest.raises(CfsbootError) as e:
        switch_reference(target, transport)
    assert str(e.value) == message


def test_switch_transports_are_the_parsers_choices() -> None:
    assert deploy_cmd.TRANSPORTS == SWITCH_TRANSPORTS
    # Every one is a transport cfsboot reads (registry through skopeo's docker://).
    assert {t for t in SWITCH_TRANSPORTS if t != "registry"} <= set(Transport)


def test_canonical_makes_local_paths_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/tmp")
    assert canonical(parse("oci:os:1")) == "oci:/tmp/os:1"
    assert canonical(parse("docker://q.io/os")) == "docker://q.io/os"


@pytest.mark.parametrize(
    ("imgref", "tag", "expected"),
    [
        # bootc's ImageReference::with_tag: the tag replaced, a digest dropped, the
        # registry's port kept.
        ("docker://q.io/os:1", "2", "docker://q.io/os:2"),
        ("docker://q.io/os", "v1.2", "docker://q.io/os:v1.2"),
        ("docker://localhost:5000/os", "prod", "docker://localhost:5000/os:prod"),
        ("docker://localhost:5000/os:1@sha256:" + "b" * 64, "2", "docker://localhost:5000/os:2"),
        ("containers-storage:localhost/os:v1", "v2", "containers-storage:localhost/os:v2"),
        (
            "containers-storage:[overlay@/var/lib/c+/run/c]localhost/os:v1",
            "v2",
            "containers-storage:[overlay@/var/lib/c+/run/c]localhost/os:v2",
        ),
        ("oci:/srv/os:1", "2", "oci:/srv/os:2"),
        ("oci:/srv/os", "2", "oci:/srv/os:2"),
        ("oci-archive:/srv/os.tar:1", "2", "oci-archive:/srv/os.tar:2"),
    ],
)
def test_with_tag(imgref: str, tag: str, expected: str) -> None:
    assert str(with_tag(parse(imgref), tag)) == expected


@pytest.mark.parametrize(
    ("imgref", "tag", "message"),
    [
        (
            "docker://q.io/os",
            "a/b",
            "invalid tag 'a/b'; a tag is letters, digits, '_', '.' and '-', at most 128",
        ),
        (
            "dir:/srv/os",
            "2",
            "dir:/srv/os has no tags to choose from (dir images are not tagged);"
            " use cfsboot switch to name another image",
        ),
    ],
)
def test_with_tag_refusals(imgref: str, tag: str, message: str) -> None:
    with pytest.raises(CfsbootError) as e:
        with_tag(parse(imgref), tag)
    assert str(e.value) == message


def test_karg_delete_by_key_or_key_value() -> None:
    args = ["root=UUID=x", "rw", "console=tty0", "console=ttyS0,115200", "quiet", "foo=bar"]
    # KEY: every argument with that key, with a value or without.
    assert delete_kargs(args, ["console"]) == (
        ["root=UUID=x", "rw", "quiet", "foo=bar"],
        [],
    )
    # KEY=VALUE: that one only.
    assert delete_kargs(args, ["console=tty0", "quiet"]) == (
        ["root=UUID=x", "rw", "console=ttyS0,115200", "foo=bar"],
        [],
    )
    # A value that is not there deletes nothing, and says so.
    assert delete_kargs(args, ["foo=baz", "nosmt", "foo"]) == (
        ["root=UUID=x", "rw", "console=tty0", "console=ttyS0,115200", "quiet"],
        ["foo=baz", "nosmt"],
    )
    assert delete_kargs(["quiet", "quiet"], ["quiet"]) == ([], [])


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        (
            "composefs",
            "--karg-delete composefs: the composefs karg names the image to boot;"
            " cfsboot writes it for every deployment",
        ),
        (
            "composefs.digest=x",
            "--karg-delete composefs.digest=x: the composefs karg names the image to boot;"
            " cfsboot writes it for every deployment",
        ),
        ("", "--karg-delete '': expected one KEY or KEY=VALUE"),
        ("a b", "--karg-delete 'a b': expected one KEY or KEY=VALUE"),
    ],
)
def test_karg_delete_refusals(arg: str, message: str) -> None:
    with pytest.raises(CfsbootError) as e:
        check_karg_deletes([arg])
    assert str(e.value) == message


@pytest.mark.parametrize("version", ["2", "-1"])
def test_status_format_version_other_than_0_or_1(
    capsys: pytest.CaptureFixture[str], version: str
) -> None:
    # Refused before any sysroot is opened (there is none at /nonexistent).
    rc = cli.main(["status", "--format-version", version, "--sysroot", "/nonexistent"])
    assert (rc, capsys.readouterr().err) == (
        1,
        f"cfsboot: unsupported format version {version};"
        " 0 and 1 both mean bootc's v1, the only version there is\n",
    )


def test_status_format_and_json_are_one_choice(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["status", "--format", "yaml", "--json"])
    assert e.value.code == 2
    assert capsys.readouterr().err == (
        "cfsboot status: argument --json: not allowed with argument --format (see --help)\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["upgrade", "--check", "--apply"], "--apply and --check"),
        (["upgrade", "--download-only", "--apply"], "--apply and --download-only"),
        (["switch", "--download-only", "--apply", "oci:/x"], "--apply and --download-only"),
        (["upgrade", "--check", "--soft-reboot=auto"], "--soft-reboot and --check"),
        (
            ["switch", "--download-only", "--soft-reboot=required", "oci:/x"],
            "--soft-reboot and --download-only",
        ),  # fmt: skip
    ],
)
def test_nothing_to_boot_with_apply_or_soft_reboot(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """bootc's clap conflicts: --apply was ignored with --check and --download-only."""
    assert cli.main([*argv, "--sysroot", "/nonexistent"]) == 1
    assert capsys.readouterr().err == (
        f"cfsboot: {message} do not go together: the latter boots nothing\n"
    )


@pytest.mark.parametrize("command", ["upgrade", "update"])  # update: bootc's alias
def test_upgrade_tag_and_from_downloaded(capsys: pytest.CaptureFixture[str], command: str) -> None:
    assert cli.main([command, "--tag", "2", "--from-downloaded"]) == 1
    assert capsys.readouterr().err == (
        "cfsboot: --tag and --from-downloaded do not go together: the latter fetches nothing\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["x", "--from-downloaded"],
            "switch --from-downloaded takes no IMGREF: it fetches nothing",
        ),
        ([], "switch needs an IMGREF (or --from-downloaded); see cfsboot switch --help"),
    ],
)
def test_switch_imgref_or_from_downloaded(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert cli.main(["switch", *argv]) == 1
    assert capsys.readouterr().err == f"cfsboot: {message}\n"


def test_usr_overlay_refuses_a_root_cfsboot_did_not_boot(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # This test host's / is not a composefs root: nothing is mounted.
    assert cli.main(["usroverlay"]) == 1
    assert capsys.readouterr().err == (
        "cfsboot: / is not a composefs root that cfsboot booted: its /usr is not the image's;"
        " usr-overlay is for a running cfsboot system (--root DIR names another root)\n"
    )


@pytest.mark.parametrize("name", ["to-disk", "to-filesystem"])
def test_install_takes_bootcs_composefs_flags(name: str) -> None:
    """`bootc install to-disk --composefs-backend --allow-missing-verity --via-loopback`,
    as bootc's docs have it, was refused as unrecognized arguments."""
    extra = ["--via-loopback"] if name == "to-disk" else []
    argv = ["install", name, "oci:/x", "/t", "--composefs-backend", "--allow-missing-verity"]
    args = cli.build_parser("install").parse_args([*argv, *extra])
    assert args.insecure is True
    plain = cli.build_parser("install").parse_args(["install", name, "oci:/x", "/t"])
    assert plain.insecure is False


@pytest.mark.parametrize(
    ("extra", "root_karg"),
    [
        (["--root-mount-spec", "UUID=2e9f"], "root=UUID=2e9f"),
        (["--root-mount-spec", ""], ""),  # bootc: no root= argument at all
        (["--root-karg", "root=LABEL=r"], "root=LABEL=r"),
        (["--acknowledge-destructive", "--skip-finalize"], None),
    ],
)
def test_install_to_filesystem_takes_bootcs_root_flags(
    extra: list[str], root_karg: str | None
) -> None:
    """bootc's to-filesystem flags were refused as unrecognized arguments."""
    from cfsboot.commands import install as install_cmd

    argv = ["install", "to-filesystem", "oci:/x", "/t", *extra]
    args = cli.build_parser("install").parse_args(argv)
    assert install_cmd._root_karg(args) == root_karg


def test_install_to_disk_block_setup(capsys: pytest.CaptureFixture[str]) -> None:
    """bootc's --block-setup: direct is what cfsboot does; tpm2-luks is refused in one line."""
    argv = ["install", "to-disk", "oci:/x", "/nonexistent", "--block-setup"]
    assert cli.build_parser("install").parse_args([*argv, "direct"]).block_setup == "direct"
    assert cli.main([*argv, "tpm2-luks"]) == 1
    assert capsys.readouterr().err == (
        "cfsboot: --block-setup tpm2-luks is not supported: cfsboot sets up no LUKS;"
        " leave it out, or give --block-setup direct\n"
    )
