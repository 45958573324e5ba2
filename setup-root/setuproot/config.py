"""setup-root's configuration file, /usr/lib/composefs/setup-root-conf.toml.

Same keys as composefs-rs and bootc read:

    [root]
    transient = false        # tmpfs-backed writable layer over /
    [etc]
    mount = "overlay"        # overlay | bind | transient | none
    transient = false        # shorthand for mount = "transient"
    [var]
    mount = "bind"           # bind | none

A missing file at the default path means the defaults. Anything unknown is an
error naming the file and the key, so a typo cannot silently change how the
system boots.
"""

from __future__ import annotations

import enum

from setuproot.contract import SETUP_ROOT_CONFIG
from setuproot.record import record


class EtcMount(enum.StrEnum):
    OVERLAY = "overlay"  # upper/work in state/deploy/ID/etc/{upper,work}
    BIND = "bind"  # state/deploy/ID/etc is a full writable copy (bootc's default)
    TRANSIENT = "transient"  # tmpfs upper: changes are lost at reboot
    NONE = "none"  # the image's read-only /etc


class VarMount(enum.StrEnum):
    BIND = "bind"  # state/os/default/var, shared by every deployment
    NONE = "none"


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line naming file and key."""


@record
class Config:
    root_transient: bool = False
    etc: EtcMount = EtcMount.OVERLAY
    var: VarMount = VarMount.BIND


_KEYS: dict[str, frozenset[str]] = {
    "root": frozenset({"transient"}),
    "etc": frozenset({"mount", "transient"}),
    "var": frozenset({"mount"}),
}


def _bool(path: str, section: dict[str, object], name: str, key: str) -> bool:
    value = section.get(key, False)
    if not isinstance(value, bool):
        raise ConfigError(f"{path}: {name}.{key} must be true or false, not {value!r}")
    return value


def _mount(path: str, section: dict[str, object], name: str, choices: list[str]) -> str:
    """The `mount` value of a section, one of `choices` (the first is the default)."""
    value = section.get("mount", choices[0])
    if not isinstance(value, str) or value not in choices:
        allowed = " | ".join(choices)
        raise ConfigError(f"{path}: {name}.mount must be one of {allowed}, not {value!r}")
    return value


def parse_config(text: str, path: str = SETUP_ROOT_CONFIG) -> Config:
    """Parse the TOML text of a config file."""
    import tomllib  # only when there is a file: it (and datetime) cost start-up time

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    sections: dict[str, dict[str, object]] = {}
    for name, section in doc.items():
        if name not in _KEYS:
            raise ConfigError(f"{path}: unknown section [{name}]")
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: {name} must be a [{name}] table")
        for key in section:
            if key not in _KEYS[name]:
                raise ConfigError(f"{path}: unknown key {name}.{key}")
        sections[name] = section
    root, etc, var = (sections.get(n, {}) for n in ("root", "etc", "var"))
    etc_mount = EtcMount(_mount(path, etc, "etc", [e.value for e in EtcMount]))
    if _bool(path, etc, "etc", "transient"):
        if "mount" in etc and etc_mount is not EtcMount.TRANSIENT:
            raise ConfigError(
                f"{path}: etc.transient = true contradicts etc.mount = {etc_mount.value!r}"
            )
        etc_mount = EtcMount.TRANSIENT
    return Config(
        root_transient=_bool(path, root, "root", "transient"),
        etc=etc_mount,
        var=VarMount(_mount(path, var, "var", [v.value for v in VarMount])),
    )


def load_config(path: str = SETUP_ROOT_CONFIG, *, must_exist: bool = False) -> Config:
    """Read a config file; a missing file gives the defaults unless `must_exist`."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        if must_exist:
            raise ConfigError(f"{path}: config file not found") from None
        return Config()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config is not UTF-8") from None
    return parse_config(text, path)
