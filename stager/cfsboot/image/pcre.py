"""Translate a PCRE2 pattern (as SELinux file_contexts use them) into Python `re` syntax.

libselinux compiles each file_contexts regex with PCRE2 (8-bit, no UTF, options
PCRE2_DOTALL, the C locale's character tables) as ``^REGEX$``. Python's `re`
agrees with that on the constructs real policies use (literals, ``.``, classes,
groups, alternation, the greedy, lazy and possessive quantifiers, atomic
groups); what differs is rewritten here:

- POSIX classes (``[[:alpha:]]``) become their ASCII sets;
- ``\\Z`` (end, or before a final newline) and ``\\z`` (the very end) take
  Python's spellings, as do ``\\h \\v \\R \\N \\e \\cX \\x{HH} \\o{..}``
  and octal escapes;
- ``\\Q...\\E`` quotes literally; ``(?#...)`` comments are dropped;
- quantifiers follow PCRE2 10.43+ (``{,n}`` and spaces inside braces),
  other braces are literal;
- ``(?i)``-style option settings become scoped ``(?i:...)`` groups that
  end where PCRE2's do (the end of the enclosing group, and reopened after
  every ``|`` of it).

What Python cannot express (recursion, subroutine calls, conditionals,
branch reset, backtracking verbs, Unicode properties, ``\\K``, ``\\G``,
callouts) raises `Untranslatable` naming the construct. Patterns Python
compiles differently (a variable-length lookbehind) fail in `re.compile`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# The ASCII sets of PCRE2's POSIX classes (its default C-locale tables), as
# members of a Python character class.
POSIX_CLASSES: dict[bytes, bytes] = {
    b"alpha": rb"A-Za-z",
    b"digit": rb"0-9",
    b"alnum": rb"0-9A-Za-z",
    b"upper": rb"A-Z",
    b"lower": rb"a-z",
    b"space": rb"\t\n\x0b\x0c\r ",
    b"blank": rb"\t ",
    b"punct": rb"!-/:-@\[-`{-~",
    b"print": rb" -~",
    b"graph": rb"!-~",
    b"cntrl": rb"\x00-\x1f\x7f",
    b"xdigit": rb"0-9A-Fa-f",
    b"word": rb"0-9A-Za-z_",
    b"ascii": rb"\x00-\x7f",
}
# Negated POSIX classes Python can write inside a class.
NEGATED_POSIX: dict[bytes, bytes] = {b"digit": rb"\D", b"space": rb"\S", b"word": rb"\W"}

# PCRE2's \h and \v (8-bit, no UTF): horizontal and vertical white space.
HSPACE = rb"\t \xa0"
VSPACE = rb"\n-\r\x85"
SIMPLE_ESCAPES = b"dDwWsSbBAnrtfa"  # the same in PCRE2 and in Python
CLASS_SETS = b"dDwWsS"  # class escapes that are sets, the same in both
HEX = b"0123456789abcdefABCDEF"
OCTAL = b"01234567"
INLINE_FLAGS = b"is"  # the options Python scopes to a group the same way
QUANTIFIER_CHARS = b"*+?"


# Runs of bytes that mean the same in both, copied as they are (most of a pattern).
PLAIN_RUN = re.compile(rb"[^\\\[(){}|$\x00-\x1f\x80-\xff]+")


class Untranslatable(ValueError):
    """A PCRE2 construct Python's `re` has no equivalent for (args[0] names it)."""


@dataclass(frozen=True)
class Translation:
    """A pattern in Python `re` syntax (compile it with re.DOTALL), and what it holds."""

    pattern: bytes
    groups: int  # capturing groups
    # Properties that make it unsafe to match this pattern as one branch of a bigger one.
    top_level_alternation: bool
    backreferences: bool  # backreferences or named groups (numbers and names would clash)
    end_sensitive: bool  # looks at the end of the subject: $, \Z, \z, lookarounds


def _byte(value: int) -> bytes:
    """One literal byte in Python syntax (inside or outside a class)."""
    if value < 0x80 and (chr(value).isalnum() or value in b"/_"):
        return bytes([value])
    return b"\\x%02x" % value


class _Group:
    __slots__ = ("flags",)

    def __init__(self) -> None:
        # Option settings like (?i) seen in the current branch: each opened a
        # scoped group that closes at the end of the branch and reopens after `|`.
        self.flags: list[bytes] = []


