"""Which entry GRUB boots from a grub.cfg, decided from GRUB's manual, not cfsboot's code.

The `default` variable names a menu entry by id (`--id`), by title, or by index from 0;
entry 0 when it is unset or names nothing. Only plain `set` commands and `menuentry`
blocks are modelled; anything else raises NotImplementedError, so a menu this model
does not understand cannot pass for one it does. Imports nothing from `cfsboot`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field


def _grub_words(text: str) -> Iterator[list[str]]:
    """Commands of a GRUB script, split into words: quotes, backslashes, `#` comments."""
    words: list[str] = []
    word: list[str] | None = None
    i = 0
    while i < len(text):
        c = text[i]
        if c in "\n;" or (c == "#" and word is None):
            if c == "#":
                while i < len(text) and text[i] != "\n":
                    i += 1
                continue
            if word is not None:
                words.append("".join(word))
                word = None
            if words:
                yield words
                words = []
        elif c in " \t\r":
            if word is not None:
                words.append("".join(word))
                word = None
        else:
            word = word if word is not None else []
            if c == "'":
                end = text.index("'", i + 1)
                word.append(text[i + 1 : end])
                i = end
            elif c == '"':
                end = text.index('"', i + 1)
                if "$" in text[i + 1 : end]:
                    raise NotImplementedError("variables in GRUB strings are not modelled")
                word.append(text[i + 1 : end].replace('\\"', '"'))
                i = end
            elif c == "\\" and i + 1 < len(text):
                word.append(text[i + 1])
                i += 1
            elif c == "$":
                raise NotImplementedError("variables in GRUB scripts are not modelled")
            else:
                word.append(c)
        i += 1
    if word is not None:
        words.append("".join(word))
    if words:
        yield words


@dataclass
class GrubEntry:
    title: str
    id: str | None
    linux: str | None = None
    options: tuple[str, ...] = ()
    initrd: tuple[str, ...] = ()
    chainloader: str | None = None


@dataclass(frozen=True)
class GrubMenu:
    entries: tuple[GrubEntry, ...]
    default: GrubEntry | None
    settings: dict[str, str] = field(default_factory=dict)


_GRUB_IN_ENTRY = {"insmod", "search", "linux", "initrd", "chainloader"}


def grub_menu(text: str) -> GrubMenu:
    """The menu a grub.cfg of plain `set` commands and `menuentry` blocks gives.

    Anything else (conditionals, load_env, submenus) raises NotImplementedError, so a
    menu this model does not understand cannot pass for one it does.
    """
    settings: dict[str, str] = {}
    entries: list[GrubEntry] = []
    current: GrubEntry | None = None
    for words in _grub_words(text):
        cmd, args = words[0], words[1:]
        if current is None:
            if cmd == "set" and len(args) == 1 and "=" in args[0]:
                key, value = args[0].split("=", 1)
                settings[key] = value
            elif cmd == "menuentry" and args and args[-1] == "{":
                ident = args[args.index("--id") + 1] if "--id" in args else None
                current = GrubEntry(args[0], ident)
            else:
                raise NotImplementedError(f"GRUB command not modelled: {' '.join(words)}")
        elif cmd == "}":
            entries.append(current)
            current = None
        elif cmd not in _GRUB_IN_ENTRY:
            raise NotImplementedError(f"GRUB command not modelled in an entry: {cmd}")
        elif cmd == "linux":
            current.linux, current.options = args[0], tuple(args[1:])
        elif cmd == "initrd":
            current.initrd = tuple(args)
        elif cmd == "chainloader":
            current.chainloader = args[0]
    if current is not None:
        raise ValueError("a menuentry is not closed")
    return GrubMenu(tuple(entries), _grub_default(entries, settings.get("default")), settings)


def _grub_default(entries: Sequence[GrubEntry], default: str | None) -> GrubEntry | None:
    """GRUB's `default`: an index, an entry id or a title; entry 0 if unset or unknown."""
    if not entries:
        return None
    if default is not None:
        if default.isdigit():
            n = int(default)
            return entries[n] if n < len(entries) else entries[0]
        for e in entries:
            if default in (e.id, e.title):
                return e
    return entries[0]
