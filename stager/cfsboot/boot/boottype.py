"""How a deployment boots: a kernel+initrd entry or a Unified Kernel Image."""

from __future__ import annotations

import enum


class BootType(enum.StrEnum):
    BLS = "bls"  # kernel + initrd, Boot Loader Specification Type #1
    UKI = "uki"  # a Unified Kernel Image
