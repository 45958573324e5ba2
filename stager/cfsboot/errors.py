"""User-facing errors: one line, what/where/what next, and an exit code."""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from typing import NoReturn


class CfsbootError(Exception):
    """An expected failure: printed as one line on stderr, no traceback."""

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = exit_code

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


def die(message: str, *, hint: str | None = None, exit_code: int = 1) -> NoReturn:
    """Abort the current command with a one-line user error."""
    raise CfsbootError(message, hint=hint, exit_code=exit_code)
