"""SELinux file_contexts: which label a policy gives a path, as libselinux 3.8 answers.

Checked against libselinux itself (Debian trixie) by
tests/integration/test_selabel_oracle.py:

- rules come from `file_contexts`, then `file_contexts.homedirs`, then
  `file_contexts.local` (later files and later lines are newer); a line is
  `REGEX [-TYPE] CONTEXT`, TYPE one of `- d l b c p s`; `<<none>>` means no
  label;
- the path is first rewritten by the first matching line of
  `file_contexts.subs`, and the result by the first of
  `file_contexts.subs_dist` (a prefix ending at a `/` or at the end);
- a rule whose regex has no metacharacter is a literal: one that equals the
  path wins over every regex (for the same path, one naming the file type
  over one that does not, then the oldest);
- otherwise the newest regex that matches the whole path (PCRE2, `^REGEX$`,
  DOTALL; translated by pcre.py) wins.

libselinux indexes the rules by the literal leading directories of their
regex (its "stems", up to three levels): a path is only tried against the
rules stored under its own leading directories. This module keeps the same
index, which both makes it fast (a path meets a few hundred of a policy's
thousands of rules) and gives the same answer for the odd regex whose
alternatives would reach outside its stem.

Where composefs-rs differs from libselinux (it applies plain last-match-wins
to all rules including literals, reads `.local` before `.homedirs`, rewrites
paths through `.subs` only on exact path matches, chained per directory,
matches `$` only at the very end and `.` never on a newline), libselinux is
followed: it is what `restorecon` on the booted system checks against. On
Debian's policy and the test OS the two agree on every path.
"""

from __future__ import annotations

import enum
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from cfsboot.errors import die
from cfsboot.image.pcre import Translation, Untranslatable, translate

NONE = b"<<none>>"
# Input files in libselinux's order (its `inputno`); later ones are newer.
SPEC_FILES = ("file_contexts", "file_contexts.homedirs", "file_contexts.local")
SUBS_FILE = "file_contexts.subs"
SUBS_DIST_FILE = "file_contexts.subs_dist"
STEM_DEPTH = 3  # libselinux's SPEC_NODE_MAX_DEPTH
# What libselinux treats as a regex metacharacter, and the escapes it still reads literally.
META = frozenset(b".^$?*+|[({])}")
LITERAL_ESCAPES = frozenset(b".^$?*+|[({])}-_,")
WHITESPACE = b" \t\n\v\f\r"  # C isspace()


class Kind(enum.IntEnum):
    """libselinux's LABEL_FILE_KIND_* (the order matters: literal rules sort by it)."""

    ALL = 0
    DIR = 1
    CHR = 2
    BLK = 3
    SOCK = 4
    FIFO = 5
    LNK = 6
    REG = 7


TYPE_CODES = {
    b"--": Kind.REG,
    b"-d": Kind.DIR,
    b"-l": Kind.LNK,
    b"-b": Kind.BLK,
    b"-c": Kind.CHR,
    b"-p": Kind.FIFO,
    b"-s": Kind.SOCK,
}
MODE_KINDS = {
    stat.S_IFREG: Kind.REG,
    stat.S_IFDIR: Kind.DIR,
    stat.S_IFLNK: Kind.LNK,
    stat.S_IFBLK: Kind.BLK,
    stat.S_IFCHR: Kind.CHR,
    stat.S_IFIFO: Kind.FIFO,
    stat.S_IFSOCK: Kind.SOCK,
}
# The suffix a combined matcher appends to a path (see _Chunk): NUL, then one byte per kind.
KIND_BYTE = {kind: bytes([0x30 + kind]) for kind in Kind}


@dataclass(frozen=True)
class Rule:
    """One line of a file_contexts file."""

    source: str  # file name, for messages
    lineno: int
    order: tuple[int, int]  # (input file number, line number): larger is newer
    regex: bytes
    kind: Kind
    context: bytes | None  # None: <<none>>


