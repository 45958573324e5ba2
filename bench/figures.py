"""The line every benchmark prints its figures in, and the table `make bench` ends with.

    NAME: cfsboot X, reference Y, ratio Z, goal G

X and Y carry their unit ("12.3 ms", "0.41 s", "5.2 MB"); Z is X/Y unless the
benchmark says otherwise (a throughput); G says which way the goal points
("<= 2.0"). bench/run.py collects every line of this form, whoever printed
it, so a benchmark needs nothing from here but may use `figure()`.
"""

from __future__ import annotations

import os
import re

LINE = re.compile(
    r"^(?P<name>.*?):?\s*cfsboot (?P<cfsboot>.+?), reference (?P<reference>.+?),"
    r" ratio (?P<ratio>\S+?), goal (?P<goal>.+?)\s*$"
)
KEYS = ("name", "cfsboot", "reference", "ratio", "goal")


def load() -> str:
    """The machine's load averages, for the record next to the figures."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def figure(
    name: str,
    cfsboot: float,
    reference: float,
    goal: str,
    *,
    unit: str = "",
    ratio: float | None = None,
) -> str:
    """Print (and return) one figure's line; `ratio` defaults to cfsboot / reference."""
    r = cfsboot / reference if ratio is None else ratio
    u = f" {unit}" if unit else ""
    line = (
        f"{name}: cfsboot {cfsboot:.4g}{u}, reference {reference:.4g}{u},"
        f" ratio {r:.3f}, goal {goal}"
    )
    print(line, flush=True)
    return line


def table(lines: list[str], load: str) -> str:
    """The closing table of `make bench`: one row per figure line, columns aligned."""
    rows = [["figure", "cfsboot", "reference", "ratio", "goal"]]
    for text in lines:
        m = LINE.match(text.strip())
        if m is not None:
            rows.append([m.group(k).strip() for k in KEYS])
    widths = [max(len(r[i]) for r in rows) for i in range(len(KEYS))]
    out = [f"figures ({load}):"]
    for r in rows:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return "\n".join(out)
