"""Boots a grub.cfg the way GRUB runs it, for the commands cfsboot's menus use: an oracle.

Written from GRUB's manual (Shell-like scripting, the `test`, `load_env` and
`save_env` commands, menu entries and `default`), importing nothing from cfsboot:

- words: `'...'` literal, `"..."` with `$name`/`${name}` expanded, `\\` escapes,
  `#` comments, commands end at a newline or `;`;
- `if`/`elif`/`else`/`fi` on the exit status of a command, `true`, `[ ... ]`
  (`-z`, `-n`, `-f`, `=`, `!=`, `-a` binding tighter than `-o`, `!`);
- `set NAME=VALUE`, `export NAME`;
- `load_env [--skip-sig] [--file F] [NAME...]`, `save_env [--file F] NAME...` on an
  environment block file (the header line, `name=value` lines, `#` padding to 1024 bytes);
- `menuentry TITLE ... --id ID { ... }`: the body runs when the entry boots, in a new
  context that sees only exported variables; `default` names an entry by id or number;
- `insmod`, `search`, `linux`, `initrd`, `chainloader` are recorded, not interpreted.

Anything else raises NotImplementedError: a menu this model does not understand
cannot pass for one it does. Files are a dict `{path: bytes}`. The config file is read
the way `configfile` reads it: `$config_directory` (exported) is its directory, `$root`
(exported) its device; `$cmdpath` is given (empty: as Debian's monolithic image leaves it
inside `configfile`). `(DEVICE)/PATH` names a file of that device.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

ENV_HEADER = b"# GRUB Environment Block\n"
ENV_SIZE = 1024
_VAR = re.compile(r"\$(?:\{([A-Za-z0-9_]+)\}|([A-Za-z0-9_]+))")


@dataclass
class Word:
    raw: list[tuple[str, bool]]  # (text, expand variables in it)

    def value(self, env: dict[str, str]) -> str:
        return "".join(
            _VAR.sub(lambda m: env.get(m.group(1) or m.group(2), ""), t) if exp else t
            for t, exp in self.raw
        )

    @property
    def literal(self) -> str:
        return "".join(t for t, _ in self.raw)


def _commands(text: str) -> list[list[Word]]:
    out: list[list[Word]] = []
    words: list[Word] = []
    cur: list[tuple[str, bool]] | None = None
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "#" and cur is None:
            while i < n and text[i] != "\n":
                i += 1
            continue
        if c in "\n;":
            if cur is not None:
                words.append(Word(cur))
                cur = None
            if words:
                out.append(words)
                words = []
        elif c in " \t\r":
            if cur is not None:
                words.append(Word(cur))
                cur = None
        else:
            cur = [] if cur is None else cur
            if c == "'":
                end = text.index("'", i + 1)
                cur.append((text[i + 1 : end], False))
                i = end
            elif c == '"':
                end = text.index('"', i + 1)
                cur.append((text[i + 1 : end], True))
                i = end
            elif c == "\\":
                cur.append((text[i + 1], False))
                i += 1
            else:
                cur.append((c, True))
        i += 1
    if cur is not None:
        words.append(Word(cur))
    if words:
        out.append(words)
    return out


@dataclass
class Entry:
    title: str
    id: str
    body: list[list[Word]]


@dataclass
class Boot:
    """What one boot did: the entry it started, the commands it recorded."""

    entry: Entry
    loaded: list[tuple[str, ...]] = field(default_factory=list)


class Grub:
    def __init__(
        self, files: dict[str, bytes], config: str, *, root: str, cmdpath: str = ""
    ) -> None:
        """files: `(DEVICE)/PATH` -> bytes; config: the path of the config file on `root`."""
        self.files = files
        self.config = config
        self.root = root
        self.cmdpath = cmdpath

    # -- environment blocks ---------------------------------------------------------------

    def _read_env(self, path: str) -> dict[str, str] | None:
        data = self.files.get(path)
        if data is None or len(data) != ENV_SIZE or not data.startswith(ENV_HEADER):
            return None
        out: dict[str, str] = {}
        for line in data[len(ENV_HEADER) :].decode().split("\n"):
            name, sep, value = line.partition("=")
            if sep and not name.startswith("#"):
                out[name] = value
        return out

    def _save_env(self, path: str, names: list[str], env: dict[str, str]) -> int:
        block = self._read_env(path)
        if block is None:
            return 1
        for name in names:
            block[name] = env.get(name, "")
        text = ENV_HEADER + b"".join(f"{k}={v}\n".encode() for k, v in block.items())
        if len(text) > ENV_SIZE:
            return 1
        self.files[path] = text + b"#" * (ENV_SIZE - len(text))
        return 0

    # -- the interpreter ------------------------------------------------------------------

    def _test(self, args: list[str]) -> bool:
        """GRUB's `test`: -o of -a-terms; `!` negates the next primary."""
        pos = 0

        def primary() -> bool:
            nonlocal pos
            if args[pos] == "!":
                pos += 1
                return not primary()
            if args[pos] in ("-z", "-n", "-f"):
                op, arg = args[pos], args[pos + 1]
                pos += 2
                if op == "-f":
                    return arg in self.files
                return (arg == "") if op == "-z" else (arg != "")
            if pos + 2 < len(args) and args[pos + 1] in ("=", "!="):
                a, op, b = args[pos : pos + 3]
                pos += 3
                return (a == b) if op == "=" else (a != b)
            word = args[pos]
            pos += 1
            return word != ""

        def conj() -> bool:
            nonlocal pos
            ok = primary()
            while pos < len(args) and args[pos] == "-a":
                pos += 1
                ok = primary() and ok
            return ok

        ok = conj()
        while pos < len(args) and args[pos] == "-o":
            pos += 1
            ok = conj() or ok
        if pos != len(args):
            raise NotImplementedError(f"test: cannot read {args[pos:]}")
        return ok

    def _run(
        self, cmds: list[list[Word]], env: dict[str, str], exported: set[str], boot: Boot | None
    ) -> int:
        it = iter(cmds)
        status = 0
        for cmd in it:
            status = self._command(cmd, it, env, exported, boot)
        return status

    def _block(
        self, it: Iterator[list[Word]], ends: tuple[str, ...]
    ) -> tuple[list[list[Word]], list[Word]]:
        """Commands up to one of `ends` at this nesting level; the command that ended it."""
        body: list[list[Word]] = []
        depth = 0
        for cmd in it:
            head = cmd[0].literal
            if head == "if":
                depth += 1
            elif head == "fi" and depth:
                depth -= 1
                body.append(cmd)
                continue
            if depth == 0 and head in ends:
                return body, cmd
            body.append(cmd)
        raise NotImplementedError(f"no {' or '.join(ends)}")

    def _command(
        self,
        cmd: list[Word],
        it: Iterator[list[Word]],
        env: dict[str, str],
        exported: set[str],
        boot: Boot | None,
    ) -> int:
        head = cmd[0].literal
        if head == "if":
            branches: list[tuple[list[Word] | None, list[list[Word]]]] = []
            cond: list[Word] | None = cmd[1:]
            while True:
                # `if COND; then` arrives as [if, COND...] then [then, first command...].
                then = next(it)
                assert then[0].literal == "then", then[0].literal
                first = [then[1:]] if len(then) > 1 else []
                body, end = self._block(it, ("elif", "else", "fi"))
                branches.append((cond, first + body))
                if end[0].literal == "elif":
                    cond = end[1:]
                    continue
                if end[0].literal == "else":
                    body, end = self._block(it, ("fi",))
                    branches.append((None, body))
                break
            for c, body in branches:
                if c is None or self._command(c, iter(()), env, exported, boot) == 0:
                    return self._run(body, env, exported, boot)
            return 0
        args = [w.value(env) for w in cmd[1:]]
        if head == "true":
            return 0
        if head == "[":
            if args[-1:] != ["]"]:
                raise NotImplementedError("[ without ]")
            return 0 if self._test(args[:-1]) else 1
        if head == "set":
            name, _, value = args[0].partition("=")
            env[name] = value
            return 0
        if head == "export":
            exported.add(args[0])
            return 0
        if head in ("load_env", "save_env"):
            path = f"{env.get('prefix', '')}/grubenv"
            names: list[str] = []
            i = 0
            while i < len(args):
                if args[i] == "--file":
                    path = args[i + 1]
                    i += 2
                elif args[i] == "--skip-sig":
                    i += 1
                else:
                    names.append(args[i])
                    i += 1
            if head == "save_env":
                return self._save_env(path, names, env)
            block = self._read_env(path)
            if block is None:
                return 1
            for k, v in block.items():
                if not names or k in names:
                    env[k] = v
            return 0
        if head == "menuentry":
            body, _ = self._block(it, ("}",))
            title = args[0]
            ident = args[args.index("--id") + 1] if "--id" in args else title
            self.entries.append(Entry(title, ident, body))
            return 0
        if head in ("insmod", "search", "linux", "initrd", "chainloader"):
            if boot is not None:
                boot.loaded.append((head, *args))
            return 0
        raise NotImplementedError(f"GRUB command {head!r} is not modelled")

    def boot(self) -> Boot:
        """Read the config file (the top-level script), then boot the default entry."""
        self.entries: list[Entry] = []
        config = self.files[f"({self.root}){self.config}"].decode()
        env = {
            "cmdpath": self.cmdpath,
            "root": self.root,
            "config_file": f"({self.root}){self.config}",
            "config_directory": f"({self.root}){self.config.rsplit('/', 1)[0]}",
        }
        exported = {"root", "config_file", "config_directory"}
        cmds = []
        for cmd in _commands(config):
            # `menuentry ... {` opens a block closed by a command `}`.
            if cmd[0].literal == "menuentry" and cmd[-1].literal == "{":
                cmds.append(cmd[:-1])
            else:
                cmds.append(cmd)
        self._run(cmds, env, exported, None)
        if not self.entries:
            raise AssertionError("the menu has no entry")
        default = env.get("default", "0")
        chosen = next((e for e in self.entries if e.id == default), None)
        if chosen is None:
            chosen = self.entries[int(default)] if default.isdigit() else self.entries[0]
        context = {k: v for k, v in env.items() if k in exported}
        result = Boot(chosen)
        self._run(chosen.body, context, set(exported), result)
        return result