def parse_spec_file(data: bytes, source: str, inputno: int) -> list[Rule]:
    """The rules of one file_contexts file (libselinux's read_spec_entries rules)."""
    rules: list[Rule] = []
    for lineno, line in enumerate(data.split(b"\n"), 1):
        stripped = line.lstrip(WHITESPACE)
        if not stripped or stripped.startswith(b"#"):
            continue
        fields = stripped.split()[:3]  # bytes.split() splits on C isspace()
        where = f"{source}:{lineno}"
        if any(not f.isascii() for f in fields):
            die(f"SELinux policy {where}: non-ASCII characters (libselinux refuses the file too)")
        if len(fields) < 2:
            die(f"SELinux policy {where}: a rule needs a regex and a context")
        regex, context = fields[0], fields[-1]
        kind = Kind.ALL
        if len(fields) == 3:
            if fields[1] not in TYPE_CODES:
                die(f"SELinux policy {where}: invalid file type {fields[1].decode()!r}")
            kind = TYPE_CODES[fields[1]]
        label = None if context == NONE else context
        rules.append(Rule(source, lineno, (inputno, lineno), regex, kind, label))
    return rules


def parse_subs_file(data: bytes) -> list[tuple[bytes, bytes]]:
    """(alias, original) pairs of a .subs file, in file order."""
    subs = []
    for line in data.split(b"\n"):
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith(b"#"):
            subs.append((fields[0], fields[1]))
    return subs


def _has_meta(regex: bytes) -> bool:
    i = 0
    while i < len(regex):
        c = regex[i]
        if c in META:
            return True
        if c == 0x5C:  # backslash
            i += 1
            if i >= len(regex) or regex[i] not in LITERAL_ESCAPES:
                return True
        i += 1
    return False


def _simplify(text: bytes) -> bytes | None:
    """The literal a metacharacter-free regex matches, or None (libselinux's regex_simplify)."""
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c in META:
            return None
        if c == 0x5C:
            i += 1
            if i >= len(text) or text[i] not in LITERAL_ESCAPES:
                return None
            c = text[i]
        out.append(c)
        i += 1
    return bytes(out)


class _Chunk:
    """Consecutive regex rules of a node (newest first) matched by one compiled pattern.

    Each rule is one branch, `((?:REGEX)\\n?\\x00K\\Z)` with K its kind's byte (or
    any byte), and the key is path + NUL + the file's kind byte: Python tries
    branches in order, so the first that matches is the newest rule that does,
    and lastindex names it. A rule that cannot be a branch (a top-level `|`,
    backreferences, a look at the end of the path) is a chunk of its own,
    matched on the bare path as `^REGEX$`, the way libselinux does.
    """

    __slots__ = ("compiled", "group_rules", "newest", "rules", "single")

    def __init__(self, rules: list[tuple[Rule, Translation]], single: bool) -> None:
        self.rules = rules
        self.single = single
        self.newest = rules[0][0].order
        self.compiled: re.Pattern[bytes] | None = None
        self.group_rules: dict[int, Rule] = {}

    def compile(self) -> re.Pattern[bytes]:
        if self.single:
            rule, tr = self.rules[0]
            self.compiled = _compile(rule, b"^" + tr.pattern + b"$")
            return self.compiled
        branches = []
        group = 1
        for rule, tr in self.rules:
            self.group_rules[group] = rule
            suffix = b"." if rule.kind is Kind.ALL else re.escape(KIND_BYTE[rule.kind])
            branches.append(b"((?:" + tr.pattern + b")\\n?\\x00" + suffix + b"\\Z)")
            group += 1 + tr.groups
        try:
            self.compiled = re.compile(b"|".join(branches), re.DOTALL)
        except re.error:
            for rule, tr in self.rules:  # name the culprit
                _compile(rule, tr.pattern)
            raise
        return self.compiled

    def match(self, path: bytes, key: bytes, kind: Kind) -> Rule | None:
        compiled = self.compiled or self.compile()
        if self.single:
            rule = self.rules[0][0]
            if rule.kind is not Kind.ALL and rule.kind is not kind:
                return None
            return rule if compiled.search(path) else None
        m = compiled.match(key)
        if m is None:
            return None
        assert m.lastindex is not None
        return self.group_rules[m.lastindex]


