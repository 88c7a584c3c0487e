"""Moved to :mod:`p2pfl._toml` (deploy reads consortium.toml too, and may not import us).

Kept only so that modules still importing from here keep working: import from
:mod:`p2pfl._toml`.
"""

from __future__ import annotations

from p2pfl._toml import build, message, read_toml, table

__all__ = ["build", "message", "read_toml", "table"]
