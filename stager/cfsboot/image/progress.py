"""The import's one-line progress display on a terminal (silent otherwise)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """A one-line progress display on a terminal; silent otherwise."""

    def __init__(self, enabled: bool, out: TextIO | None = None) -> None:
        self.enabled = enabled
        self.out = out if out is not None else sys.stderr
        self.layer = 0
        self.layers = 0
        self.bytes = 0
        self.start = time.monotonic()
        self._last = 0.0

    def begin_layer(self, index: int, total: int, name: str, size: int | None) -> None:
        self.layer, self.layers = index, total
        self.name, self.size, self.layer_bytes = name, size, 0
        self._draw(force=True)

    def read(self, n: int) -> None:
        self.bytes += n
        self.layer_bytes += n
        self._draw()

    def message(self, text: str) -> None:
        if self.enabled:
            self.out.write(f"\r\x1b[K{text}")
            self.out.flush()

    def _draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < 0.1:
            return
        self._last = now
        rate = self.bytes / max(now - self.start, 1e-6) / 1e6
        total = f"/{self.size / 1e6:.1f}" if self.size else ""
        self.message(
            f"layer {self.layer}/{self.layers} {self.name[:19]} "
            f"{self.layer_bytes / 1e6:.1f}{total} MB ({rate:.1f} MB/s)"
        )

    def done(self) -> None:
        if self.enabled:
            self.out.write("\r\x1b[K")
            self.out.flush()
