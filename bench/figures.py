"""The one line every benchmark prints per target: "cfsboot X, reference Y, ratio Z, goal G"."""

from __future__ import annotations

import os


def load() -> str:
    """The machine's load averages, for the record next to the figures."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def figure(name: str, ours: float, reference: float, goal: str, unit: str = "s") -> float:
    """Print one target's figure; the ratio is ours / reference (below 1: cfsboot is faster)."""
    ratio = ours / reference if reference else float("inf")
    print(
        f"{name}: cfsboot {ours:.3f} {unit}, reference {reference:.3f} {unit}, "
        f"ratio {ratio:.2f}, goal {goal}",
        flush=True,
    )
    return ratio