class _Translator:
    def __init__(self, src: bytes) -> None:
        self.src = src
        self.i = 0
        self.out: list[bytes] = []
        self.stack: list[_Group] = [_Group()]
        self.groups = 0
        self.top_alt = False
        self.backrefs = False
        self.end_sensitive = False

    def peek(self, offset: int = 0) -> int | None:
        j = self.i + offset
        return self.src[j] if j < len(self.src) else None

    def startswith(self, text: bytes) -> bool:
        return self.src.startswith(text, self.i)

    def run(self) -> Translation:
        src = self.src
        while self.i < len(src):
            plain = PLAIN_RUN.match(src, self.i)
            if plain is not None:
                self.out.append(plain.group())
                self.i = plain.end()
                continue
            c = src[self.i]
            if c == ord("\\"):
                self.out.append(self.escape())
            elif c == ord("["):
                self.out.append(self.char_class())
            elif c == ord("("):
                self.open_group()
            elif c == ord(")"):
                self.close_group()
            elif c == ord("|"):
                self.alternation()
            elif c == ord("{"):
                self.out.append(self.brace())
            elif c == ord("}"):
                self.out.append(rb"\}")
                self.i += 1
            elif c == ord("$"):
                self.end_sensitive = True
                self.out.append(b"$")
                self.i += 1
            else:  # a control or non-ASCII byte
                self.out.append(_byte(c))
                self.i += 1
        if len(self.stack) > 1:
            raise Untranslatable("an unclosed group '('")
        self.out.append(b")" * len(self.stack[0].flags))
        return Translation(
            b"".join(self.out), self.groups, self.top_alt, self.backrefs, self.end_sensitive
        )

    # -- groups and alternation --------------------------------------------------

    def open_group(self) -> None:
        src, i = self.src, self.i
        if self.startswith(b"(*"):
            raise Untranslatable("a backtracking verb or start option '(*'")
        if not self.startswith(b"(?"):
            self.groups += 1
            self.push(b"(", 1)
            return
        rest = src[i + 2 : i + 4]
        if rest[:1] == b"#":
            end = src.find(b")", i)
            if end < 0:
                raise Untranslatable("an unterminated comment '(?#'")
            self.i = end + 1
            return
        for opener in (b":", b"=", b"!", b">", b"<=", b"<!"):
            if rest.startswith(opener):
                if opener != b":" and opener != b">":
                    self.end_sensitive = True
                self.push(b"(?" + opener, 2 + len(opener))
                return
        if rest[:1] in (b"<", b"'") or rest[:2] == b"P<":
            self.named_group()
            return
        if rest[:2] == b"P=":
            end = src.find(b")", i)
            if end < 0:
                raise Untranslatable("an unterminated '(?P='")
            self.backrefs = True
            self.out.append(src[i : end + 1])
            self.i = end + 1
            return
        if rest[:1] == b"|":
            raise Untranslatable("a branch reset group '(?|'")
        if rest[:1] == b"(":
            raise Untranslatable("a conditional group '(?('")
        if rest[:1] == b"C":
            raise Untranslatable("a callout '(?C'")
        if rest[:1] in (b"R", b"&", b"+") or rest[:1].isdigit() or rest[:2] in (b"P>", b"-1"):
            raise Untranslatable("a recursion or subroutine call '(?R'")
        self.option_setting()

    def push(self, opener: bytes, length: int) -> None:
        self.out.append(opener)
        self.stack.append(_Group())
        self.i += length

    def named_group(self) -> None:
        src, i = self.src, self.i
        start = i + (4 if src[i + 2 : i + 4] == b"P<" else 3)
        close = b"'" if src[i + 2 : i + 3] == b"'" else b">"
        end = src.find(close, start)
        name = src[start:end] if end >= 0 else b""
        if end < 0 or not name or not (name.replace(b"_", b"a").isalnum() and name.isascii()):
            raise Untranslatable("a malformed group name '(?<'")
        self.groups += 1
        self.backrefs = True
        self.out.append(b"(?P<" + name + b">")
        self.stack.append(_Group())
        self.i = end + 1

    def option_setting(self) -> None:
        src, i = self.src, self.i
        j = i + 2
        while j < len(src) and src[j] in b"imsxnUJ-^a":
            j += 1
        flags = src[i + 2 : j]
        if j >= len(src) or src[j] not in b":)":
            raise Untranslatable(f"an unknown group construct {src[i : j + 1].decode('ascii')!r}")
        on, _, off = flags.partition(b"-")
        if any(f not in INLINE_FLAGS for f in on + off) or b"-" in off:
            raise Untranslatable(f"the option setting '(?{flags.decode('ascii')}'")
        scoped = b"(?" + on + (b"-" + off if off else b"") + b":"
        if src[j] == ord(":"):
            self.push(scoped if flags else b"(?:", j + 1 - i)
            return
        self.i = j + 1
        if flags:  # (?i) and the like: to the end of the enclosing group's branches
            self.out.append(scoped)
            self.stack[-1].flags.append(scoped)

    def close_group(self) -> None:
        if len(self.stack) == 1:
            raise Untranslatable("an unmatched ')'")
        group = self.stack.pop()
        self.out.append(b")" * len(group.flags) + b")")
        self.i += 1

    def alternation(self) -> None:
        group = self.stack[-1]
        if len(self.stack) == 1:
            self.top_alt = True
        self.out.append(b")" * len(group.flags) + b"|" + b"".join(group.flags))
        self.i += 1

    # -- quantifier braces ---------------------------------------------------------

    def brace(self) -> bytes:
        """A PCRE2 (10.43+) quantifier {n} {n,} {n,m} {,m}, spaces allowed; else a literal '{'."""
        src = self.src
        end = src.find(b"}", self.i)
        body = src[self.i + 1 : end] if end >= 0 else b""
        lo, comma, hi = body.partition(b",")
        lo, hi = lo.strip(b" \t"), hi.strip(b" \t")
        if (
            end >= 0
            and (lo.isdigit() or (comma and hi.isdigit()))
            and ((not lo or lo.isdigit()) and (not hi or hi.isdigit()))
        ):
            self.i = end + 1
            if not comma:
                return b"{" + lo + b"}"
            return b"{" + (lo or b"0") + b"," + hi + b"}"
        self.i += 1
        return rb"\{"

    # -- escapes -------------------------------------------------------------------

    def escape(self) -> bytes:
        """A backslash sequence outside a class."""
        src = self.src
        d = self.peek(1)
        if d is None:
            raise Untranslatable("a trailing backslash")
        self.i += 2
        ch = bytes([d])
        if d in SIMPLE_ESCAPES:
            return b"\\" + ch
        if ch == b"z":
            self.end_sensitive = True
            return rb"\Z"
        if ch == b"Z":
            self.end_sensitive = True
            return rb"(?=\n?\Z)"
        if ch == b"h":
            return b"[" + HSPACE + b"]"
        if ch == b"H":
            return b"[^" + HSPACE + b"]"
        if ch == b"v":
            return b"[" + VSPACE + b"]"
        if ch == b"V":
            return b"[^" + VSPACE + b"]"
        if ch == b"R":
            return rb"(?>\r\n|[" + VSPACE + b"])"
        if ch == b"N":
            if self.peek() == ord("{"):
                raise Untranslatable("a named character '\\N{'")
            return rb"[^\n]"
        if ch == b"Q":
            end = src.find(rb"\E", self.i)
            end = len(src) if end < 0 else end
            quoted = src[self.i : end]
            self.i = min(end + 2, len(src))
            return b"".join(_byte(b) if not chr(b).isalnum() else bytes([b]) for b in quoted)
        if ch == b"E":
            return b""
        if ch.isdigit() and ch != b"0":
            return self.digit_escape(d)
        if ch == b"k":
            return self.named_backref()
        value = self.char_escape(d)
        if value is not None:
            return _byte(value)
        if ch.isalnum():
            raise Untranslatable(f"the escape '\\{ch.decode()}'")
        return _byte(d) if d >= 0x80 or d < 0x20 else b"\\" + ch

    def digit_escape(self, d: int) -> bytes:
        """\\N: a backreference, or (PCRE2's rule for 10 and up) an octal escape."""
        src = self.src
        j = self.i
        while j < len(src) and chr(src[j]).isdigit():
            j += 1
        number = int(src[self.i - 1 : j])
        if number < 10 or d in b"89" or number <= self.groups:
            if number >= 10:
                raise Untranslatable(f"the backreference '\\{number}'")
            self.backrefs = True
            self.i = j
            return b"\\%d(?:)" % number
        return _byte(self.octal())

    def octal(self) -> int:
        """Up to three octal digits, the first one just read."""
        src = self.src
        j = self.i
        while j < len(src) and j < self.i + 2 and src[j] in OCTAL:
            j += 1
        value = int(src[self.i - 1 : j], 8)
        self.i = j
        if value > 0xFF:
            raise Untranslatable("an octal escape above \\377")
        return value

    def named_backref(self) -> bytes:
        src = self.src
        open_ = self.peek()
        close = {ord("<"): b">", ord("'"): b"'", ord("{"): b"}"}.get(open_ or 0)
        end = src.find(close, self.i + 1) if close else -1
        if close is None or end < 0:
            raise Untranslatable("a malformed '\\k' backreference")
        name = src[self.i + 1 : end]
        self.i = end + 1
        self.backrefs = True
        return b"(?P=" + name + b")"

    def char_escape(self, d: int) -> int | None:
        """The byte value of \\e \\cX \\xHH \\x{H..} \\o{..} \\0oo (self.i is past the letter)."""
        src = self.src
        if d == ord("e"):
            return 0x1B
        if d == ord("c"):
            x = self.peek()
            if x is None or x >= 0x80:
                raise Untranslatable("a malformed '\\c' escape")
            self.i += 1
            return ord(chr(x).upper()) ^ 0x40
        if d == ord("x"):
            if self.peek() == ord("{"):
                return self.braced_number(16, "\\x{")
            j = self.i
            while j < len(src) and j < self.i + 2 and src[j] in HEX:
                j += 1
            value = int(src[self.i : j] or b"0", 16)
            self.i = j
            return value
        if d == ord("o"):
            if self.peek() != ord("{"):
                raise Untranslatable("a malformed '\\o' escape")
            return self.braced_number(8, "\\o{")
        if d == ord("0"):
            j = self.i
            while j < len(src) and j < self.i + 2 and src[j] in OCTAL:
                j += 1
            value = int(b"0" + src[self.i : j], 8)
            self.i = j
            return value
        return None

    def braced_number(self, base: int, what: str) -> int:
        end = self.src.find(b"}", self.i)
        try:
            value = int(self.src[self.i + 1 : end], base) if end > self.i + 1 else -1
        except ValueError:
            value = -1
        if not 0 <= value <= 0xFF:
            raise Untranslatable(f"the escape '{what}...}}' (not a byte value)")
        self.i = end + 1
        return value

    # -- character classes -----------------------------------------------------------

    def char_class(self) -> bytes:
        self.i += 1
        negate = self.peek() == ord("^")
        if negate:
            self.i += 1
        members: list[bytes] = []
        # The previous member, as a byte value, while it may start a range.
        prev: int | None = None
        first = True
        while True:
            c = self.peek()
            if c is None:
                raise Untranslatable("a character class without its closing ']'")
            if c == ord("]") and not first:
                self.i += 1
                break
            first = False
            if c == ord("[") and self.peek(1) in (ord(":"), ord("."), ord("=")):
                members.append(self.posix_class())
                prev = None
                continue
            if c == ord("-") and prev is not None and self.peek(1) not in (None, ord("]")):
                self.i += 1
                hi = self.class_member()
                if hi is None:
                    raise Untranslatable("a range in a character class that ends in a set")
                if hi < prev:
                    raise Untranslatable("a character class range out of order")
                members.append(b"-" + _byte(hi))
                prev = None
                continue
            value = self.class_member(members)
            prev = value
            if value is not None:
                members.append(_byte(value))
        return b"[" + (b"^" if negate else b"") + b"".join(members) + b"]"

    def class_member(self, sets: list[bytes] | None = None) -> int | None:
        """One member: its byte value, or None for a set (appended to `sets`)."""
        src = self.src
        c = src[self.i]
        if c != ord("\\"):
            self.i += 1
            return c
        d = self.peek(1)
        if d is None:
            raise Untranslatable("a trailing backslash")
        self.i += 2
        ch = bytes([d])
        members = b"\\" + ch if d in CLASS_SETS else {b"h": HSPACE, b"v": VSPACE}.get(ch)
        if members is not None:  # a set: only where a range cannot take it
            if sets is not None:
                sets.append(members)
            return None
        if ch in (b"H", b"V", b"N", b"p", b"P", b"X", b"R", b"Q", b"E"):
            raise Untranslatable(f"the escape '\\{ch.decode()}' inside a character class")
        simple = {b"n": 0x0A, b"r": 0x0D, b"t": 0x09, b"f": 0x0C, b"a": 0x07, b"b": 0x08}
        if ch in simple:
            return simple[ch]
        if d in OCTAL and d != ord("0"):
            return self.octal()
        escaped = self.char_escape(d)
        if escaped is not None:
            return escaped
        if ch.isalnum():
            raise Untranslatable(f"the escape '\\{ch.decode()}' inside a character class")
        return d

    def posix_class(self) -> bytes:
        src = self.src
        kind = src[self.i + 1 : self.i + 2]
        end = src.find(kind + b"]", self.i + 2)
        if kind != b":" or end < 0:
            raise Untranslatable("a POSIX collating element '[.' or '[='")
        name = src[self.i + 2 : end]
        self.i = end + 2
        if name.startswith(b"^"):
            if name[1:] in NEGATED_POSIX:
                return NEGATED_POSIX[name[1:]]
            raise Untranslatable(f"the negated POSIX class '[:{name.decode()}:]'")
        if name not in POSIX_CLASSES:
            raise Untranslatable(f"the unknown POSIX class '[:{name.decode()}:]'")
        return POSIX_CLASSES[name]


def translate(pattern: bytes) -> Translation:
    """`pattern` (PCRE2 syntax, as in a file_contexts line) in Python `re` syntax."""
    return _Translator(pattern).run()
