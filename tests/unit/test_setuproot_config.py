from __future__ import annotations

from pathlib import Path

import pytest

from setuproot.config import Config, ConfigError, EtcMount, VarMount, load_config, parse_config


def test_defaults_and_missing_default_file(tmp_path: Path) -> None:
    assert parse_config("") == Config(False, EtcMount.OVERLAY, VarMount.BIND)
    assert load_config(str(tmp_path / "absent.toml")) == Config()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[etc]\nmount = "bind"\n', Config(etc=EtcMount.BIND)),
        (
            '[etc]\nmount = "none"\n[var]\nmount = "none"\n',
            Config(etc=EtcMount.NONE, var=VarMount.NONE),
        ),
        ("[etc]\ntransient = true\n", Config(etc=EtcMount.TRANSIENT)),
        ('[etc]\ntransient = true\nmount = "transient"\n', Config(etc=EtcMount.TRANSIENT)),
        ('[etc]\ntransient = false\nmount = "bind"\n', Config(etc=EtcMount.BIND)),
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
