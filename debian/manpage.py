"""Write cfsboot(8) from the argparse definitions (`debian/rules` runs it at build time).

One page: the synopsis and options of `cfsboot`, then a section per
subcommand (and per sub-subcommand) with its usage, help and options, in the
order of `cfsboot --help`. Nothing is written by hand, so the page cannot
drift from the parser.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from cfsboot import __version__
from cfsboot.cli import build_parser

SEE_ALSO = "dracut(8), skopeo(1), systemd-boot(7), ukify(1), kernel-install(8)"
FILES = (
    (
        "/usr/lib/cfsboot/freeze.py",
        "freezes setup-root with python3 when dracut builds an initramfs",
    ),
    ("/usr/lib/dracut/modules.d/90cfsboot/", "the dracut module"),
    ("/usr/lib/dracut/dracut.conf.d/50-cfsboot.conf", "hostonly=no and the cfsboot module"),
    (
        "/etc/kernel/postinst.d/zz-cfsboot",
        "leaves vmlinuz and initramfs.img in /usr/lib/modules/KVER/",
    ),
    ("/usr/lib/composefs/setup-root-conf.toml", "how an image mounts /etc and /var"),
    ("/usr/lib/bootc/kargs.d/*.toml", "an image's kernel arguments"),
)


def roff(text: str) -> str:
    """Escape text for roff: backslashes, dashes, non-ASCII, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    text = "".join(c if ord(c) < 128 else f"\\[u{ord(c):04X}]" for c in text)
    return "\\&" + text if text.startswith((".", "'")) else text


def _subparsers(
    p: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser] | None:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return None


def _helps(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> dict[str, str]:
    return {a.dest: a.help or "" for a in sub._choices_actions}


def _options(p: argparse.ArgumentParser) -> Iterator[str]:
    for action in p._actions:
        if isinstance(action, (argparse._SubParsersAction, argparse._HelpAction)):
            continue
        if action.option_strings:
            metavar = ""
            if action.nargs != 0:
                metavar = " " + (
                    action.metavar
                    if isinstance(action.metavar, str)
                    else "{" + ",".join(map(str, action.choices)) + "}"
                    if action.choices
                    else action.dest.upper()
                )
            names = ", ".join(f"\\fB{roff(o)}\\fR" for o in action.option_strings)
            head = names + (f"\\fI{roff(metavar)}\\fR" if metavar else "")
        else:
            head = f"\\fI{roff(str(action.metavar or action.dest))}\\fR"
        yield ".TP"
        yield head
        yield roff(action.help or "")


def _commands(p: argparse.ArgumentParser, path: list[str], helps: dict[str, str]) -> Iterator[str]:
    """Sections for every command under p, depth first, without recursion."""
    stack: list[tuple[argparse.ArgumentParser, list[str], str]] = []
    sub = _subparsers(p)
    if sub is None:
        return
    names = _helps(sub)
    for name, child in reversed(list(sub.choices.items())):
        stack.append((child, [*path, name], names.get(name, "")))
    while stack:
        parser, words, help_ = stack.pop()
        yield f".SS {roff(' '.join(words))}"
        yield roff(help_ or parser.description or "")
        usage = parser.format_usage().removeprefix("usage: ").strip()
        yield ".PP"
        yield ".nf"
        yield roff(" ".join(usage.split()))
        yield ".fi"
        yield from _options(parser)
        inner = _subparsers(parser)
        if inner is not None:
            inner_helps = _helps(inner)
            for name, child in reversed(list(inner.choices.items())):
                stack.append((child, [*words, name], inner_helps.get(name, "")))


def manpage() -> str:
    parser = build_parser()
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch))
    lines = [
        f'.TH CFSBOOT 8 "{date}" "cfsboot {__version__}" "System Administration"',
        ".SH NAME",
        "cfsboot \\- " + roff(parser.description or "").rstrip("."),
        ".SH SYNOPSIS",
        "\\fBcfsboot\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR ...",
        ".SH DESCRIPTION",
        roff(
            "cfsboot imports OCI container images into a composefs repository and boots them"
            " as the root filesystem. An image build ends with `cfsboot container lint`; an"
            " admin installs an image with `cfsboot install to-disk` and then runs"
            " `cfsboot switch`, `upgrade`, `rollback` and `status` on the booted system."
        ),
        ".SH OPTIONS",
        *_options(parser),
        ".SH COMMANDS",
        *_commands(parser, ["cfsboot"], {}),
        ".SH FILES",
    ]
    for path, what in FILES:
        lines += [".TP", f"\\fI{roff(path)}\\fR", roff(what)]
    lines += [".SH SEE ALSO", roff(SEE_ALSO)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", type=Path, help="file to write (default: stdout)")
    args = p.parse_args(argv)
    text = manpage()
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
