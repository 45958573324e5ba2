"""`run` of cfsboot.linux.run, which imports subprocess only when a command runs.

For modules that `cfsboot status` (run most, by people and monitoring) imports
and that run commands only in other uses: importing subprocess is a cost on
every run. Same signature; a module that imports `run` from here can still
have it replaced in tests (module.run).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cfsboot.linux.run import run as run
else:

    def run(*args, **kwargs):
        from cfsboot.linux.run import run as run_

        return run_(*args, **kwargs)
