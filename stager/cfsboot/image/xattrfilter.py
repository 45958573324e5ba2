"""Which extended attributes an imported image keeps (composefs-rs's XattrFiltering).

Its own module so that readers of image records (status, the CLI's choices)
need not import the transforms and the SELinux labelling behind them.
"""

from __future__ import annotations

import enum


class XattrFilter(enum.StrEnum):
    ALLOWLIST = "allowlist-only"  # composefs-rs XattrFiltering::AllowlistOnly (default)
    KEEP_USER = "keep-user-xattrs"  # composefs-rs XattrFiltering::KeepUserXattrs
