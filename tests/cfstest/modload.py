"""Load a Python file that is not on sys.path (vm-tests/testos.py, setup-root/freeze.py)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load_file(path: Path) -> ModuleType:
    """The module in `path`, executed and registered in sys.modules under its stem (so that
    dataclasses and pickling inside it find their module)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module