def _compile(rule: Rule, pattern: bytes) -> re.Pattern[bytes]:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as e:
        die(
            f"SELinux policy {rule.source}:{rule.lineno}: regex {rule.regex.decode()!r} "
            f"does not compile as Python re ({e.msg})",
            hint="report the policy line to cfsboot",
        )


class _Node:
    """A stem node: rules stored under one literal leading directory path."""

    __slots__ = ("children", "chunks", "literals", "parent", "regexes")

    def __init__(self, parent: _Node | None) -> None:
        self.parent = parent
        self.children: dict[bytes, _Node] = {}
        self.literals: dict[bytes, list[Rule]] = {}
        self.regexes: list[tuple[Rule, Translation]] = []
        self.chunks: list[_Chunk] | None = None

    def child(self, stem: bytes) -> _Node:
        node = self.children.get(stem)
        if node is None:
            node = self.children[stem] = _Node(self)
        return node

    def best(self, path: bytes, key: bytes, kind: Kind, newer_than: tuple[int, int]) -> Rule | None:
        """The newest of this node's regex rules that matches, if newer than `newer_than`."""
        if self.chunks is None:
            self.chunks = _chunks(self.regexes)
        for chunk in self.chunks:
            if chunk.newest <= newer_than:
                return None
            rule = chunk.match(path, key, kind)
            if rule is not None:
                return rule if rule.order > newer_than else None
        return None


def _chunks(regexes: list[tuple[Rule, Translation]]) -> list[_Chunk]:
    chunks: list[_Chunk] = []
    run: list[tuple[Rule, Translation]] = []
    for rule, tr in sorted(regexes, key=lambda rt: rt[0].order, reverse=True):
        if tr.top_level_alternation or tr.backreferences or tr.end_sensitive:
            if run:
                chunks.append(_Chunk(run, single=False))
                run = []
            chunks.append(_Chunk([(rule, tr)], single=True))
        else:
            run.append((rule, tr))
    if run:
        chunks.append(_Chunk(run, single=False))
    return chunks


