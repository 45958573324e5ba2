"""The record `cfsboot assess-boot` keeps of a deployment that failed its boot assessment.

Apart from cfsboot.deploy.assessment (which imports what a boot's assessment
runs) so that `cfsboot status`, which shows the last failure, reads it cheaply.
"""

from __future__ import annotations

import json

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every run
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from cfsboot.deploy.sysroot import Sysroot

# Under the shared /var (state/os/default/var): one record per deployment that failed.
RECORDS_DIR = "lib/cfsboot/boot-assessment"


def record_path(sysroot: Sysroot, depl: str) -> Path:
    return sysroot.shared_var / RECORDS_DIR / f"{depl}.json"


def read_record(sysroot: Sysroot, depl: str) -> dict[str, Any] | None:
    """The record; None when there is none or it is not JSON. Its `failed` (what status
    shows) is a list of one printable line each, whatever the file holds."""
    try:
        doc = json.loads(record_path(sysroot, depl).read_text())
    except (OSError, ValueError, RecursionError):  # RecursionError: [[[[... nested
        return None
    if not isinstance(doc, dict):
        return None
    failed = doc.get("failed")
    if failed is not None:
        items = failed if isinstance(failed, list) else []
        doc["failed"] = ["".join(c if c.isprintable() else " " for c in str(x)) for x in items]
    return doc
