"""`logging.getLogger`, for modules that `cfsboot status` imports: logging is imported
when a record is to be emitted, not by every run.

`cfsboot status` and `--help` (run most, by people and monitoring) log nothing when
all is well; importing logging (with traceback, threading, string, weakref) costs
each run more than a millisecond. A logger from here stands for the named logger:
its methods import logging and call the real one, except that a record below the
level cfsboot.cli set (`threshold`) is dropped without importing logging, as the
real logger would drop it. cfsboot.cli configures logging whenever it gets imported.
"""

from __future__ import annotations

import sys

# The level below which records are dropped (cfsboot.cli sets it with the configuration);
# None: not known, every record goes to logging.
threshold: int | None = None

TYPE_CHECKING = False
if TYPE_CHECKING:
    from logging import getLogger as getLogger
else:
    _LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "exception": 40}

    class _Logger:
        __slots__ = ("name",)

        def __init__(self, name):
            self.name = name

        def _emit(self, method, msg, *args, **kwargs):
            level = _LEVELS[method]
            if "logging" not in sys.modules and threshold is not None and level < threshold:
                return
            import logging

            kwargs["stacklevel"] = kwargs.get("stacklevel", 1) + 2  # the caller's line
            getattr(logging.getLogger(self.name), method)(msg, *args, **kwargs)

        def debug(self, msg, *args, **kwargs):
            self._emit("debug", msg, *args, **kwargs)

        def info(self, msg, *args, **kwargs):
            self._emit("info", msg, *args, **kwargs)

        def warning(self, msg, *args, **kwargs):
            self._emit("warning", msg, *args, **kwargs)

        def error(self, msg, *args, **kwargs):
            self._emit("error", msg, *args, **kwargs)

        def exception(self, msg, *args, **kwargs):
            kwargs.setdefault("exc_info", True)
            self._emit("exception", msg, *args, **kwargs)

        def __getattr__(self, attr):  # the rest of the Logger interface
            import logging

            return getattr(logging.getLogger(self.name), attr)

        def __repr__(self):
            return f"<lazy logger {self.name}>"

    def getLogger(name):  # noqa: N802 - logging's name
        return _Logger(name)
