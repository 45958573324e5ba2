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

Images made for ostree-era bootc carry ostree's /usr/lib/ostree/prepare-root.conf
instead (a GKeyFile): when there is no setup-root-conf.toml, its `[etc] transient`
and `[root] transient` are read; its other keys are ostree's own and ignored.

When neither file names an /etc mode, the deployment's state directory decides
(`etc_mode_on_disk`): a full copy of /etc there (bootc's default, bind) is bound,
upper and work dirs (cfsboot's default, overlay) are overlaid.
"""

from __future__ import annotations

import os

from setuproot.choice import StrEnum
from setuproot.contract import OSTREE_PREPARE_ROOT_CONFIG, SETUP_ROOT_CONFIG
from setuproot.record import record


class EtcMount(StrEnum):
    OVERLAY = "overlay"  # upper/work in state/deploy/ID/etc/{upper,work}
    BIND = "bind"  # state/deploy/ID/etc is a full writable copy (bootc's default)
    TRANSIENT = "transient"  # tmpfs upper: changes are lost at reboot
    NONE = "none"  # the image's read-only /etc


class VarMount(StrEnum):
    BIND = "bind"  # state/os/default/var, shared by every deployment
    NONE = "none"


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line naming file and key."""


@record
class Config:
    root_transient: bool = False
    etc: EtcMount = EtcMount.OVERLAY
    var: VarMount = VarMount.BIND
    # The file named the /etc mode; False: `etc` is the default, and a deployment's
    # state directory laid out for another mode wins (resolve_etc).
    etc_set: bool = False


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
    doc = simple_toml(text)
    if doc is None:
        import tomllib  # only for what simple_toml leaves: it imports typing, re, datetime

        try:
            doc = tomllib.loads(text)
        except RecursionError:
            raise ConfigError(f"{path}: invalid TOML: nested too deeply") from None
        except ValueError as e:  # TOMLDecodeError, or an integer of 4300+ digits
            raise ConfigError(f"{path}: invalid TOML: {str(e).splitlines()[0]}") from None
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
    transient = _bool(path, etc, "etc", "transient")
    if transient:
        if "mount" in etc and etc_mount is not EtcMount.TRANSIENT:
            raise ConfigError(
                f"{path}: etc.transient = true contradicts etc.mount = {etc_mount.value!r}"
            )
        etc_mount = EtcMount.TRANSIENT
    return Config(
        root_transient=_bool(path, root, "root", "transient"),
        etc=etc_mount,
        var=VarMount(_mount(path, var, "var", [v.value for v in VarMount])),
        etc_set="mount" in etc or transient,
    )


def _keyfile(text: str, path: str) -> dict[str, dict[str, str]]:
    """The groups of a GKeyFile: `[group]` lines, then `key = value` lines; `#` comments."""
    groups: dict[str, dict[str, str]] = {}
    group: dict[str, str] | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            group = groups.setdefault(line[1:-1].strip(), {})
            continue
        key, eq, value = line.partition("=")
        if not eq or group is None:
            raise ConfigError(f"{path}:{n}: expected [group] or key = value, not {line!r}")
        group[key.strip()] = value.strip()
    return groups


def _keyfile_bool(groups: dict[str, dict[str, str]], path: str, group: str, key: str) -> bool:
    value = groups.get(group, {}).get(key, "false")
    if value not in ("true", "false", "1", "0"):  # GKeyFile's booleans
        raise ConfigError(f"{path}: {group}.{key} must be true or false, not {value!r}")
    return value in ("true", "1")


def parse_prepare_root(text: str, path: str = OSTREE_PREPARE_ROOT_CONFIG) -> Config:
    """ostree's prepare-root.conf: `[etc] transient` and `[root] transient`, ostree's meaning."""
    groups = _keyfile(text, path)
    etc_transient = _keyfile_bool(groups, path, "etc", "transient")
    return Config(
        root_transient=_keyfile_bool(groups, path, "root", "transient"),
        etc=EtcMount.TRANSIENT if etc_transient else EtcMount.OVERLAY,
        etc_set=etc_transient,
    )


_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# Control characters TOML strings may not hold (the tab is allowed).
_CONTROL = frozenset(chr(c) for c in (*range(0x00, 0x09), *range(0x0A, 0x20), 0x7F))


def simple_toml(text: str) -> dict[str, object] | None:
    """What tomllib.loads(text) gives, for the TOML config files are written in: [table]
    headers, `key = value` lines with true, false or a string without escapes, comments.
    None for anything else, which tomllib then reads (or refuses): importing tomllib
    would cost every boot that has a config file several milliseconds."""
    doc: dict[str, object] = {}
    table = doc
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        line = line.strip(" \t")
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            name, sep, rest = line[1:].partition("]")
            if not sep or not _bare(name) or name in doc or not _trailer(rest):
                return None
            table = doc[name] = {}
            continue
        key, sep, rest = line.partition("=")
        key = key.strip(" \t")
        if not sep or not _bare(key) or key in table:
            return None
        rest = rest.strip(" \t")
        value: object
        if rest.startswith(("true", "false")):
            value = rest.startswith("true")
            rest = rest[4 if value else 5 :]
        elif rest[:1] in ('"', "'"):
            end = rest.find(rest[0], 1)
            value = rest[1:end]
            if end < 0 or any(c in _CONTROL for c in value) or "\\" in value and rest[0] == '"':
                return None
            rest = rest[end + 1 :]
        else:
            return None
        if not _trailer(rest):
            return None
        table[key] = value
    return doc


def _bare(key: str) -> bool:
    return bool(key) and all(c in _BARE for c in key)


def _trailer(rest: str) -> bool:
    """Whether what follows a value or a header is only blanks and a comment."""
    rest = rest.lstrip(" \t")
    return not rest or rest.startswith("#") and not any(c in _CONTROL for c in rest)


def _read_text(path: str) -> str | None:
    """A config file's text; None when there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror}") from None
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: config is not UTF-8") from None


def load_config(
    path: str = SETUP_ROOT_CONFIG, *, must_exist: bool = False, fallback: str | None = None
) -> Config:
    """Read a config file; a missing file gives the defaults unless `must_exist`.

    fallback: an ostree prepare-root.conf to read when `path` is missing.
    """
    text = _read_text(path)
    if text is not None:
        return parse_config(text, path)
    if must_exist:
        raise ConfigError(f"{path}: config file not found")
    if fallback is not None:
        text = _read_text(fallback)
        if text is not None:
            return parse_prepare_root(text, fallback)
    return Config()


def etc_mode_on_disk(state_etc: str) -> EtcMount | None:
    """The /etc mode a deployment's state/deploy/ID/etc is laid out for; None: it does not say.

    overlay: besides hidden names (the stager's temporary ones), it holds `upper` or
    `work` and nothing else (cfsboot's and composefs-rs's layout); bind: anything else,
    a full copy of /etc (bootc's). Missing, or with hidden names only, it says nothing.
    """
    try:
        names = {n for n in os.listdir(state_etc) if not n.startswith(".")}
    except OSError:
        return None
    if not names:
        return None
    return EtcMount.OVERLAY if names <= {"upper", "work"} else EtcMount.BIND


def resolve_etc(config: Config, state_etc: str) -> Config:
    """`config` with the /etc mode of the state directory when the config names none."""
    if config.etc_set:
        return config
    mode = etc_mode_on_disk(state_etc)
    if mode is None or mode is config.etc:
        return config
    return Config(config.root_transient, mode, config.var, False)
