"""Test tooling shared by tests/, vm-tests/ and bench/ (tests/ is on their sys.path)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
