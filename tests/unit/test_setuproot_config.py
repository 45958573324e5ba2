from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from setuproot.config import (
    Config,
    ConfigError,
    EtcMount,
    VarMount,
    etc_mode_on_disk,
    load_config,
    parse_config,
    parse_prepare_root,
    resolve_etc,
    simple_toml,
)


def test_defaults_and_missing_default_file(tmp_path: Path) -> None:
    assert parse_config("") == Config(False, EtcMount.OVERLAY, VarMount.BIND)
    assert load_config(str(tmp_path / "absent.toml")) == Config()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[etc]\nmount = "bind"\n', Config(etc=EtcMount.BIND, etc_set=True)),
        (
            '[etc]\nmount = "none"\n[var]\nmount = "none"\n',
            Config(etc=EtcMount.NONE, var=VarMount.NONE, etc_set=True),
        ),
        ("[etc]\ntransient = true\n", Config(etc=EtcMount.TRANSIENT, etc_set=True)),
        (
            '[etc]\ntransient = true\nmount = "transient"\n',
            Config(etc=EtcMount.TRANSIENT, etc_set=True),
        ),
        ('[etc]\ntransient = false\nmount = "bind"\n', Config(etc=EtcMount.BIND, etc_set=True)),
        ('[etc]\nmount = "overlay"\n', Config(etc=EtcMount.OVERLAY, etc_set=True)),
        # transient = false alone names no mode: the default, which the state may override.
        ("[etc]\ntransient = false\n", Config()),
        ("[root]\ntransient = true\n", Config(root_transient=True)),
    ],
)
def test_valid(text: str, expected: Config) -> None:
    assert parse_config(text, "c.toml") == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[etc]\nmode = 1\n", "c.toml: unknown key etc.mode"),
        ("[usr]\nmount = 'x'\n", "c.toml: unknown section [usr]"),
        ("root = 1\n", "c.toml: root must be a [root] table"),
        (
            '[etc]\nmount = "copy"\n',
            "c.toml: etc.mount must be one of overlay | bind | transient | none, not 'copy'",
        ),
        ("[var]\nmount = 3\n", "c.toml: var.mount must be one of bind | none, not 3"),
        ('[root]\ntransient = "yes"\n', "c.toml: root.transient must be true or false, not 'yes'"),
        (
            '[etc]\ntransient = true\nmount = "bind"\n',
            "c.toml: etc.transient = true contradicts etc.mount = 'bind'",
        ),
    ],
)
def test_invalid(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(text, "c.toml")
    assert str(e.value) == message


def test_bad_toml_is_one_line(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text("[etc\nmount=")
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert str(e.value).startswith(f"{p}: invalid TOML: ")
    assert "\n" not in str(e.value)


def test_explicit_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(tmp_path / "nope.toml"), must_exist=True)


# ostree's prepare-root.conf, as images made for ostree-era bootc ship it.
PREPARE_ROOT = """# ostree-prepare-root configuration
[composefs]
enabled = yes
keypath = /etc/ostree/initramfs-root-binding.key

[sysroot]
readonly = true

[etc]
transient = true

[root]
transient = true
"""


def test_prepare_root_conf_etc_and_root_transient() -> None:
    assert parse_prepare_root(PREPARE_ROOT, "p.conf") == Config(
        root_transient=True, etc=EtcMount.TRANSIENT, etc_set=True
    )
    # Only [composefs] and [sysroot]: nothing cfsboot reads, the defaults.
    assert parse_prepare_root("[composefs]\nenabled = true\n", "p.conf") == Config()
    assert parse_prepare_root("[etc]\ntransient=1\n", "p.conf") == Config(
        etc=EtcMount.TRANSIENT, etc_set=True
    )
    assert parse_prepare_root("[etc]\ntransient = false\n", "p.conf") == Config()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[etc]\ntransient = yes\n", "p.conf: etc.transient must be true or false, not 'yes'"),
        ("[root]\ntransient = True\n", "p.conf: root.transient must be true or false, not 'True'"),
        ("transient = true\n", "p.conf:1: expected [group] or key = value, not 'transient = true'"),
        ("[etc]\ntransient\n", "p.conf:2: expected [group] or key = value, not 'transient'"),
    ],
)
def test_prepare_root_conf_errors_are_one_line(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_prepare_root(text, "p.conf")
    assert str(e.value) == message


def test_prepare_root_conf_is_read_only_without_ours(tmp_path: Path) -> None:
    ours, ostree = tmp_path / "setup-root-conf.toml", tmp_path / "prepare-root.conf"
    ostree.write_text(PREPARE_ROOT)
    got = load_config(str(ours), fallback=str(ostree))
    assert got == Config(root_transient=True, etc=EtcMount.TRANSIENT, etc_set=True)
    # Both: ours wins, whole (its defaults too: root is not transient).
    ours.write_text('[etc]\nmount = "bind"\n')
    assert load_config(str(ours), fallback=str(ostree)) == Config(etc=EtcMount.BIND, etc_set=True)
    # Without a fallback (--config FILE), ostree's is not read.
    ours.unlink()
    assert load_config(str(ours)) == Config()
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(str(ours), must_exist=True, fallback=str(ostree))


def test_etc_mode_on_disk(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    assert etc_mode_on_disk(str(etc)) is None  # missing
    etc.mkdir()
    assert etc_mode_on_disk(str(etc)) is None  # empty: says nothing
    (etc / "upper").mkdir()
    assert etc_mode_on_disk(str(etc)) is EtcMount.OVERLAY
    (etc / "work").mkdir()
    assert etc_mode_on_disk(str(etc)) is EtcMount.OVERLAY
    # The stager's temporary names (a carry or a reset a crash interrupted) change nothing,
    # even while `upper` is moved away.
    (etc / ".upper.cfsboot-tmp-1a2b").mkdir()
    assert etc_mode_on_disk(str(etc)) is EtcMount.OVERLAY
    (etc / "upper").rmdir()
    assert etc_mode_on_disk(str(etc)) is EtcMount.OVERLAY
    # A full /etc (bootc's bind layout), even one that happens to hold a "work".
    (etc / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    assert etc_mode_on_disk(str(etc)) is EtcMount.BIND
    (etc / "work").rmdir()
    (etc / "passwd").unlink()
    # Hidden names only (a /etc has more than .pwd.lock): nothing said.
    assert etc_mode_on_disk(str(etc)) is None
    (etc / "hostname").write_text("h\n")
    assert etc_mode_on_disk(str(etc)) is EtcMount.BIND


def test_resolve_etc_only_when_the_config_names_no_mode(tmp_path: Path) -> None:
    full = tmp_path / "full"
    full.mkdir()
    (full / "hostname").write_text("h\n")
    layered = tmp_path / "layered"
    (layered / "upper").mkdir(parents=True)
    assert resolve_etc(Config(), str(full)) == Config(etc=EtcMount.BIND)
    assert resolve_etc(Config(root_transient=True), str(full)) == Config(True, EtcMount.BIND)
    assert resolve_etc(Config(), str(layered)) == Config()
    assert resolve_etc(Config(), str(tmp_path / "missing")) == Config()
    named = Config(etc=EtcMount.OVERLAY, etc_set=True)
    assert resolve_etc(named, str(full)) is named
    transient = parse_prepare_root("[etc]\ntransient = true\n")
    assert resolve_etc(transient, str(full)) is transient


def _dry_run(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], sysroot: Path, conf: Path
) -> list[str]:
    """setup-root --dry-run with its default config paths moved under `conf`."""
    from setuproot import main

    monkeypatch.setattr(main, "SETUP_ROOT_CONFIG", str(conf / "setup-root-conf.toml"))
    monkeypatch.setattr(main, "OSTREE_PREPARE_ROOT_CONFIG", str(conf / "prepare-root.conf"))
    rc = main.main(["--sysroot", str(sysroot), "--cmdline", f"composefs=?{'ab' * 64}", "--dry-run"])
    out, err = capsys.readouterr()
    assert (rc, err) == (0, "")
    return out.splitlines()


def test_setup_root_reads_prepare_root_conf_and_the_state_layout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    sysroot, conf = tmp_path / "sysroot", tmp_path / "conf"
    conf.mkdir()
    state = sysroot / "state/deploy" / ("ab" * 64)
    etc = f"{sysroot}/state/deploy/{'ab' * 64}/etc"
    # No config, no state: the default, overlay.
    plan = _dry_run(monkeypatch, capsys, sysroot, conf)
    assert f"mkdir    {etc}/upper 0755" in plan
    # A full /etc in the state (bootc's layout): bound, as bootc's initramfs would.
    (state / "etc").mkdir(parents=True)
    (state / "etc/hostname").write_text("bootc\n")
    plan = _dry_run(monkeypatch, capsys, sysroot, conf)
    assert f"clone    etc = {etc}" in plan
    assert not any(line.startswith("mkdir    ") and "/etc/" in line for line in plan)
    # prepare-root.conf says transient /etc (and /): it wins over the layout.
    (conf / "prepare-root.conf").write_text(PREPARE_ROOT)
    plan = _dry_run(monkeypatch, capsys, sysroot, conf)
    assert "tmpfs    on /run/cfsboot/etc-transient mode=0755" in plan
    assert "tmpfs    on /run/cfsboot/root-transient mode=0755" in plan
    # And ours, when there, wins over ostree's.
    (conf / "setup-root-conf.toml").write_text('[etc]\nmount = "overlay"\n')
    plan = _dry_run(monkeypatch, capsys, sysroot, conf)
    assert f"mkdir    {etc}/upper 0755" in plan
    assert not any("transient" in line for line in plan)


# --- the TOML subset read without tomllib ----------------------------------------------

_PIECES = [
    "[etc]", "[var]", "[root]", "[ etc ]", "[a.b]", "[[etc]]", "[etc] # c", "[etc]x",
    'mount = "bind"', "mount='none'", 'mount = "a#b" # c', 'mount = ""', 'mount = "é"',
    'mount = "a\\\\b"', 'mount = "a\\tb"', 'mount = """x"""', "mount = 'x\\y'",
    "transient = true", "transient=false#c", "transient = True", "transient = truex",
    "transient = 1", '"etc" = 1', "a-b_1 = true", "x = true\r", "# comment", "  ",
    "\t# indented", "k = 'a' b", "k =", "= 1", "k = \"x\x01\"", "k = 'x' # \x7f",
    "\ufeff[etc]", 'k = "x', "k = true # \u00e9",
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_simple_toml_reads_what_tomllib_reads(lines: list[str], newline: str) -> None:
    """Where simple_toml answers, tomllib gives the same; where tomllib refuses, it passes."""
    text = newline.join(lines) + newline
    ours = simple_toml(text)
    try:
        theirs: object = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        theirs = None
    if ours is not None:
        assert ours == theirs, text


def test_simple_toml_takes_the_usual_file() -> None:
    text = '# setup-root\n[root]\ntransient = false\n\n[etc]\nmount = "bind"  # bootc\n'
    assert simple_toml(text) == {"root": {"transient": False}, "etc": {"mount": "bind"}}
    assert simple_toml("[etc]\nmount = { x = 1 }\n") is None  # left to tomllib
