"""`cfsboot fsverity …` (placeholder registration; filled in by the fs-verity work)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sub.add_parser("fsverity", help="fs-verity digests and enabling")