class Policy:
    """The file_contexts rules of one policy, indexed for lookups."""

    def __init__(
        self,
        rules: list[Rule],
        subs: Sequence[tuple[bytes, bytes]] = (),
        subs_dist: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.rules = rules
        self.subs = _sub_table(subs)
        self.subs_dist = _sub_table(subs_dist)
        self.root = _Node(None)
        self._deepest_of: dict[bytes, _Node] = {}
        for rule in rules:
            self._insert(rule)
        for node in self._nodes():
            for lits in node.literals.values():
                # Naming a file type first, the wildcard last; among equals the oldest first.
                lits.sort(key=lambda r: (-r.kind, r.order))

    def _nodes(self) -> Iterator[_Node]:
        stack = [self.root]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(node.children.values())

    def _insert(self, rule: Rule) -> None:
        regex = rule.regex
        if not _has_meta(regex):
            literal = _simplify(regex)
            assert literal is not None
            self._literal_node(literal).literals.setdefault(literal, []).append(rule)
            return
        try:
            tr = translate(regex)
        except Untranslatable as e:
            die(
                f"SELinux policy {rule.source}:{rule.lineno}: regex {regex.decode()!r} uses "
                f"{e.args[0]}, which Python's re cannot express",
                hint="report the policy line to cfsboot",
            )
        self._regex_node(regex).regexes.append((rule, tr))

    def _regex_node(self, regex: bytes) -> _Node:
        node, p, depth = self.root, 0, 0
        while depth < STEM_DEPTH:
            q = regex.find(b"/", p + 1)
            if q < 0:
                break
            if q == p + 1:  # a double slash
                p = q
                continue
            stem = _simplify(regex[p + 1 : q])
            if stem is None:
                break
            node = node.child(stem)
            p, depth = q, depth + 1
        return node

    def _literal_node(self, literal: bytes) -> _Node:
        node, p, depth = self.root, 0, 0
        while depth < STEM_DEPTH and literal[p : p + 1] == b"/":
            q = literal.find(b"/", p + 1)
            if q < 0:
                break
            if q == p + 1:
                p = q
                continue
            node = node.child(literal[p + 1 : q])
            p, depth = q, depth + 1
        return node

    def _deepest(self, key: bytes) -> _Node:
        # It depends on the leading directories only: one walk per directory.
        head = key[: key.rfind(b"/") + 1]
        node = self._deepest_of.get(head)
        if node is None:
            node = self._deepest_of[head] = self._walk(head)
        return node

    def _walk(self, key: bytes) -> _Node:
        node, p = self.root, 0
        while key[p : p + 1] == b"/":
            q = key.find(b"/", p + 1)
            if q <= p + 1:
                break
            child = node.children.get(key[p + 1 : q])
            if child is None:
                break
            node, p = child, q
        return node

    def substitute(self, path: bytes) -> bytes:
        """`path` through the .subs aliases, then the .subs_dist ones."""
        sub = _apply_subs(self.subs, path)
        return _apply_subs(self.subs_dist, sub if sub is not None else path) or sub or path

    def match(self, path: bytes, kind: Kind) -> Rule | None:
        """The rule that labels `path` (already substituted), or None."""
        node = self._deepest(path)
        for rule in node.literals.get(path, ()):
            if rule.kind is Kind.ALL or rule.kind is kind:
                return rule
        key = path + b"\0" + KIND_BYTE[kind]
        best: Rule | None = None
        floor = (-1, -1)
        n: _Node | None = node
        while n is not None:
            if n.regexes:
                found = n.best(path, key, kind, floor)
                if found is not None:
                    best, floor = found, found.order
            n = n.parent
        return best

    def lookup(self, path: bytes, mode: int) -> bytes | None:
        """The label of the file at `path` (absolute, normalised) with st_mode `mode`."""
        rule = self.match(self.substitute(path), MODE_KINDS[stat.S_IFMT(mode)])
        return None if rule is None else rule.context


@dataclass(frozen=True)
class _SubTable:
    aliases: dict[bytes, tuple[int, bytes]]  # alias -> (line index, original)
    depth: int  # the most '/' in an alias: longer prefixes of a path cannot match


def _sub_table(subs: Sequence[tuple[bytes, bytes]]) -> _SubTable:
    table: dict[bytes, tuple[int, bytes]] = {}
    for i, (alias, original) in enumerate(subs):
        table.setdefault(alias, (i, original))
    return _SubTable(table, max((a.count(b"/") for a in table), default=0))


def _apply_subs(table: _SubTable, path: bytes) -> bytes | None:
    """The first (in file order) alias that is `path` or a leading directory of it, applied."""
    if not table.aliases:
        return None
    found: tuple[int, bytes, int] | None = None
    end = path.find(b"/", 1)
    for _ in range(table.depth):
        prefix = path if end < 0 else path[:end]
        hit = table.aliases.get(prefix)
        if hit is not None and (found is None or hit[0] < found[0]):
            found = (hit[0], hit[1], len(prefix))
        if end < 0:
            break
        end = path.find(b"/", end + 1)
    if found is None:
        return None
    _, original, n = found
    if original == b"/" and path[n : n + 1] == b"/":
        n += 1
    return original + path[n:]


def policy_from_files(text: Callable[[str], bytes | None], where: str) -> Policy:
    """The policy made of the files `text(name)` returns (None: absent); `where` prefixes names."""
    rules: list[Rule] = []
    for inputno, fname in enumerate(SPEC_FILES):
        data = text(fname)
        if data is not None:
            rules += parse_spec_file(data, where + fname, inputno)
    subs = parse_subs_file(text(SUBS_FILE) or b"")
    subs_dist = parse_subs_file(text(SUBS_DIST_FILE) or b"")
    return Policy(rules, subs, subs_dist)
